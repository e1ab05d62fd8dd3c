"""Independent dense oracle for the XDLM diffusion core (tests only).

Everything here is built from the DEFINITIONS in ``XDLM.md`` for a small vocabulary,
with explicit rows / matrices, and deliberately NOT from the closed-form ``h``
(``F_p``, ``rho``, ``S``) given there, so that it can check an implementation of it:

* stationary law       ``pi(e) = k / V + (1 - k) [e == m]``
* forward kernel       ``q(z_t = e | x) = alpha_t [e == x] + (1 - alpha_t) pi(e)``
  (``f_t(p, e)`` is the same with a distribution ``p`` in place of the one-hot of x)
* s -> t kernel (s < t, ``alpha_s >= alpha_t``), as an explicit V x V matrix
  ``Q_ts[e_s, e_t] = a_ts [e_t == e_s] + (1 - a_ts) pi(e_t)``, ``a_ts = alpha_t / alpha_s``
* true posterior       ``q(z_s = e | z_t, x) = q(z_s = e | x) Q_ts[e, z_t] / q(z_t | x)`` (Bayes)
* model posterior      ``p_theta(z_s = e | z_t) ∝ f_s(p, e) Q_ts[e, z_t]`` (the "Reverse step"
  formula, i.e. the true posterior with ``p`` in place of the one-hot of x)
* per-token integrand  ``h = lim_{d -> 0} KL(q(z_s | z_t, x) || p_theta(z_s | z_t)) / d`` with
  ``alpha_s = alpha_t + d``, evaluated as ``KL / d`` at a few small ``d`` and
  polynomially (Richardson) extrapolated to ``d = 0``.

``p`` is the softmax of the logits with the mask logit forced to -inf (``p(m) = 0``).

Two independent numeric paths are provided for ``h``:

* :func:`oracle_h`: torch float64, differentiable with autograd w.r.t. the logits (so the
  gradient of an implementation can be checked). The KL is evaluated in log space with
  the dominant entry (``e == z_t``) split off through ``log1p`` so that it keeps ~1e-15
  precision however small ``d`` is; three ``d`` values, Lagrange extrapolation.
  Accurate to ~1e-12 absolute on the scale ``1 / min(alpha_t, 1 - alpha_t)``.
* :func:`oracle_h_mp`: mpmath at high precision (default 60 digits), naive formulas,
  ``d ~ 1e-25``; essentially exact. Used to validate :func:`oracle_h` itself.
"""

from __future__ import annotations

import math
from typing import Sequence

import mpmath
import torch

DTYPE = torch.float64


# ----------------------------------------------------------------------------- basics
def _as_row(v) -> torch.Tensor:
    if isinstance(v, torch.Tensor):
        return v.to(DTYPE)
    return torch.as_tensor(v, dtype=DTYPE)


def model_probs(logits_row, mask_id: int) -> torch.Tensor:
    """``x_theta = p``: softmax of one row of logits with the mask logit forced to -inf."""
    logits_row = _as_row(logits_row)
    keep = torch.ones_like(logits_row, dtype=torch.bool)
    keep[mask_id] = False
    masked = torch.where(keep, logits_row, torch.full_like(logits_row, -math.inf))
    return torch.softmax(masked, dim=-1)


def stationary(V: int, k: float, mask_id: int) -> torch.Tensor:
    """``pi(e) = k / V + (1 - k) [e == m]`` over all V ids (mask included)."""
    pi = torch.full((V,), k / V, dtype=DTYPE)
    pi[mask_id] += 1.0 - k
    return pi


def one_hot(x: int, V: int) -> torch.Tensor:
    e = torch.zeros(V, dtype=DTYPE)
    e[x] = 1.0
    return e


