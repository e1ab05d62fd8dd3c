"""Fused, low-memory XDLM loss: hidden states + output projection -> h, never holding [B*L, V].

The materialised path (logits -> xdlm_loss -> autograd) keeps several [B*L, V] float32 tensors
alive for backward: at V = 128k and B*L = 4096 that is ~2 GiB each. Here the tokens go through
the output projection in chunks; per chunk we compute log p(x), log p(z) and the one vocabulary
reduction R of loss.py, then the gradient w.r.t. the chunk's logits in closed form:

    dh/dlogit_e = g_x ([e == x] - p_e) + g_z ([e == z] - p_e) + g_R (q_e - p_e Q),
    q_e = c p_e / (1 + c p_e),  Q = sum_e q_e,   (R = sum_e log1p(c p_e), c = a V / (b k))

where g_x, g_z, g_R are the partial derivatives of the per-token algebra (``token_terms``; we let
autograd take them on [chunk] tensors, which is cheap). Like fused cross-entropy kernels we turn
that into grad_hidden and grad_weight during the forward pass, so backward needs no second pass
over the vocabulary. Those gradients are for the objective sum_i token_weight_i * h_i; backward
checks that the incoming gradient is proportional to token_weight (it is for the trainer's
weighted mean) and otherwise recomputes exactly with the incoming gradient.
"""
from __future__ import annotations

import math

import torch

from ._checks import as_alpha, check_float, check_ids, check_k, check_mask_id
from .loss import token_terms

# Tokens per chunk are chosen so one [chunk, V] float32 tensor is about this many bytes.
_CHUNK_BYTES = 1 << 28


