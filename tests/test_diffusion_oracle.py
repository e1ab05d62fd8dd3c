"""Diffusion core vs the independent dense float64 oracle (``tests/oracle.py``).

Covers ``xdlm_loss`` / ``fused_xdlm_loss`` (the per-token NELBO integrand ``h``) and
``reverse_posterior`` against posteriors built from the explicit kernel rows of XDLM.md,
the MDLM / one-hot limits, input validation and low-precision numerics.
"""

from __future__ import annotations

import math

import pytest
import torch
from oracle import (
    forward_probs,
    model_posterior_row,
    model_probs,
    oracle_h,
    oracle_h_mp,
    oracle_reverse_posterior,
    transition_matrix,
    true_posterior_row,
)

V = 7
KS = [0.0, 0.1, 0.5, 1.0]
MASK_IDS = [V - 1, 2]  # mask last, and mask in the middle of the vocabulary
ALPHAS = [1e-3, 0.999, 0.05, 0.5, 0.93]


@pytest.fixture(scope="module")
def D():
    import xdlm_tune.diffusion as D

    return D


# ----------------------------------------------------------------------------- helpers
def _make_case(k, mask_id, alphas, *, seed=0, L_per_kind=2, scale=2.0, dtype=torch.float64):
    """Random logits [B, L, V], x0 [B, L] (never the mask), z_t [B, L] covering every kind.

    Per row: ``L_per_kind`` positions with z == x, then with z == mask, then (k > 0 only)
    z == another id (neither x nor mask). Returns (logits, x0, z, alpha, kinds).
    """
    g = torch.Generator().manual_seed(seed)
    B = len(alphas)
    kinds = ["x"] * L_per_kind + ["m"] * L_per_kind + (["o"] * L_per_kind if k > 0 else [])
    L = len(kinds)
    ids = [e for e in range(V) if e != mask_id]
    x0 = torch.tensor(ids)[torch.randint(len(ids), (B, L), generator=g)]
    z = x0.clone()
    for b in range(B):
        for l, kind in enumerate(kinds):
            if kind == "m":
                z[b, l] = mask_id
            elif kind == "o":
                others = [e for e in ids if e != int(x0[b, l])]
                z[b, l] = others[int(torch.randint(len(others), (1,), generator=g))]
    logits = (torch.randn(B, L, V, generator=g, dtype=torch.float64) * scale).to(dtype)
    alpha = torch.tensor(alphas, dtype=torch.float64)
    return logits, x0, z, alpha, kinds


def _scale(a):
    """Natural size of h: 1 / min(alpha, 1 - alpha)."""
    return 1.0 / min(a, 1.0 - a)


# ----------------------------------------------------------------------------- oracle self-checks
@pytest.mark.parametrize("k", KS)
@pytest.mark.parametrize("mask_id", MASK_IDS)
def test_oracle_rows_are_consistent(k, mask_id):
    """The oracle's own definitions: rows sum to 1, Chapman-Kolmogorov, posterior by Bayes."""
    a_t, a_s = 0.3, 0.55
    Q = transition_matrix(V, a_t, a_s, k, mask_id)
    torch.testing.assert_close(Q.sum(1), torch.ones(V, dtype=torch.float64), rtol=0, atol=1e-14)
    x = (mask_id + 1) % V
    # q(z_t | x) = sum_e q(z_s = e | x) Q_ts[e, .]
    torch.testing.assert_close(
        forward_probs(x, V, a_s, k, mask_id) @ Q, forward_probs(x, V, a_t, k, mask_id), rtol=0, atol=1e-14
    )
    for z in range(V):
        if forward_probs(x, V, a_t, k, mask_id)[z] == 0:
            continue
        row = true_posterior_row(x, z, a_t, a_s, k, mask_id, V)
        assert abs(row.sum().item() - 1) < 1e-13 and (row >= 0).all()
        # the model posterior with the one-hot of x IS the true posterior
        torch.testing.assert_close(
            model_posterior_row(torch.nn.functional.one_hot(torch.tensor(x), V).double(), z, a_t, a_s, k, mask_id),
            row,
            rtol=0,
            atol=1e-14,
        )