def forward_row(x_dist, alpha: float, k: float, mask_id: int) -> torch.Tensor:
    """``f_alpha(x_dist, e) = alpha x_dist(e) + (1 - alpha) pi(e)`` for all e.

    With ``x_dist`` the one-hot of x this is the forward kernel row ``q(z_t = . | x)``;
    with ``x_dist = p`` it is ``f(p, .)`` used by the model posterior.
    """
    x_dist = _as_row(x_dist)
    V = x_dist.shape[-1]
    return alpha * x_dist + (1.0 - alpha) * stationary(V, k, mask_id)


def forward_probs(x: int, V: int, alpha: float, k: float, mask_id: int) -> torch.Tensor:
    """``q(z_t = e | x)`` for all e (the law ``forward_noise`` must sample from)."""
    return forward_row(one_hot(x, V), alpha, k, mask_id)


def transition_matrix(
    V: int, alpha_t: float, alpha_s: float, k: float, mask_id: int, one_minus_ats: float | None = None
) -> torch.Tensor:
    """Explicit ``Q_ts[e_s, e_t] = q(z_t = e_t | z_s = e_s)`` for ``alpha_s >= alpha_t``.

    ``a_ts = alpha_t / alpha_s``; ``1 - a_ts`` is computed as ``(alpha_s - alpha_t) / alpha_s``
    (or taken from ``one_minus_ats``) to avoid cancellation when ``alpha_s ~ alpha_t``.
    Each row sums to one.
    """
    if one_minus_ats is None:
        one_minus_ats = (alpha_s - alpha_t) / alpha_s
    a_ts = 1.0 - one_minus_ats
    pi = stationary(V, k, mask_id)
    return a_ts * torch.eye(V, dtype=DTYPE) + one_minus_ats * pi.unsqueeze(0).expand(V, V)


def _joint_rows(
    x_dist, z: int, alpha_t: float, alpha_s: float, k: float, mask_id: int, one_minus_ats: float | None = None
) -> torch.Tensor:
    """Unnormalised ``u(e) = f_s(x_dist, e) * q(z_t = z | z_s = e)``."""
    x_dist = _as_row(x_dist)
    V = x_dist.shape[-1]
    Q = transition_matrix(V, alpha_t, alpha_s, k, mask_id, one_minus_ats)
    return forward_row(x_dist, alpha_s, k, mask_id) * Q[:, z]


def true_posterior_row(x: int, z: int, alpha_t: float, alpha_s: float, k: float, mask_id: int, V: int) -> torch.Tensor:
    """``q(z_s = . | z_t = z, x)`` by Bayes from the explicit kernel rows.

    Numerator ``q(z_s = e | x) Q_ts[e, z]``; denominator the forward marginal
    ``q(z_t = z | x)`` taken from the forward kernel at ``alpha_t`` (not from the sum of the
    numerator, so the row summing to 1 checks Chapman-Kolmogorov consistency).
    Requires ``q(z_t = z | x) > 0`` (e.g. not ``z`` = another id with ``k = 0``).
    """
    num = _joint_rows(one_hot(x, V), z, alpha_t, alpha_s, k, mask_id)
    den = forward_probs(x, V, alpha_t, k, mask_id)[z]
    if den <= 0:
        raise ValueError("q(z_t | x) = 0: this (x, z_t, k) has probability zero")
    return num / den


def model_posterior_row(p, z: int, alpha_t: float, alpha_s: float, k: float, mask_id: int) -> torch.Tensor:
    """``p_theta(z_s = . | z_t = z)`` from the "Reverse step" formula.

    ``∝ f_s(p, e) * (a_ts [z == e] + (1 - a_ts) pi(z))``, normalised over all V ids.
    ``p`` is a probability vector over V ids (``model_probs(logits, mask_id)``).
    """
    u = _joint_rows(p, z, alpha_t, alpha_s, k, mask_id)
    return u / u.sum()


