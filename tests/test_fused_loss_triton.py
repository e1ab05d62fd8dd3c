"""The Triton kernel of fused_xdlm_loss == the torch path, run on the CPU under TRITON_INTERPRET=1
(values and gradients; k in {0, 0.1, 0.5, 1}; loss masks, bias, soft-capping; float64 tightly,
float32 and bf16 to their rounding). On CUDA the same tests run the compiled kernel (gpu mark)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from test_fused_loss import MASK, B, L, _reference  # noqa: E402
from test_fused_loss import _inputs as _cpu_inputs  # noqa: E402

from xdlm_tune.diffusion import fused_loss_triton, fused_xdlm_loss  # noqa: E402

# On the CPU every kernel program runs in Python (~1 s a case): slow. On CUDA: compiled, gpu.
pytestmark = pytest.mark.gpu if torch.cuda.is_available() else pytest.mark.slow
DEV = "cuda" if torch.cuda.is_available() else "cpu"


def _inputs(*args, **kw):
    """test_fused_loss's inputs, on the kernel's device."""
    return tuple(
        None if t is None else t.detach().to(DEV).requires_grad_(t.requires_grad) for t in _cpu_inputs(*args, **kw)
    )


@pytest.fixture
def interpreted():
    """The kernel runs compiled on CUDA, or in Triton's interpreter (conftest sets TRITON_INTERPRET=1)."""
    if not (fused_loss_triton._INTERPRET or torch.cuda.is_available()):
        pytest.skip("triton was imported before TRITON_INTERPRET=1 was set and there is no CUDA")


def _both(fn):
    return {be: fn(be) for be in ("torch", "triton")}


def _run(backend, hidden, weight, bias, z, x0, alpha, k, objective, **kw):
    h = fused_xdlm_loss(hidden, weight, z, x0, alpha, k=k, mask_id=MASK, bias=bias, backend=backend, **kw)
    wrt = [t for t in (hidden, weight, bias) if t is not None and t.requires_grad]
    return (h, *torch.autograd.grad(objective(h), wrt))


@pytest.mark.parametrize("k", [0.0, 0.1, 0.5, 1.0])
@pytest.mark.parametrize("extras", [False, True])  # loss mask + bias + softcap
def test_triton_matches_torch_in_float64(interpreted, k, extras):
    hidden, weight, bias, z, x0, alpha = _inputs(k, bias=extras, seed=7)
    kw = {}
    if extras:
        kw = dict(
            logit_softcap=2.0, loss_mask=(torch.rand(B, L, generator=torch.Generator().manual_seed(2)) > 0.35).to(DEV)
        )
    w = torch.tensor([0.3, 1.0, 2.0], dtype=torch.float64, device=DEV)
    for objective, tw in (((lambda h: (w[:, None] * h).sum()), w), ((lambda h: (h**2).sum() + h.sum()), None)):
        out = _both(
            lambda be, objective=objective, tw=tw: _run(
                be, hidden, weight, bias, z, x0, alpha, k, objective, token_weight=tw, **kw
            )
        )
        for a, b in zip(out["triton"], out["torch"]):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)
    ref = _reference(
        hidden, weight, bias, z, x0, alpha, k, softcap=kw.get("logit_softcap"), loss_mask=kw.get("loss_mask")
    )
    torch.testing.assert_close(out["triton"][0], ref, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("k", [0.1, 1.0])
def test_triton_float32_and_bf16_follow_the_torch_path(interpreted, k):
    hidden, weight, bias, z, x0, alpha = _inputs(k, bias=True, seed=8)
    for dtype, tol in ((torch.float32, 1e-5), (torch.bfloat16, 2e-2)):
        h_, w_, b_ = (t.detach().to(dtype).requires_grad_() for t in (hidden, weight, bias))
        out = _both(lambda be, h_=h_, w_=w_, b_=b_: _run(be, h_, w_, b_, z, x0, alpha.float(), k, lambda h: h.sum()))
        ref = _run(
            "torch", *(t.detach().double().requires_grad_() for t in (h_, w_, b_)), z, x0, alpha, k, lambda h: h.sum()
        )
        for name, a, b, r in zip(("h", "hidden", "weight", "bias"), out["triton"], out["torch"], ref):
            assert a.dtype == b.dtype, name
            for got in (a, b):  # both paths are as close to float64 on the same rounded inputs
                err = ((got.double() - r).norm() / r.norm()).item()
                assert err < tol, (dtype, name, err)


def test_triton_frozen_head_with_the_mask_row_and_empty_loss(interpreted):
    hidden, weight, _, z, x0, alpha = _inputs(0.5, seed=9)
    base = weight.detach()
    rows = base[[MASK]].clone().requires_grad_()
    out = {}
    for be in ("torch", "triton"):
        h = fused_xdlm_loss(
            hidden,
            base,
            z,
            x0,
            alpha,
            k=0.5,
            mask_id=MASK,
            weight_rows=(torch.tensor([MASK], device=DEV), rows),
            backend=be,
        )
        out[be] = (h, *torch.autograd.grad(h.sum(), [hidden, rows]))
    for a, b in zip(out["triton"], out["torch"]):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)
    assert (out["triton"][2] == 0).all()  # the mask logit is excluded: its row's gradient is 0
    empty = fused_xdlm_loss(
        hidden, weight, z, x0, alpha, k=0.5, mask_id=MASK, loss_mask=torch.zeros(B, L, device=DEV), backend="triton"
    )
    (g,) = torch.autograd.grad(empty.sum(), [hidden])
    assert (empty == 0).all() and (g == 0).all()
    with torch.no_grad():
        torch.testing.assert_close(
            fused_xdlm_loss(hidden, weight, z, x0, alpha, k=0.5, mask_id=MASK, backend="triton"),
            out["torch"][0],
            rtol=1e-9,
            atol=1e-11,
        )


def test_backend_choice_is_explicit_off_cuda(interpreted):
    hidden, weight, _, z, x0, alpha = _inputs(0.1)
    other_row = (torch.tensor([2], device=DEV), weight.detach()[[2]].clone().requires_grad_())
    with pytest.raises(RuntimeError, match="mask row"):
        fused_xdlm_loss(hidden, weight, z, x0, alpha, k=0.1, mask_id=MASK, weight_rows=other_row, backend="triton")
    ok, why = fused_loss_triton.triton_available(hidden.cpu())  # automatic choice: CUDA tensors only
    assert not ok and "not CUDA" in why