@pytest.mark.parametrize("k", KS)
def test_oracle_float64_matches_mpmath(k):
    """The differentiable float64 oracle agrees with the high-precision mpmath oracle."""
    mask_id = V - 1
    logits, x0, z, alpha, kinds = _make_case(k, mask_id, ALPHAS, seed=11)
    for b, a in enumerate(ALPHAS):
        for l in range(len(kinds)):
            ref = oracle_h_mp(logits[b, l], int(z[b, l]), int(x0[b, l]), a, k, mask_id)
            got = oracle_h(logits[b, l], int(z[b, l]), int(x0[b, l]), a, k, mask_id).item()
            assert abs(got - ref) <= 1e-9 * abs(ref) + 1e-11 * _scale(a), (a, kinds[l], got, ref)


def test_oracle_mdlm_limit():
    """k = 0: the oracle reproduces the MDLM integrand -log p(x) / (1 - alpha), and 0 at z == x."""
    mask_id = V - 1
    logits, x0, z, alpha, kinds = _make_case(0.0, mask_id, ALPHAS, seed=12)
    for b, a in enumerate(ALPHAS):
        for l, kind in enumerate(kinds):
            p = model_probs(logits[b, l], mask_id)
            x = int(x0[b, l])
            expect = -math.log(p[x].item()) / (1 - a) if kind == "m" else 0.0
            got = oracle_h_mp(logits[b, l], int(z[b, l]), x, a, 0.0, mask_id)
            assert abs(got - expect) <= 1e-12 * (1 + abs(expect))


# ----------------------------------------------------------------------------- 1. h vs oracle
@pytest.mark.parametrize("mask_id", MASK_IDS)
@pytest.mark.parametrize("k", KS)
def test_xdlm_loss_matches_oracle(D, k, mask_id):
    logits, x0, z, alpha, kinds = _make_case(k, mask_id, ALPHAS, seed=1 + int(10 * k) + mask_id)
    h = D.xdlm_loss(logits, z, x0, alpha, k=k, mask_id=mask_id)
    assert h.shape == z.shape and h.dtype == torch.float64
    for b, a in enumerate(ALPHAS):
        for l, kind in enumerate(kinds):
            ref = oracle_h_mp(logits[b, l], int(z[b, l]), int(x0[b, l]), a, k, mask_id)
            got = h[b, l].item()
            assert abs(got - ref) <= 1e-6 * abs(ref) + 1e-10 * _scale(a), (
                f"k={k} mask_id={mask_id} alpha={a} z-kind={kind} x={int(x0[b, l])} "
                f"z={int(z[b, l])} logits={logits[b, l].tolist()}: got {got!r}, oracle {ref!r}"
            )
    # alpha given as [B, 1] means the same thing
    h2 = D.xdlm_loss(logits, z, x0, alpha[:, None], k=k, mask_id=mask_id)
    torch.testing.assert_close(h2, h, rtol=0, atol=0)


@pytest.mark.parametrize("mask_id", MASK_IDS)
@pytest.mark.parametrize("k", KS)
def test_xdlm_loss_grad_matches_oracle(D, k, mask_id):
    alphas = [1e-3, 0.4, 0.999]
    logits, x0, z, alpha, kinds = _make_case(k, mask_id, alphas, seed=5 + int(10 * k) + mask_id, L_per_kind=1)
    lg = logits.clone().requires_grad_(True)
    D.xdlm_loss(lg, z, x0, alpha, k=k, mask_id=mask_id).sum().backward()
    for b, a in enumerate(alphas):
        for l, kind in enumerate(kinds):
            row = logits[b, l].clone().requires_grad_(True)
            oracle_h(row, int(z[b, l]), int(x0[b, l]), a, k, mask_id).backward()
            ref, got = row.grad, lg.grad[b, l]
            assert ref[mask_id] == 0
            tol = 1e-6 * ref.abs().max().item() + 1e-9 * _scale(a)
            assert (got - ref).abs().max().item() <= tol, (
                f"k={k} mask_id={mask_id} alpha={a} z-kind={kind}: grad {got.tolist()} vs oracle {ref.tolist()}"
            )


