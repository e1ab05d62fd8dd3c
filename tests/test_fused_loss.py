"""fused_xdlm_loss == xdlm_loss on materialised logits, in value and gradient (float64, tight)."""

from __future__ import annotations

import pytest
import torch

from xdlm_tune.diffusion import forward_noise, fused_xdlm_loss, xdlm_loss

B, L, H, V, MASK = 3, 7, 6, 13, 12


def _inputs(k, dtype=torch.float64, seed=0, bias=False):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(B, L, H, generator=g, dtype=dtype).requires_grad_()
    weight = (0.7 * torch.randn(V, H, generator=g, dtype=dtype)).requires_grad_()
    b = (0.3 * torch.randn(V, generator=g, dtype=dtype)).requires_grad_() if bias else None
    x0 = torch.randint(0, MASK, (B, L), generator=g)
    alpha = torch.tensor([0.02, 0.5, 0.97], dtype=dtype)
    z = forward_noise(x0, alpha, k=k, mask_id=MASK, vocab_size=V, generator=g)
    # Make sure every kind of z appears: == x, == mask, and (for k > 0) another id.
    z[0, 0], z[1, 1] = x0[0, 0], MASK
    if k > 0:
        z[2, 2] = (x0[2, 2] + 1) % MASK
    return hidden, weight, b, z, x0, alpha


def _grads(out, *tensors):
    return torch.autograd.grad(out, [t for t in tensors if t is not None])


def _reference(hidden, weight, bias, z, x0, alpha, k, softcap=None, loss_mask=None):
    logits = hidden @ weight.T
    if bias is not None:
        logits = logits + bias
    if softcap is not None:
        logits = softcap * torch.tanh(logits / softcap)
    h = xdlm_loss(logits, z, x0, alpha, k=k, mask_id=MASK)
    return h if loss_mask is None else h * loss_mask