def default_chunk_size(vocab_size: int) -> int:
    return max(16, _CHUNK_BYTES // (4 * vocab_size))


def _chunked_pass(hidden, weight, bias, z, x, a, w, *, k, mask_id, softcap, chunk, need):
    """h: [N] for hidden [N, H]; and, for the objective sum_i w_i h_i, the gradients named in
    ``need`` = (hidden, weight, bias) booleans. One vocabulary pass per chunk."""
    N, H = hidden.shape
    V = weight.shape[0]
    cdtype = torch.promote_types(hidden.dtype, weight.dtype)  # matmul dtype (bf16 stays bf16)
    fdtype = torch.float64 if cdtype == torch.float64 else torch.float32  # the math's dtype
    W = weight.to(cdtype)
    h_out = torch.empty(N, dtype=fdtype, device=hidden.device)
    g_hidden = torch.empty_like(hidden) if need[0] else None
    g_weight = torch.zeros(V, H, dtype=fdtype, device=hidden.device) if need[1] else None
    g_bias = torch.zeros(V, dtype=fdtype, device=hidden.device) if need[2] else None
    any_grad = any(need)

    for start in range(0, N, chunk):
        sl = slice(start, min(start + chunk, N))
        hc = hidden[sl].to(cdtype)
        zc, xc, ac = z[sl], x[sl], a[sl].to(fdtype)
        logits = (hc @ W.T).to(fdtype)
        if bias is not None:
            logits += bias.to(fdtype)
        dcap = None
        if softcap is not None:
            t = torch.tanh(logits / softcap)
            logits = t * softcap
            dcap = t.mul_(t).neg_().add_(1.0)  # d(cap tanh(l / cap)) / dl = 1 - tanh^2
        logits[:, mask_id] = -math.inf
        lse = torch.logsumexp(logits, dim=-1)
        logp_x = logits.gather(1, xc[:, None])[:, 0] - lse
        logp_z = logits.gather(1, zc[:, None])[:, 0] - lse
        p = logits.sub_(lse[:, None]).exp_()  # in place: logits become p
        if k > 0:
            cq = p * (ac * V / ((1.0 - ac) * k))[:, None]  # c p_e
            R = torch.log1p(cq).sum(-1)
        else:
            R = torch.zeros_like(lse)

        with torch.enable_grad():
            leaves = [t.detach().requires_grad_(any_grad) for t in (logp_x, logp_z, R)]
            h = token_terms(*leaves, zc == xc, zc == mask_id, ac, k=k, V=V)
            if any_grad:
                g_x, g_z, g_R = torch.autograd.grad((h * w[sl].to(fdtype)).sum(), leaves, allow_unused=True)
                g_x, g_z = (torch.zeros_like(lse) if g is None else g for g in (g_x, g_z))
                g_R = torch.zeros_like(lse) if g_R is None else g_R
        h_out[sl] = h.detach()
        if not any_grad:
            continue

        coef = g_x + g_z
        if k > 0:
            q = cq.div_(cq + 1.0)  # in place: c p / (1 + c p)
            coef = coef + g_R * q.sum(-1)
        dl = p.mul_(-coef[:, None])  # in place: p becomes -coef * p
        if k > 0:
            dl.add_(q.mul_(g_R[:, None]))
        dl.scatter_add_(1, xc[:, None], g_x[:, None])
        dl.scatter_add_(1, zc[:, None], g_z[:, None])
        dl[:, mask_id] = 0.0
        if dcap is not None:
            dl.mul_(dcap)
        dlc = dl.to(cdtype)
        if g_hidden is not None:
            g_hidden[sl] = (dlc @ W).to(hidden.dtype)
        if g_weight is not None:
            if cdtype == fdtype:
                g_weight.addmm_(dlc.T, hc)  # accumulate in place: no [V, H] temporary per chunk
            else:
                g_weight += (dlc.T @ hc).to(fdtype)
        if g_bias is not None:
            g_bias += dl.sum(0)
    return h_out, (g_hidden, g_weight, g_bias)


class _FusedXDLM(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, z, x, a, w, k, mask_id, softcap, chunk):
        need = tuple(ctx.needs_input_grad[:3])  # all False under no_grad: a single cheap pass
        kw = dict(k=k, mask_id=mask_id, softcap=softcap, chunk=chunk)
        h, grads = _chunked_pass(hidden, weight, bias, z, x, a, w, need=need, **kw)
        ctx.kw, ctx.need = kw, need
        ctx.save_for_backward(hidden, weight, bias, z, x, a, w, *[g for g in grads if g is not None])
        return h

    @staticmethod
    def backward(ctx, grad_h):
        hidden, weight, bias, z, x, a, w, *saved = ctx.saved_tensors
        grad_h = grad_h.to(w.dtype)
        # Precomputed grads are for sum_i w_i h_i: reuse them when grad_h = c * w.
        ww = (w * w).sum()
        c = (grad_h * w).sum() / ww if ww > 0 else grad_h.new_zeros(())
        scale = grad_h.abs().max() if grad_h.numel() else grad_h.new_zeros(())
        if grad_h.numel() == 0 or bool((grad_h - c * w).abs().max() <= 1e-6 * scale):
            saved_grads = iter(saved)
            grads = []
            for needed in ctx.need:
                g = next(saved_grads) if needed else None
                grads.append(None if g is None else g.mul_(c.to(g.dtype)))  # our own buffers: scale in place
        else:  # an unusual upstream gradient: redo the pass with it as the weight
            _, grads = _chunked_pass(hidden, weight, bias, z, x, a, grad_h, need=ctx.need, **ctx.kw)
            grads = list(grads)
        g_hidden, g_weight, g_bias = grads
        if g_weight is not None:
            g_weight = g_weight.to(weight.dtype)
        if g_bias is not None:
            g_bias = g_bias.to(bias.dtype)
        return g_hidden, g_weight, g_bias, None, None, None, None, None, None, None, None


def fused_xdlm_loss(
    hidden: torch.Tensor,
    lm_head_weight: torch.Tensor,
    z_t: torch.Tensor,
    x0: torch.Tensor,
    alpha_t: torch.Tensor | float,
    *,
    k: float,
    mask_id: int,
    loss_mask: torch.Tensor | None = None,
    chunk_size: int | None = None,
    bias: torch.Tensor | None = None,
    logit_softcap: float | None = None,
    token_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-token h: [B, L] from final hidden states [B, L, H] and the output projection [V, H].

    Same values and gradients as ``xdlm_loss(hidden @ W.T + bias, ...)`` without materialising
    the logits. ``loss_mask`` [B, L] (bool / 0-1): tokens outside get h = 0 and cost nothing.
    ``logit_softcap``: logits = cap * tanh(logits / cap) (Gemma 2). ``token_weight`` ([B] or
    [B, L]): the weights the caller will put on h (e.g. schedule.neg_dalpha_dt(t)); a correct
    gradient is returned for any use of h, this only makes the common case single-pass.
    ``chunk_size``: tokens per chunk (default: ~256 MiB of float32 logits per chunk).
    """
    check_float("hidden", hidden)
    check_float("lm_head_weight", lm_head_weight)
    if hidden.dim() != 3:
        raise ValueError(f"hidden must be [B, L, H], got shape {tuple(hidden.shape)}")
    B, L, H = hidden.shape
    if lm_head_weight.dim() != 2 or lm_head_weight.shape[1] != H:
        raise ValueError(f"lm_head_weight must be [V, H] with H={H}, got shape {tuple(lm_head_weight.shape)}")
    V = lm_head_weight.shape[0]
    if bias is not None and tuple(bias.shape) != (V,):
        raise ValueError(f"bias must be [V] with V={V}, got shape {tuple(bias.shape)}")
    if logit_softcap is not None and not logit_softcap > 0:
        raise ValueError(f"logit_softcap must be > 0 or None, got {logit_softcap}")
    k = check_k(k)
    check_mask_id(mask_id, V)
    check_ids("z_t", z_t, (B, L))
    check_ids("x0", x0, (B, L))
    if chunk_size is None:
        chunk_size = default_chunk_size(V)
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int (tokens per chunk), got {chunk_size!r}")
    a = as_alpha("alpha_t", alpha_t, B).to(hidden.device).expand(B, L)
    if loss_mask is None:
        loss_mask = torch.ones(B, L, dtype=torch.bool, device=hidden.device)
    elif tuple(loss_mask.shape) != (B, L):
        raise ValueError(f"loss_mask has shape {tuple(loss_mask.shape)}, expected {(B, L)}")
    loss_mask = loss_mask.bool()
    if bool((x0[loss_mask] == mask_id).any()):
        raise ValueError("x0 contains mask_id at loss positions: clean tokens must not be the mask token")
    if token_weight is None:
        token_weight = torch.ones(B, L, device=hidden.device)
    else:
        token_weight = torch.as_tensor(token_weight, device=hidden.device)
        if token_weight.dim() == 1:
            token_weight = token_weight[:, None]
        try:
            token_weight = token_weight.expand(B, L)
        except RuntimeError:
            raise ValueError(f"token_weight must be [B] or [B, L], got shape {tuple(token_weight.shape)}") from None

    # Only rows that can carry loss go through the vocabulary: loss tokens, and for k = 0 (MDLM)
    # only the masked ones (h is exactly 0 elsewhere).
    keep = loss_mask if k > 0 else loss_mask & (z_t == mask_id)
    rows = keep.reshape(-1).nonzero()[:, 0]
    fdtype = torch.float64 if torch.promote_types(hidden.dtype, lm_head_weight.dtype) == torch.float64 else torch.float32
    sel = lambda t: t.reshape(B * L, *t.shape[2:])[rows]  # noqa: E731
    h_rows = _FusedXDLM.apply(
        sel(hidden), lm_head_weight, bias, sel(z_t).long(), sel(x0).long(), sel(a).to(fdtype),
        sel(token_weight).to(fdtype), k, mask_id, logit_softcap, chunk_size,
    )
    h = torch.zeros(B * L, dtype=fdtype, device=hidden.device)
    return h.index_put((rows,), h_rows).view(B, L)