# ----------------------------------------------------------------------------- 2. limits
@pytest.mark.parametrize("scale", [3.0, 60.0])
@pytest.mark.parametrize("dtype,rtol", [(torch.float64, 1e-12), (torch.float32, 1e-5)], ids=["f64", "f32"])
@pytest.mark.parametrize("mask_id", MASK_IDS)
def test_k0_is_mdlm(D, mask_id, dtype, rtol, scale):
    """k = 0: h = -log p(x) / (1 - alpha) at z == mask, 0 at z == x (explicit MDLM loss).

    scale 60: logit gaps of a few hundred, p(x) underflows in float32 but log p(x) does not.
    """
    alphas = [1e-3, 0.2, 0.5, 0.8, 0.999]
    logits, x0, z, alpha, kinds = _make_case(0.0, mask_id, alphas, seed=3, L_per_kind=4, scale=scale, dtype=dtype)
    alpha = alpha.to(dtype)  # the reference uses the same (rounded) alpha
    h = D.xdlm_loss(logits, z, x0, alpha, k=0.0, mask_id=mask_id)
    assert h.dtype == dtype
    lg = logits.double().clone()
    lg[..., mask_id] = -math.inf
    logp_x = torch.log_softmax(lg, -1).gather(-1, x0[..., None])[..., 0]
    mdlm = -logp_x / (1 - alpha.double()[:, None])
    is_mask = z == mask_id
    # absolute slack: a few ulps of O(1) terms, over (1 - alpha) (p(x) ~ 1 gives tiny h)
    atol = 8 * torch.finfo(dtype).eps / (1 - alpha.double()[:, None]).expand_as(mdlm)
    err = (h.double() - mdlm).abs()
    bad = is_mask & (err > rtol * mdlm.abs() + atol)
    assert not bad.any(), (h[bad], mdlm[bad])
    assert (h[~is_mask] == 0).all() or h[~is_mask].abs().max() <= 1e-12, h[~is_mask]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("k", KS)
def test_h_nonnegative(D, k, dtype):
    g = torch.Generator().manual_seed(7)
    mask_id = V - 1
    alphas = torch.cat(
        [torch.tensor([1e-3, 0.999]), torch.rand(6, generator=g, dtype=torch.float64) * 0.998 + 1e-3]
    ).tolist()
    for scale in (0.5, 3.0, 12.0):
        logits, x0, z, alpha, kinds = _make_case(
            k, mask_id, alphas, seed=int(scale * 10), L_per_kind=6, scale=scale, dtype=dtype
        )
        # also p close to (but not exactly) the one-hot of x at a few positions
        logits[:, ::3] = logits[:, ::3].scatter_add(-1, x0[:, ::3, None], torch.full_like(logits[:, ::3, :1], 8.0))
        h = D.xdlm_loss(logits, z, x0, alpha.to(dtype), k=k, mask_id=mask_id)
        assert torch.isfinite(h).all()
        sc = torch.tensor([_scale(a) for a in alphas], dtype=torch.float64)[:, None]
        slack = (1e-10 if dtype == torch.float64 else 1e-5) * sc
        assert (h.double() >= -slack).all(), h.double().min()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("k", KS)
def test_h_zero_at_one_hot(D, k, dtype):
    """p (numerically) the one-hot of x -> h = 0 for every kind of z (oracle says ~1e-19)."""
    mask_id = 2
    alphas = [1e-3, 0.3, 0.7, 0.999]
    logits, x0, z, alpha, kinds = _make_case(k, mask_id, alphas, seed=21, L_per_kind=2, scale=1.0)
    logits = logits.scatter_add(-1, x0[..., None], torch.full_like(logits[..., :1], 45.0))
    ref = torch.empty(z.shape, dtype=torch.float64)
    for b, a in enumerate(alphas):  # the oracle's expectation for this nearly one-hot p
        for l in range(len(kinds)):
            ref[b, l] = oracle_h_mp(logits[b, l], int(z[b, l]), int(x0[b, l]), a, k, mask_id)
    assert (ref.abs() < 1e-10).all(), ref
    h = D.xdlm_loss(logits.to(dtype), z, x0, alpha.to(dtype), k=k, mask_id=mask_id)
    sc = torch.tensor([_scale(a) for a in alphas], dtype=torch.float64)[:, None]
    tol = 1e-6 if dtype == torch.float64 else 1e-6 * sc
    assert ((h.double() - ref).abs() <= tol).all(), (h, ref, kinds)


