"""The fused loss at its memory floor: trainable rows of a frozen head (LoRA's mask row), the
vocabulary-block weight gradient of low-precision heads, budget-sized reused chunk buffers."""

from __future__ import annotations

import pytest
import torch
from test_fused_loss import MASK, B, H, L, V, _inputs, _reference
from torch.utils._python_dispatch import TorchDispatchMode

from xdlm_tune.diffusion import fused_loss, fused_xdlm_loss
from xdlm_tune.diffusion.fused_loss import default_chunk_size


def _grads(out, tensors):
    return torch.autograd.grad(out, [t for t in tensors if t is not None])


def _rows(weight, ids, seed=5):
    g = torch.Generator().manual_seed(seed)
    return (
        weight.detach()[ids] + 0.5 * torch.randn(len(ids), weight.shape[1], generator=g, dtype=weight.dtype)
    ).requires_grad_()


@pytest.mark.parametrize("k", [0.0, 0.1, 0.5, 1.0])
@pytest.mark.parametrize("extras", [False, True])  # bias + softcap + loss mask
def test_weight_rows_match_peft_index_copy(k, extras):
    """PEFT trainable tokens: W_eff = base.index_copy(0, ids, rows); only rows (and hidden) train."""
    hidden, weight, bias, z, x0, alpha = _inputs(k, bias=extras, seed=2)
    base = weight.detach()  # frozen
    ids = torch.tensor([MASK, 4])
    rows = _rows(base, ids)
    softcap = 2.5 if extras else None
    mask = (torch.rand(B, L, generator=torch.Generator().manual_seed(3)) > 0.3) if extras else None
    w = torch.tensor([0.3, 1.0, 2.0], dtype=torch.float64)
    for objective in (lambda h: (w[:, None] * h).mean(), lambda h: (h**2).sum()):  # single pass; recompute
        ref = _reference(hidden, base.index_copy(0, ids, rows), bias, z, x0, alpha, k, softcap=softcap, loss_mask=mask)
        fused = fused_xdlm_loss(
            hidden,
            base,
            z,
            x0,
            alpha,
            k=k,
            mask_id=MASK,
            chunk_size=4,
            bias=bias,
            logit_softcap=softcap,
            loss_mask=mask,
            token_weight=w,
            weight_rows=(ids, rows),
        )
        torch.testing.assert_close(fused, ref, rtol=1e-10, atol=1e-12)
        for a, b in zip(_grads(objective(fused), (hidden, rows, bias)), _grads(objective(ref), (hidden, rows, bias))):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_weight_rows_on_a_trainable_head_leave_the_replaced_base_rows_without_gradient():
    hidden, weight, _, z, x0, alpha = _inputs(0.5)
    ids = torch.tensor([2])
    rows = _rows(weight, ids)
    ref = _reference(hidden, weight.index_copy(0, ids, rows), None, z, x0, alpha, 0.5)
    fused = fused_xdlm_loss(hidden, weight, z, x0, alpha, k=0.5, mask_id=MASK, weight_rows=(ids, rows))
    gf, gr = _grads(fused.sum(), (hidden, weight, rows)), _grads(ref.sum(), (hidden, weight, rows))
    for a, b in zip(gf, gr):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
    assert (gf[1][2] == 0).all() and gf[1].abs().sum() > 0