def oracle_reverse_posterior(logits, z_t, alpha_t, alpha_s, k: float, mask_id: int) -> torch.Tensor:
    """Dense ``[B, L, V]`` model posterior: :func:`model_posterior_row` at every position.

    ``alpha_t``, ``alpha_s``: per batch row (shape ``[B]`` or ``[B, 1]``).
    """
    logits = torch.as_tensor(logits).to(DTYPE)
    z_t = torch.as_tensor(z_t)
    at = torch.as_tensor(alpha_t, dtype=DTYPE).reshape(-1)
    as_ = torch.as_tensor(alpha_s, dtype=DTYPE).reshape(-1)
    B, L, V = logits.shape
    out = torch.empty(B, L, V, dtype=DTYPE)
    for b in range(B):
        for l in range(L):
            p = model_probs(logits[b, l], mask_id)
            out[b, l] = model_posterior_row(p, int(z_t[b, l]), float(at[b]), float(as_[b]), k, mask_id)
    return out


# ----------------------------------------------------------------------------- KL / d
def _kl_from_unnormalised(u: torch.Tensor, w: torch.Tensor, z: int) -> torch.Tensor:
    """``KL(u / sum u || w / sum w)`` for rows whose mass concentrates on entry ``z``.

    With ``r_q = sum_{e != z} u_e / u_z`` (same ``r_p`` for ``w``): ``log q_z = -log1p(r_q)``,
    so ``log(q_z / p_z) = log1p(r_p) - log1p(r_q)`` stays accurate when both ``q_z``, ``p_z``
    are ``1 - O(d)``; for ``e != z`` the ratio ``u_e / w_e`` is formed before the log.
    ``0 log 0 = 0``. Differentiable. Absolute accuracy ~1e-12 of ``h``'s natural scale
    ``1 / min(alpha, 1 - alpha)`` (the KL is a sum of terms that partly cancel).
    """
    V = u.shape[0]
    off = torch.ones(V, dtype=torch.bool)
    off[z] = False
    r_q = (u[off] / u[z]).sum()
    r_p = (w[off] / w[z]).sum()
    q = u / (u[z] * (1.0 + r_q))
    pos = u > 0
    safe_u = torch.where(pos, u, torch.ones_like(u))
    safe_w = torch.where(pos, w, torch.ones_like(w))
    # log(q_e / p_e) = log(u_e / w_e) - log(u_z / w_z) - log1p(r_q) + log1p(r_p): ratios of
    # nearly equal tiny numbers are taken before the log (no loss to large |log u_e|).
    log1p_diff = torch.log1p(r_p) - torch.log1p(r_q)
    log_ratio = torch.log(safe_u / safe_w) - torch.log(u[z] / w[z]) + log1p_diff
    # e == z: log q_z = -log1p(r_q), log p_z = -log1p(r_p) (exactly, no cancellation).
    terms = torch.where(pos, q * log_ratio, torch.zeros_like(q))
    terms = torch.where(off, terms, q * log1p_diff)
    return terms.sum()


def _lagrange_at_zero(ds: Sequence[float], gs: Sequence[torch.Tensor]) -> torch.Tensor:
    """Value at 0 of the polynomial through the points ``(d_i, g_i)`` (Richardson)."""
    total = 0.0
    for i, (di, gi) in enumerate(zip(ds, gs)):
        w = 1.0
        for j, dj in enumerate(ds):
            if j != i:
                w *= dj / (dj - di)
        total = total + w * gi
    return total


def kl_over_d(
    logits_row, z: int, x: int, alpha_t: float, d: float, k: float, mask_id: int
) -> tuple[torch.Tensor, float]:
    """``KL(q(z_s | z_t=z, x) || p_theta(z_s | z_t=z)) / d`` at ``alpha_s = alpha_t + d``.

    Returns ``(KL / d_eff, d_eff)`` with ``d_eff = alpha_s - alpha_t`` as represented in
    float64 (exact by Sterbenz), used consistently for ``1 - a_ts = d_eff / alpha_s``.
    """
    logits_row = _as_row(logits_row)
    p = model_probs(logits_row, mask_id)
    V = p.shape[0]
    alpha_s = alpha_t + d
    d_eff = alpha_s - alpha_t
    one_minus_ats = d_eff / alpha_s
    u = _joint_rows(one_hot(x, V), z, alpha_t, alpha_s, k, mask_id, one_minus_ats)
    w = _joint_rows(p, z, alpha_t, alpha_s, k, mask_id, one_minus_ats)
    if u[z] <= 0:
        raise ValueError("q(z_t | x) = 0: this (x, z_t, k) has probability zero")
    return _kl_from_unnormalised(u, w, z) / d_eff, d_eff