# ----------------------------------------------------------------------------- fused loss
@pytest.mark.parametrize("k", [0.0, 0.1, 1.0])
def test_fused_matches_unfused(D, k):
    mask_id = 3
    alphas = [1e-3, 0.5, 0.999]
    _, x0, z, alpha, kinds = _make_case(k, mask_id, alphas, seed=31, L_per_kind=3)
    B, L = z.shape
    Dh = 5
    g = torch.Generator().manual_seed(32)
    hidden = torch.randn(B, L, Dh, generator=g, dtype=torch.float64)
    W = torch.randn(V, Dh, generator=g, dtype=torch.float64)
    ref = D.xdlm_loss(hidden @ W.T, z, x0, alpha, k=k, mask_id=mask_id)
    for a_b, a in enumerate(alphas):  # and the oracle, directly
        for l in range(L):
            o = oracle_h_mp((hidden[a_b, l] @ W.T), int(z[a_b, l]), int(x0[a_b, l]), a, k, mask_id)
            assert abs(ref[a_b, l].item() - o) <= 1e-6 * abs(o) + 1e-10 * _scale(a)
    for chunk in (None, 1, 2, 5, 1000):
        h = D.fused_xdlm_loss(hidden, W, z, x0, alpha, k=k, mask_id=mask_id, chunk_size=chunk)
        assert h.shape == (B, L) and h.dtype == torch.float64
        torch.testing.assert_close(h, ref, rtol=1e-10, atol=1e-12)
    # loss_mask: selected positions unchanged, the others finite
    loss_mask = torch.rand(B, L, generator=g) < 0.5
    loss_mask[0, 0] = True
    h = D.fused_xdlm_loss(hidden, W, z, x0, alpha, k=k, mask_id=mask_id, loss_mask=loss_mask, chunk_size=2)
    torch.testing.assert_close(h[loss_mask], ref[loss_mask], rtol=1e-10, atol=1e-12)
    assert torch.isfinite(h).all()


@pytest.mark.parametrize("k", [0.0, 0.1, 0.5, 1.0])
def test_fused_grad_matches_unfused(D, k):
    mask_id = V - 1
    alphas = [0.01, 0.6, 0.99]
    _, x0, z, alpha, kinds = _make_case(k, mask_id, alphas, seed=41, L_per_kind=2)
    B, L = z.shape
    g = torch.Generator().manual_seed(42)
    hidden = torch.randn(B, L, 4, generator=g, dtype=torch.float64)
    W = torch.randn(V, 4, generator=g, dtype=torch.float64)
    weights = torch.rand(B, L, generator=g, dtype=torch.float64)

    h1, W1 = hidden.clone().requires_grad_(True), W.clone().requires_grad_(True)
    (D.xdlm_loss(h1 @ W1.T, z, x0, alpha, k=k, mask_id=mask_id) * weights).sum().backward()
    h2, W2 = hidden.clone().requires_grad_(True), W.clone().requires_grad_(True)
    (D.fused_xdlm_loss(h2, W2, z, x0, alpha, k=k, mask_id=mask_id, chunk_size=3) * weights).sum().backward()
    torch.testing.assert_close(h2.grad, h1.grad, rtol=1e-9, atol=1e-11)
    torch.testing.assert_close(W2.grad, W1.grad, rtol=1e-9, atol=1e-11)


# ----------------------------------------------------------------------------- 3. reverse step
PAIRS = [(1e-3, 0.5), (0.3, 0.31), (0.5, 0.999), (0.9, 0.9 + 1e-6), (0.02, 0.021)]


@pytest.mark.parametrize("mask_id", MASK_IDS)
@pytest.mark.parametrize("k", KS)
def test_reverse_posterior_matches_oracle(D, k, mask_id):
    g = torch.Generator().manual_seed(51 + mask_id)
    B, L = len(PAIRS), 8
    logits = torch.randn(B, L, V, generator=g, dtype=torch.float64) * 2
    z = torch.randint(V, (B, L), generator=g)
    z[:, :3] = mask_id  # every row has masked and unmasked positions
    z[:, 3] = (mask_id + 1) % V
    a_t = torch.tensor([p[0] for p in PAIRS], dtype=torch.float64)
    a_s = torch.tensor([p[1] for p in PAIRS], dtype=torch.float64)
    probs = D.reverse_posterior(logits, z, a_t, a_s, k=k, mask_id=mask_id)
    assert probs.shape == (B, L, V) and probs.dtype == torch.float64
    assert (probs >= 0).all()
    torch.testing.assert_close(probs.sum(-1), torch.ones(B, L, dtype=torch.float64), rtol=0, atol=1e-12)
    ref = oracle_reverse_posterior(logits, z, a_t, a_s, k, mask_id)
    torch.testing.assert_close(probs, ref, rtol=0, atol=1e-10)
    probs2 = D.reverse_posterior(logits, z, a_t[:, None], a_s[:, None], k=k, mask_id=mask_id)
    torch.testing.assert_close(probs2, probs, rtol=0, atol=0)