@pytest.mark.parametrize("k", [0.0, 0.1, 1.0])
def test_vocab_block_weight_gradient_is_exact(k, monkeypatch):
    """The second pass that low-precision heads take, forced on in float64: several blocks, one
    holding the mask column, with bias, softcap, replaced rows and a loss mask."""
    monkeypatch.setattr(fused_loss, "_weight_grad_by_vocab_blocks", lambda cdtype, fdtype: True)
    hidden, weight, bias, z, x0, alpha = _inputs(k, bias=True, seed=4)
    ids = torch.tensor([3])
    rows = _rows(weight, ids)
    mask = torch.rand(B, L, generator=torch.Generator().manual_seed(1)) > 0.2
    n = int(mask.sum()) if k > 0 else int((mask & (z == MASK)).sum())
    block_mib = 5 * 4 * n / 2**20  # 5 vocabulary columns per block: 13 = 5 + 5 + 3
    ref = _reference(hidden, weight.index_copy(0, ids, rows), bias, z, x0, alpha, k, softcap=3.0, loss_mask=mask)
    fused = fused_xdlm_loss(
        hidden,
        weight,
        z,
        x0,
        alpha,
        k=k,
        mask_id=MASK,
        bias=bias,
        logit_softcap=3.0,
        loss_mask=mask,
        weight_rows=(ids, rows),
        chunk_size=4,
        chunk_mib=block_mib,
    )
    torch.testing.assert_close(fused, ref, rtol=1e-10, atol=1e-12)
    for a, b in zip(_grads(fused.sum(), (hidden, weight, bias, rows)), _grads(ref.sum(), (hidden, weight, bias, rows))):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_bf16_trainable_head_gradient_matches_float64_on_the_rounded_inputs():
    hidden, weight, _, z, x0, alpha = _inputs(0.1)
    hb, wb = hidden.detach().bfloat16().requires_grad_(), weight.detach().bfloat16().requires_grad_()
    fused = fused_xdlm_loss(hb, wb, z, x0, alpha.float(), k=0.1, mask_id=MASK, chunk_mib=1e-4)
    h64, w64 = hb.detach().double().requires_grad_(), wb.detach().double().requires_grad_()
    ref = _reference(h64, w64, None, z, x0, alpha, 0.1)
    gh, gw = _grads(fused.sum(), (hb, wb))
    rh, rw = _grads(ref.sum(), (h64, w64))
    assert gw.dtype == torch.bfloat16
    for a, b in ((gh, rh), (gw, rw)):
        assert ((a.double() - b).norm() / b.norm()).item() < 2e-2  # bf16 matmul rounding only


class _Allocations(TorchDispatchMode):
    """Records the element count of every tensor an op creates (views and in-place results excluded)."""

    def __init__(self):
        super().__init__()
        self.sizes: list[int] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {
            t.untyped_storage().data_ptr()
            for t in torch.utils._pytree.tree_leaves((args, kwargs))
            if isinstance(t, torch.Tensor) and t.device.type != "meta"
        }
        for t in torch.utils._pytree.tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in inputs:
                self.sizes.append(t.numel())
        return out


def _allocations(hidden, weight, rows=None, n_chunk=4):
    mask_id = weight.shape[0] - 1
    z = torch.randint(0, mask_id + 1, hidden.shape[:2])
    x0 = torch.randint(0, mask_id, hidden.shape[:2])
    rec = _Allocations()
    with rec:
        h = fused_xdlm_loss(hidden, weight, z, x0, 0.5, k=0.1, mask_id=mask_id, chunk_size=n_chunk, weight_rows=rows)
        h.sum().backward()
    return rec.sizes


def test_frozen_head_with_trainable_rows_allocates_no_vocab_by_hidden_buffer():
    Vb, Hb = 64, 40  # [V, H] = 2560 elements, a [chunk, V] buffer 256
    hidden = torch.randn(2, 9, Hb, requires_grad=True)
    weight = torch.randn(Vb, Hb) * 0.2
    mask_id = Vb - 1
    rows = weight[[mask_id]].clone().requires_grad_()
    frozen = _allocations(hidden, weight, (torch.tensor([mask_id]), rows))
    trainable = _allocations(hidden, weight.clone().requires_grad_())
    assert max(frozen) < Vb * Hb, "a frozen head must not get a [V, H] gradient buffer"
    assert max(trainable) >= Vb * Hb  # the detector sees the trainable head's gradient
    assert rows.grad is not None and rows.grad.shape == (1, Hb)


def test_chunk_buffers_are_allocated_once_not_per_chunk():
    Vb, Hb = 256, 4  # a [chunk, V] buffer holds 1024 elements, hidden at most 256
    weight = torch.randn(Vb, Hb)
    counts = []
    for length in (8, 32):  # 4 and 16 chunks of 4 tokens
        hidden = torch.randn(2, length, Hb, requires_grad=True)
        counts.append(sum(s >= 4 * Vb for s in _allocations(hidden, weight)))
    assert counts[0] == counts[1] and counts[0] <= 3, counts