def oracle_h(
    logits_row, z: int, x: int, alpha_t: float, k: float, mask_id: int, rel_d: float = 1e-7, n_points: int = 3
) -> torch.Tensor:
    """``h = lim_{d->0} KL(q(z_s | z_t, x) || p_theta(z_s | z_t)) / d``, torch float64.

    ``KL / d`` at ``d = rel_d * min(alpha_t, 1 - alpha_t) / 2^i`` (``i < n_points``),
    Lagrange-extrapolated to ``d = 0``. Differentiable w.r.t. ``logits_row`` (pass a float64
    tensor with ``requires_grad=True``). ``logits_row`` has V entries, the mask column
    included (ignored: ``p(m) = 0``).
    """
    scale = min(alpha_t, 1.0 - alpha_t)
    ds, gs = [], []
    for i in range(n_points):
        g, d_eff = kl_over_d(logits_row, z, x, alpha_t, rel_d * scale / 2.0**i, k, mask_id)
        ds.append(d_eff)
        gs.append(g)
    return _lagrange_at_zero(ds, gs)


# ----------------------------------------------------------------------------- mpmath
def oracle_h_mp(
    logits_row, z: int, x: int, alpha_t: float, k: float, mask_id: int, dps: int = 60, rel_d: float = 1e-25
) -> float:
    """Same definition as :func:`oracle_h`, in mpmath at ``dps`` digits (naive formulas).

    Builds ``pi``, ``q(z_s | x)``, ``Q_ts[:, z]``, both posteriors by normalising the
    Bayes numerators, the KL, at ``d`` and ``d/2``; Richardson ``2 g(d/2) - g(d)``.
    Returns a Python float.
    """
    vals = [
        float(v) for v in (logits_row.detach().tolist() if isinstance(logits_row, torch.Tensor) else list(logits_row))
    ]
    V = len(vals)
    with mpmath.workdps(dps):
        mpf = mpmath.mpf
        a_t = mpf(alpha_t)
        kk = mpf(k)
        mx = max(v for e, v in enumerate(vals) if e != mask_id)
        ex = [mpf(0) if e == mask_id else mpmath.exp(mpf(v) - mx) for e, v in enumerate(vals)]
        Z = mpmath.fsum(ex)
        p = [v / Z for v in ex]
        pi = [kk / V + ((1 - kk) if e == mask_id else 0) for e in range(V)]

        def g(d):
            a_s = a_t + d
            a_ts = a_t / a_s
            col = [a_ts * (1 if e == z else 0) + (1 - a_ts) * pi[z] for e in range(V)]
            q_s_x = [a_s * (1 if e == x else 0) + (1 - a_s) * pi[e] for e in range(V)]
            f_s_p = [a_s * p[e] + (1 - a_s) * pi[e] for e in range(V)]
            u = [q_s_x[e] * col[e] for e in range(V)]
            w = [f_s_p[e] * col[e] for e in range(V)]
            # Bayes denominator from the forward kernel at alpha_t (checked vs. the sum).
            den = a_t * (1 if z == x else 0) + (1 - a_t) * pi[z]
            su = mpmath.fsum(u)
            assert abs(su - den) <= mpf(10) ** (-dps + 10) * (1 + abs(den)), "CK mismatch"
            sw = mpmath.fsum(w)
            kl = mpmath.fsum((u[e] / den) * mpmath.log((u[e] / den) / (w[e] / sw)) for e in range(V) if u[e] > 0)
            return kl / d

        d = mpf(rel_d) * min(a_t, 1 - a_t)
        h = 2 * g(d / 2) - g(d)
        return float(h)