@pytest.mark.parametrize("k", KS)
def test_reverse_posterior_one_hot_is_true_posterior(D, k):
    """With p the one-hot of x (huge logit margin) the model posterior is q(z_s | z_t, x)."""
    mask_id = V - 1
    g = torch.Generator().manual_seed(61)
    B, L = len(PAIRS), 6
    x0 = torch.randint(V - 1, (B, L), generator=g)
    z = x0.clone()
    z[:, :2] = mask_id
    if k > 0:  # z == another id (probability 0 when k == 0)
        z[:, 4:] = (x0[:, 4:] + 1) % (V - 1)
    logits = torch.randn(B, L, V, generator=g, dtype=torch.float64)
    logits = logits.scatter_add(-1, x0[..., None], torch.full_like(logits[..., :1], 60.0))
    a_t = torch.tensor([p[0] for p in PAIRS], dtype=torch.float64)
    a_s = torch.tensor([p[1] for p in PAIRS], dtype=torch.float64)
    probs = D.reverse_posterior(logits, z, a_t, a_s, k=k, mask_id=mask_id)
    for b, (at, as_) in enumerate(PAIRS):
        for l in range(L):
            row = true_posterior_row(int(x0[b, l]), int(z[b, l]), at, as_, k, mask_id, V)
            torch.testing.assert_close(probs[b, l], row, rtol=0, atol=1e-9)


# ----------------------------------------------------------------------------- 6. bad inputs
def _small(dtype=torch.float64):
    logits, x0, z, alpha, _ = _make_case(0.1, V - 1, [0.3, 0.6], seed=71, L_per_kind=1)
    return logits.to(dtype), x0, z, alpha


@pytest.mark.parametrize("k", [-0.1, 1.5, float("nan")])
def test_bad_k(D, k):
    logits, x0, z, alpha = _small()
    with pytest.raises(ValueError, match=r"\bk\b"):
        D.xdlm_loss(logits, z, x0, alpha, k=k, mask_id=V - 1)
    with pytest.raises(ValueError, match=r"\bk\b"):
        D.reverse_posterior(logits, z, alpha, alpha + 0.1, k=k, mask_id=V - 1)
    with pytest.raises(ValueError, match=r"\bk\b"):
        D.fused_xdlm_loss(logits, torch.eye(V, dtype=torch.float64), z, x0, alpha, k=k, mask_id=V - 1)
    with pytest.raises(ValueError, match=r"\bk\b"):
        D.forward_noise(x0, alpha, k=k, mask_id=V - 1, vocab_size=V)


@pytest.mark.parametrize("mask_id", [V, -1, V + 5])
def test_bad_mask_id(D, mask_id):
    logits, x0, z, alpha = _small()
    with pytest.raises(ValueError, match="mask_id"):
        D.xdlm_loss(logits, z, x0, alpha, k=0.1, mask_id=mask_id)
    with pytest.raises(ValueError, match="mask_id"):
        D.reverse_posterior(logits, z, alpha, alpha + 0.1, k=0.1, mask_id=mask_id)
    with pytest.raises(ValueError, match="mask_id"):
        D.fused_xdlm_loss(logits, torch.eye(V, dtype=torch.float64), z, x0, alpha, k=0.1, mask_id=mask_id)
    with pytest.raises(ValueError, match="mask_id"):
        D.forward_noise(x0, alpha, k=0.1, mask_id=mask_id, vocab_size=V)


@pytest.mark.parametrize("bad", [0.0, 1.0, 1.5, -0.2, float("nan")])
def test_bad_alpha(D, bad):
    logits, x0, z, alpha = _small()
    alpha = alpha.clone()
    alpha[1] = bad
    with pytest.raises(ValueError, match="alpha"):
        D.xdlm_loss(logits, z, x0, alpha, k=0.1, mask_id=V - 1)
    with pytest.raises(ValueError, match="alpha"):
        D.fused_xdlm_loss(logits, torch.eye(V, dtype=torch.float64), z, x0, alpha, k=0.1, mask_id=V - 1)
    with pytest.raises(ValueError, match="alpha"):
        D.forward_noise(x0, alpha, k=0.1, mask_id=V - 1, vocab_size=V)
    good = torch.tensor([0.2, 0.5], dtype=torch.float64)
    with pytest.raises(ValueError, match="alpha"):
        D.reverse_posterior(logits, z, alpha, good.clamp(min=0.9), k=0.1, mask_id=V - 1)