@pytest.mark.parametrize("k", [0.0, 0.1, 0.5, 1.0])
@pytest.mark.parametrize("chunk_size", [1, 4, 5, 1000])  # 5 does not divide B*L = 21
def test_fused_matches_reference_value_and_grad(k, chunk_size):
    hidden, weight, _, z, x0, alpha = _inputs(k)
    w = torch.tensor([0.3, 1.0, 2.0], dtype=torch.float64)
    ref = _reference(hidden, weight, None, z, x0, alpha, k)
    fused = fused_xdlm_loss(hidden, weight, z, x0, alpha, k=k, mask_id=MASK, chunk_size=chunk_size, token_weight=w)
    torch.testing.assert_close(fused, ref, rtol=1e-10, atol=1e-12)
    # The trainer's objective (precomputed-gradient path) ...
    g_ref = _grads((w[:, None] * ref).mean(), hidden, weight)
    g_fus = _grads((w[:, None] * fused).mean(), hidden, weight)
    for a, b in zip(g_fus, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("k", [0.0, 0.1, 1.0])
def test_fused_arbitrary_upstream_gradient_recomputes_exactly(k):
    """An upstream gradient not proportional to token_weight must still give the exact gradient."""
    hidden, weight, bias, z, x0, alpha = _inputs(k, bias=True)
    ref = _reference(hidden, weight, bias, z, x0, alpha, k)
    fused = fused_xdlm_loss(hidden, weight, z, x0, alpha, k=k, mask_id=MASK, bias=bias, chunk_size=4)
    probe = torch.randn(B, L, dtype=torch.float64)
    for a, b in zip(
        _grads((probe * fused).sum() + (fused**2).sum(), hidden, weight, bias),
        _grads((probe * ref).sum() + (ref**2).sum(), hidden, weight, bias),
    ):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("k", [0.0, 0.5])
def test_fused_loss_mask_bias_and_softcap(k):
    hidden, weight, bias, z, x0, alpha = _inputs(k, bias=True, seed=3)
    loss_mask = torch.rand(B, L, generator=torch.Generator().manual_seed(1)) > 0.4
    ref = _reference(hidden, weight, bias, z, x0, alpha, k, softcap=3.0, loss_mask=loss_mask)
    fused = fused_xdlm_loss(
        hidden, weight, z, x0, alpha, k=k, mask_id=MASK, bias=bias, logit_softcap=3.0, loss_mask=loss_mask, chunk_size=3
    )
    torch.testing.assert_close(fused, ref, rtol=1e-10, atol=1e-12)
    assert (fused[~loss_mask] == 0).all()
    for a, b in zip(_grads(fused.sum(), hidden, weight, bias), _grads(ref.sum(), hidden, weight, bias)):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_fused_float32_agrees_to_1e5():
    hidden, weight, _, z, x0, alpha = _inputs(0.1)
    h32, w32 = hidden.detach().float().requires_grad_(), weight.detach().float().requires_grad_()
    ref = _reference(hidden, weight, None, z, x0, alpha, 0.1)
    fused = fused_xdlm_loss(h32, w32, z, x0, alpha.float(), k=0.1, mask_id=MASK, chunk_size=4)
    assert fused.dtype == torch.float32
    torch.testing.assert_close(fused.double(), ref, rtol=1e-5, atol=1e-6)
    for a, b in zip(_grads(fused.sum(), h32, w32), _grads(ref.sum(), hidden, weight)):
        torch.testing.assert_close(a.double(), b, rtol=1e-5, atol=1e-5)


def test_fused_bf16_inputs_compute_in_float32():
    hidden, weight, _, z, x0, alpha = _inputs(0.1)
    hb, wb = hidden.detach().bfloat16().requires_grad_(), weight.detach().bfloat16().requires_grad_()
    fused = fused_xdlm_loss(hb, wb, z, x0, alpha.float(), k=0.1, mask_id=MASK)
    assert fused.dtype == torch.float32 and torch.isfinite(fused).all()
    ref = _reference(hb.double(), wb.double(), None, z, x0, alpha, 0.1)  # same rounded inputs
    torch.testing.assert_close(fused.double(), ref, rtol=3e-2, atol=3e-2)  # bf16 matmul rounding only
    gh, gw = _grads(fused.sum(), hb, wb)
    assert gh.dtype == torch.bfloat16 and gw.dtype == torch.bfloat16 and torch.isfinite(gh.float()).all()


def test_fused_no_grad_and_frozen_head():
    hidden, weight, _, z, x0, alpha = _inputs(0.5)
    with torch.no_grad():
        h = fused_xdlm_loss(hidden, weight, z, x0, alpha, k=0.5, mask_id=MASK)
    assert not h.requires_grad
    frozen = weight.detach()  # LoRA: the output projection is frozen, only hidden needs a gradient
    out = fused_xdlm_loss(hidden, frozen, z, x0, alpha, k=0.5, mask_id=MASK)
    (g,) = torch.autograd.grad(out.sum(), [hidden])
    (g_ref,) = torch.autograd.grad(_reference(hidden, frozen, None, z, x0, alpha, 0.5).sum(), [hidden])
    torch.testing.assert_close(g, g_ref, rtol=1e-9, atol=1e-12)


def test_fused_empty_loss_mask():
    hidden, weight, _, z, x0, alpha = _inputs(0.1)
    out = fused_xdlm_loss(hidden, weight, z, x0, alpha, k=0.1, mask_id=MASK, loss_mask=torch.zeros(B, L))
    assert (out == 0).all()
    (g,) = torch.autograd.grad(out.sum(), [hidden])
    assert (g == 0).all()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(k=1.5), "k=1.5"),
        (dict(mask_id=V), "mask_id"),
        (dict(alpha_t=torch.tensor([0.0, 0.5, 0.5])), "alpha_t"),
        (dict(alpha_t=torch.tensor([0.5, 0.5, 1.0])), "alpha_t"),
        (dict(chunk_size=0), "chunk_size"),
        (dict(loss_mask=torch.ones(B, L + 1)), "loss_mask"),
        (dict(lm_head_weight=torch.randn(V, H + 1)), "lm_head_weight"),
        (dict(z_t=torch.zeros(B, L + 1, dtype=torch.long)), "z_t"),
        (dict(x0=torch.zeros(B, L)), "x0"),
        (dict(x0=torch.full((B, L), MASK)), "x0 contains mask_id"),
    ],
)
def test_fused_bad_input_names_the_argument(kwargs, match):
    hidden, weight, _, z, x0, alpha = _inputs(0.1)
    args = dict(hidden=hidden, lm_head_weight=weight, z_t=z, x0=x0, alpha_t=alpha, k=0.1, mask_id=MASK)
    args.update(kwargs)
    with pytest.raises((ValueError, TypeError), match=match):
        fused_xdlm_loss(**args)
