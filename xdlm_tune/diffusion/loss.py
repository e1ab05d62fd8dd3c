"""The XDLM continuous-time NELBO integrand h (XDLM.md, "Training loss"), on materialised logits.

Per token, with a = alpha_t, b = 1 - a, z = z_t, V = vocabulary size (mask included):

    F_p(z) = a V p(z) + b (k + V (1 - k) [z == m])        F(z) = same with [z == x] for p(z)
    rho    = k / (a V + b k) if z == x else 1 / b
    S      = ((V-1)/V) log(b k) + (1/V) log(a V + b k) - mean_e log(a V p(e) + b k)
    h      = rho [ V([z == x] - p(z)) / F_p(z) - (1/a) log(F(z) / F_p(z)) + log(F(x) / F_p(x)) + (k b / a) S ]

Only p(x), p(z) and one vocabulary reduction enter. We write that reduction as
R = sum_e log1p(c p(e)), c = a V / (b k), so that S = (log1p(c) - R) / V: every term of the
sum is >= 0 and no large constant cancels, which keeps S accurate in float32 at V ~ 1e5.

``token_terms`` holds the per-token algebra once; ``xdlm_loss`` (here) and ``fused_xdlm_loss``
(fused_loss.py) only differ in how they get log p(x), log p(z) and R.
"""

from __future__ import annotations

import math

import torch

from ._checks import as_alpha, check_ids, check_logits, without_mask


def token_terms(
    logp_x: torch.Tensor,
    logp_z: torch.Tensor,
    R: torch.Tensor,
    is_x: torch.Tensor,
    is_m: torch.Tensor,
    a: torch.Tensor,
    *,
    k: float,
    V: int,
) -> torch.Tensor:
    """h per token from log p(x), log p(z), R = sum_e log1p(c p_e) and the booleans [z == x], [z == m].

    All inputs share one shape ([N] or [B, L]; ``a`` broadcasts). Positions with zero probability
    under the forward process (k = 0 and z not in {x, m}) and, for k = 0, z == x (rho = 0) give
    h = 0. Inputs at those positions are replaced by safe values first, so autograd sees no NaN.
    """
    b = 1.0 - a
    # k = 0 (MDLM): only masked positions carry loss; elsewhere rho = 0 or the event is impossible.
    active = torch.ones_like(is_m) if k > 0 else is_m
    zero = torch.zeros_like(logp_x)
    logp_x = torch.where(active, logp_x, zero)
    logp_z = torch.where(active & ~is_m, logp_z, zero)  # p(m) = 0: no log p(z) term at z == m
    log_aV = torch.log(a * V)

    c_z = b * (k + V * (1.0 - k) * is_m.to(a.dtype))  # b V r(z), the stationary part of F(z)
    c_z = torch.where(active, c_z, torch.ones_like(c_z))
    log_c_z = torch.log(c_z)  # -inf when k = 0 and z == x: only reached through logaddexp below
    p_z = torch.where(is_m, zero, logp_z.exp())
    log_Fp_z = torch.where(is_m, log_c_z, torch.logaddexp(log_aV + logp_z, log_c_z))
    log_F_z = torch.where(is_x, torch.log(a * V + b * k), log_c_z)
    log_F_x = torch.log(a * V + b * k)
    log_Fp_x = torch.logaddexp(log_aV + logp_x, torch.log(b * k) if k > 0 else torch.full_like(log_aV, -math.inf))

    G = V * (is_x.to(a.dtype) - p_z) * torch.exp(-log_Fp_z)
    G = G - (log_F_z - log_Fp_z) / a + (log_F_x - log_Fp_x)
    if k > 0:
        c = a * V / (b * k)
        S = (torch.log1p(c) - R) / V
        G = G + (k * b / a) * S
    rho = torch.where(is_x, k / (a * V + b * k), 1.0 / b)
    return torch.where(active, rho * G, zero)


def vocab_reduction(p: torch.Tensor, a: torch.Tensor, k: float, V: int) -> torch.Tensor:
    """R = sum_e log1p(a V p_e / (b k)) over the last dim: p [..., V], a broadcastable to p[..., 0]."""
    if k == 0:
        return torch.zeros_like(p[..., 0])
    c = a * V / ((1.0 - a) * k)
    return torch.log1p(p * c.unsqueeze(-1)).sum(-1)


def xdlm_loss(
    logits: torch.Tensor,
    z_t: torch.Tensor,
    x0: torch.Tensor,
    alpha_t: torch.Tensor | float,
    *,
    k: float,
    mask_id: int,
) -> torch.Tensor:
    """Per-token XDLM integrand h: [B, L] from logits: [B, L, V] (reference, materialised logits).

    The mask column is excluded inside (p(m) = 0). Computed in float32 (float64 for float64
    logits). The training loss is mean over loss tokens of schedule.neg_dalpha_dt(t) * h.
    """
    B, L, V, k, dtype = check_logits(logits, z_t, k, mask_id)
    check_ids("x0", x0, (B, L))
    a = as_alpha("alpha_t", alpha_t, B).to(logits.device, dtype)  # [B, 1]
    if bool((x0 == mask_id).any()):
        raise ValueError("x0 contains mask_id: clean tokens must not be the mask token (check the data pipeline)")

    logp = torch.log_softmax(without_mask(logits, mask_id, dtype), dim=-1)
    z_t, x0 = z_t.long(), x0.long()
    logp_x = logp.gather(-1, x0[..., None])[..., 0]
    logp_z = logp.gather(-1, z_t.clamp(max=V - 1)[..., None])[..., 0]
    R = vocab_reduction(logp.exp(), a, k, V)
    return token_terms(logp_x, logp_z, R, z_t == x0, z_t == mask_id, a, k=k, V=V)