def test_alpha_s_below_alpha_t(D):
    logits, x0, z, alpha = _small()
    with pytest.raises(ValueError, match="alpha"):
        D.reverse_posterior(logits, z, alpha, alpha - 0.1, k=0.1, mask_id=V - 1)


def test_shape_and_dtype_mismatch(D):
    logits, x0, z, alpha = _small()
    with pytest.raises(ValueError, match="logits|z_t|shape"):
        D.xdlm_loss(logits, z[:, :-1], x0[:, :-1], alpha, k=0.1, mask_id=V - 1)
    with pytest.raises(ValueError, match="logits|z_t|shape"):
        D.reverse_posterior(logits, z[:, :-1], alpha, alpha + 0.1, k=0.1, mask_id=V - 1)
    with pytest.raises(ValueError, match="x0|z_t|shape"):
        D.xdlm_loss(logits, z, x0[:, :-1], alpha, k=0.1, mask_id=V - 1)
    with pytest.raises(ValueError, match="alpha|shape"):
        D.xdlm_loss(logits, z, x0, torch.tensor([0.5, 0.5, 0.5], dtype=torch.float64), k=0.1, mask_id=V - 1)
    with pytest.raises((TypeError, ValueError), match="z_t"):
        D.xdlm_loss(logits, z.double(), x0, alpha, k=0.1, mask_id=V - 1)


# ----------------------------------------------------------------------------- 7. numerics
@pytest.mark.parametrize("k", KS)
@pytest.mark.parametrize("scale", [3.0, 40.0])
def test_float32_extreme_alpha_finite(D, k, scale):
    alphas = [1e-4, 0.5, 1 - 1e-4]
    for mask_id in MASK_IDS:
        logits, x0, z, alpha, kinds = _make_case(
            k, mask_id, alphas, seed=81, L_per_kind=3, scale=scale, dtype=torch.float32
        )
        a32 = alpha.float()
        h = D.xdlm_loss(logits, z, x0, a32, k=k, mask_id=mask_id)
        assert h.dtype == torch.float32 and torch.isfinite(h).all(), h
        W = torch.eye(V, dtype=torch.float32)
        hf = D.fused_xdlm_loss(logits, W, z, x0, a32, k=k, mask_id=mask_id, chunk_size=4)
        assert hf.dtype == torch.float32 and torch.isfinite(hf).all(), hf
        if scale > 10:
            continue  # huge logit gaps in the reverse step: test_reverse_posterior_underflow
        a_s = torch.tensor([2e-4, 0.5 + 1e-4, 1 - 5e-5])
        probs = D.reverse_posterior(logits, z, a32, a_s, k=k, mask_id=mask_id)
        assert probs.dtype == torch.float32 and torch.isfinite(probs).all()
        assert (probs >= 0).all() and ((probs.sum(-1) - 1).abs() < 1e-5).all()


UNDERFLOW = pytest.mark.parametrize(
    "dtype,gap",
    [(torch.float32, 50.0), (torch.float32, 110.0), (torch.float64, 110.0), (torch.float64, 800.0)],
    ids=["f32-gap50", "f32-gap110", "f64-gap110", "f64-gap800"],
)


@UNDERFLOW
@pytest.mark.parametrize("k", KS)
def test_xdlm_loss_underflow(D, k, dtype, gap):
    """p(x) (and p(z_t)) underflowing to 0: h stays finite and equal to the oracle's."""
    mask_id = V - 1
    alphas = [1e-3, 0.5, 0.999]
    logits = torch.zeros(3, 3, V, dtype=dtype)
    logits[..., 0] = gap  # token 0 takes all the mass; x = 3
    x0 = torch.full((3, 3), 3)
    z = torch.tensor([[3, mask_id, 4 if k > 0 else 3]] * 3)
    alpha = torch.tensor(alphas, dtype=dtype)
    h = D.xdlm_loss(logits, z, x0, alpha, k=k, mask_id=mask_id)
    assert torch.isfinite(h).all(), h
    rtol, atol = (1e-3, 1e-5) if dtype == torch.float32 else (1e-9, 1e-12)
    for b in range(3):
        a = float(alpha[b])
        for l in range(3):
            ref = oracle_h_mp(logits[b, l].double(), int(z[b, l]), 3, a, k, mask_id)
            assert abs(h[b, l].item() - ref) <= rtol * abs(ref) + atol * _scale(a), (
                a,
                int(z[b, l]),
                h[b, l].item(),
                ref,
            )