def test_chunk_size_comes_from_the_memory_budget():
    assert default_chunk_size(128256) == 64 * 2**20 // (4 * 128256) == 130  # 64 MiB by default
    assert default_chunk_size(128256, 32) == 65
    assert default_chunk_size(128256, 1e-3) == 1
    hidden, weight, _, z, x0, alpha = _inputs(0.1)
    with pytest.raises(ValueError, match="chunk_mib"):
        fused_xdlm_loss(hidden, weight, z, x0, alpha, k=0.1, mask_id=MASK, chunk_mib=0)
    with pytest.raises(ValueError, match="weight_rows"):
        fused_xdlm_loss(
            hidden, weight, z, x0, alpha, k=0.1, mask_id=MASK, weight_rows=(torch.tensor([V]), torch.zeros(1, H))
        )
    with pytest.raises(ValueError, match="backend"):
        fused_xdlm_loss(hidden, weight, z, x0, alpha, k=0.1, mask_id=MASK, backend="cuda")


@pytest.mark.parametrize("family", ["llama", "gemma2"])  # untied head; tied and softcapped
def test_objective_gives_lora_the_same_gradients_without_a_vocab_by_hidden_buffer(family):
    """DenoiserObjective hands PEFT's trainable mask row to the fused loss as weight_rows: the same
    loss and gradients (LoRA weights, the mask row of embeddings and head) as PEFT's merged weight."""
    from test_model_lora import _converted
    from tiny_models import random_ids

    from xdlm_tune.model import attach_lora, denoiser_hidden, output_projection
    from xdlm_tune.train.objective import DenoiserObjective, head_weight_rows

    model, _, mask_id = _converted(family)
    plain = head_weight_rows(model)
    assert plain[1] is None and plain[0] is output_projection(model)[0]  # no PEFT: unchanged
    torch.manual_seed(0)
    model = attach_lora(model, r=4, alpha=8, mask_id=mask_id)
    objective = DenoiserObjective(model, k=0.1, mask_id=mask_id, shift=False, chunk_size=5)
    weight, rows, bias_, softcap_ = head_weight_rows(model)
    assert rows is not None and rows[0].tolist() == [mask_id] and not weight.requires_grad
    assert (bias_, softcap_) == output_projection(model)[1:]  # the same bias and softcap as PEFT's wrapper
    x0 = random_ids(2, 10)
    z = x0.clone()
    z[:, ::3] = mask_id
    z[1, 1] = 7
    inputs = dict(
        z_t=z,
        x0=x0,
        attention_mask=torch.ones_like(x0),
        alpha=torch.tensor([0.3, 0.8]),
        loss_mask=torch.ones_like(x0, dtype=torch.bool),
        token_weight=torch.tensor([1.0, 2.0]),
    )
    params = [p for p in model.parameters() if p.requires_grad]
    new = objective(**inputs)
    g_new = torch.autograd.grad((new * inputs["token_weight"][:, None]).sum(), params, allow_unused=True)
    w_merged, bias, softcap = output_projection(model)  # PEFT's merged [V, H] weight, as before
    hidden = denoiser_hidden(model, z, inputs["attention_mask"], shift=False)
    old = fused_xdlm_loss(
        hidden, w_merged, z, x0, inputs["alpha"], k=0.1, mask_id=mask_id, bias=bias, logit_softcap=softcap
    )
    g_old = torch.autograd.grad((old * inputs["token_weight"][:, None]).sum(), params, allow_unused=True)
    torch.testing.assert_close(new, old, rtol=1e-5, atol=1e-6)
    delta = [n for n, p in model.named_parameters() if p.requires_grad and "trainable_tokens_delta" in n]
    assert delta, "the mask row trains through PEFT's trainable tokens"
    for (name, _), a, b in zip([(n, p) for n, p in model.named_parameters() if p.requires_grad], g_new, g_old):
        if b is None:
            assert a is None or (a == 0).all(), name
        else:
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6, msg=name)
    assert any(
        g is not None and g.abs().sum() > 0
        for (n, _), g in zip([(n, p) for n, p in model.named_parameters() if p.requires_grad], g_new)
        if "trainable_tokens_delta" in n and "embed" in n
    )  # the mask row gets its gradient