@UNDERFLOW
@pytest.mark.parametrize("k", KS)
def test_reverse_posterior_underflow(D, k, dtype, gap):
    """p(z_t) that underflows to 0 (logit gap > ~104 in float32, > ~745 in float64).

    For k = 0 and z_t not the mask, q(z_t | z_s = e) = 0 unless e == z_t, so by the
    definition the reverse step keeps the token: the row is the one-hot of z_t (the limit
    p(z_t) -> 0 of the oracle row), never 0 / 0. For k > 0 the row stays the oracle's.
    """
    mask_id = V - 1
    logits = torch.zeros(2, 3, V, dtype=dtype)
    logits[..., 0] = gap  # token 0 takes all the mass
    z = torch.tensor([[3, mask_id, 0], [3, mask_id, 0]])
    a_t = torch.tensor([0.5, 0.9], dtype=dtype)
    a_s = torch.tensor([0.6, 0.95], dtype=dtype)
    probs = D.reverse_posterior(logits, z, a_t, a_s, k=k, mask_id=mask_id)
    assert torch.isfinite(probs).all(), (
        f"k={k} {dtype} gap={gap}: z_t=3 (p(z_t) underflows), rows {probs[:, 0].tolist()}"
    )
    torch.testing.assert_close(probs.sum(-1).double(), torch.ones(2, 3, dtype=torch.float64), rtol=0, atol=1e-5)
    if k == 0:
        torch.testing.assert_close(probs[:, 0].double(), torch.eye(V, dtype=torch.float64)[[3, 3]], rtol=0, atol=1e-6)
    else:
        lg64 = logits.double()
        ref = oracle_reverse_posterior(lg64, z, a_t.double(), a_s.double(), k, mask_id)
        torch.testing.assert_close(probs.double(), ref, rtol=0, atol=1e-5)


@pytest.mark.parametrize("k", KS)
def test_float32_accuracy(D, k):
    """float32 inputs: h within float32-level error of the float64 oracle."""
    mask_id = V - 1
    alphas = [1e-3, 0.1, 0.5, 0.9, 0.999]
    logits, x0, z, alpha, kinds = _make_case(k, mask_id, alphas, seed=91, L_per_kind=2)
    h = D.xdlm_loss(logits.float(), z, x0, alpha.float(), k=k, mask_id=mask_id)
    for b, a in enumerate(alphas):
        for l in range(len(kinds)):
            ref = oracle_h_mp(
                logits.float()[b, l].double(),
                int(z[b, l]),
                int(x0[b, l]),
                float(torch.tensor(a, dtype=torch.float32)),
                k,
                mask_id,
            )
            assert abs(h[b, l].item() - ref) <= 1e-3 * abs(ref) + 1e-5 * _scale(a), (a, kinds[l], h[b, l].item(), ref)


@pytest.mark.parametrize("k", [0.0, 0.1, 1.0])
def test_bf16_logits_computed_in_float32(D, k):
    mask_id = V - 1
    logits, x0, z, alpha, _ = _make_case(k, mask_id, [0.01, 0.5, 0.99], seed=95, L_per_kind=2)
    lb = logits.to(torch.bfloat16)
    h = D.xdlm_loss(lb, z, x0, alpha.float(), k=k, mask_id=mask_id)
    assert h.dtype == torch.float32
    ref = D.xdlm_loss(lb.float(), z, x0, alpha.float(), k=k, mask_id=mask_id)
    torch.testing.assert_close(h, ref, rtol=1e-5, atol=1e-6)
    W = torch.eye(V, dtype=torch.bfloat16)
    hf = D.fused_xdlm_loss(lb, W, z, x0, alpha.float(), k=k, mask_id=mask_id)
    assert hf.dtype == torch.float32
    torch.testing.assert_close(hf, ref, rtol=1e-4, atol=1e-5)
    probs = D.reverse_posterior(lb, z, alpha.float(), alpha.float() + 1e-3, k=k, mask_id=mask_id)
    assert probs.dtype == torch.float32
