"""Fused, low-memory XDLM loss: hidden states + output projection -> h, never holding [B*L, V].

The materialised path (logits -> xdlm_loss -> autograd) keeps several [B*L, V] float32 tensors
alive for backward: at V = 128k and B*L = 4096 that is ~2 GiB each. Here the tokens go through
the output projection in chunks sized from a memory budget (``chunk_mib`` per [chunk, V] float32
buffer); per chunk we compute log p(x), log p(z) and the one vocabulary reduction R of loss.py,
then the gradient w.r.t. the chunk's logits in closed form:

    dh/dlogit_e = g_x ([e == x] - p_e) + g_z ([e == z] - p_e) + g_R (q_e - p_e Q),
    q_e = c p_e / (1 + c p_e),  Q = sum_e q_e,   (R = sum_e log1p(c p_e), c = a V / (b k))

where g_x, g_z, g_R are the partial derivatives of the per-token algebra (``token_terms``; we let
autograd take them on [chunk] tensors, which is cheap). Like fused cross-entropy kernels we turn
that into the gradients during the forward pass, so backward needs no second pass over the
vocabulary. Those gradients are for the objective sum_i token_weight_i * h_i; backward checks that
the incoming gradient is proportional to token_weight (it is for the trainer's weighted mean) and
otherwise recomputes exactly with the incoming gradient.

Memory floor. The chunk buffers (one float32 [chunk, V] buffer for logits -> p -> dlogits, a
scratch of a quarter of its rows, plus one in the matmul dtype for bf16 and one for soft-capping)
are allocated once and reused by every chunk. Extra [V, H] memory exists only when the head itself
trains: float32 heads accumulate straight into the buffer that becomes ``weight.grad``; bf16 heads
take their weight gradient in a second pass over vocabulary blocks (logits recomputed, one
float32-accumulated matmul per block, written in bf16: no float32 [V, H] buffer, a single rounding
like the materialised path). A LoRA head is frozen; the rows PEFT trains (the mask row) come in as
``weight_rows`` and get an [n, H] gradient, never a [V, H] one.
"""

from __future__ import annotations

import math

import torch

from ._checks import as_alpha, check_float, check_ids, check_k, check_mask_id
from .loss import token_terms

DEFAULT_CHUNK_MIB = 64.0  # MiB per float32 [chunk, V] buffer


def default_chunk_size(vocab_size: int, chunk_mib: float = DEFAULT_CHUNK_MIB) -> int:
    """Tokens per chunk so that one float32 [chunk, V] buffer is about ``chunk_mib`` MiB."""
    return max(1, int(chunk_mib * 2**20) // (4 * vocab_size))


class _Buffers:
    """[rows, cols] work buffers allocated on first use and reused (views of their first rows),
    and one scratch buffer of a quarter of the rows for the elementwise passes."""

    def __init__(self, rows: int, cols: int, device: torch.device):
        self.rows, self.cols, self.device, self._bufs = rows, cols, device, {}
        self.sub = max(1, rows // 4)

    def get(self, name: str, dtype: torch.dtype, r: int, c: int | None = None) -> torch.Tensor:
        cap = self.sub if name == "tmp" else self.rows
        buf = self._bufs.get(name)
        if buf is None or buf.dtype != dtype:
            buf = self._bufs[name] = torch.empty(cap, self.cols, dtype=dtype, device=self.device)
        c = self.cols if c is None else c
        return buf[:r] if c == self.cols else buf.view(-1)[: r * c].view(r, c)

    def sub_blocks(self, r: int):
        return [slice(i, min(i + self.sub, r)) for i in range(0, r, self.sub)]


def _logits_into(bufs, hc, Wb, bias_b, rows, softcap, fdtype, col0=0):
    """float32 logits [r, cols] of hc [r, H] against Wb [cols, H] (+ bias, row overrides, softcap),
    written into the reused buffer. Returns (logits, dcap or None)."""
    r, cols = hc.shape[0], Wb.shape[0]
    out = bufs.get("main", fdtype, r, cols)
    if Wb.dtype == fdtype:
        torch.mm(hc, Wb.T, out=out)
    else:
        low = bufs.get("low", Wb.dtype, r, cols)
        torch.mm(hc, Wb.T, out=low)
        out.copy_(low)
    if rows is not None:  # PEFT trainable rows replace the base head's rows
        idx, R_rows = rows
        local = idx - col0
        inside = (local >= 0) & (local < cols)
        if bool(inside.any()):
            out[:, local[inside]] = (hc @ R_rows[inside].to(hc.dtype).T).to(fdtype)
    if bias_b is not None:
        out.add_(bias_b)
    if softcap is None:
        return out, None
    dcap = bufs.get("cap", fdtype, r, cols)
    torch.div(out, softcap, out=dcap).tanh_()
    torch.mul(dcap, softcap, out=out)
    dcap.square_().neg_().add_(1.0)  # d(cap tanh(l / cap)) / dl = 1 - tanh^2
    return out, dcap


def _scratch_cp(bufs, p, c, sl, fdtype):
    """c p for the rows ``sl`` of p, in the scratch buffer."""
    t = bufs.get("tmp", fdtype, sl.stop - sl.start, p.shape[1])
    return torch.mul(p[sl], c[sl, None], out=t)


def _vocab_R(bufs, p, c, fdtype):
    """R = sum_e log1p(c p_e) per row of p, a quarter of the rows at a time."""
    R = p.new_empty(p.shape[0])
    for sl in bufs.sub_blocks(p.shape[0]):
        R[sl] = _scratch_cp(bufs, p, c, sl, fdtype).log1p_().sum(-1)
    return R


def _q_(t):
    """In place: c p -> q = c p / (1 + c p) = 1 / (1 + 1 / (c p)), no cancellation; c p = 0 -> 0."""
    return t.reciprocal_().add_(1.0).reciprocal_()


def _vocab_Q(bufs, p, c, fdtype):
    Q = p.new_empty(p.shape[0])
    for sl in bufs.sub_blocks(p.shape[0]):
        Q[sl] = _q_(_scratch_cp(bufs, p, c, sl, fdtype)).sum(-1)
    return Q


def _finish_dlogits(bufs, p, c, coef, g_R, onehots, mask_col, dcap, fdtype):
    """In place: p -> dh/dlogits = -coef p + g_R q + sum_j g_j [e == id_j]; mask column 0.
    ``c`` None: k = 0, no q term."""
    for sl in bufs.sub_blocks(p.shape[0]):
        q = None if c is None else _q_(_scratch_cp(bufs, p, c, sl, fdtype)).mul_(g_R[sl, None])
        p[sl].mul_(-coef[sl, None])
        if q is not None:
            p[sl].add_(q)
    for row_idx, col_idx, g in onehots:
        p.index_put_((row_idx, col_idx), g, accumulate=True)
    if mask_col is not None:
        p[:, mask_col] = 0.0
    if dcap is not None:
        p.mul_(dcap)
    return p


def _chunked_pass(hidden, weight, bias, rows, z, x, a, w, *, k, mask_id, softcap, chunk, chunk_mib, need):
    """h: [N] for hidden [N, H]; and, for the objective sum_i w_i h_i, the gradients named in
    ``need`` = (hidden, weight, bias, rows) booleans."""
    N, H = hidden.shape
    V = weight.shape[0]
    cdtype = torch.promote_types(hidden.dtype, weight.dtype)  # matmul dtype (bf16 stays bf16)
    fdtype = torch.float64 if cdtype == torch.float64 else torch.float32  # the math's dtype
    W = weight.to(cdtype)
    R_rows = None if rows is None else (rows[0], rows[1].to(cdtype))
    h_out = torch.empty(N, dtype=fdtype, device=hidden.device)
    g_hidden = torch.empty_like(hidden) if need[0] else None
    # A low-precision trainable head gets its gradient from a second pass over vocabulary blocks.
    w_by_blocks = need[1] and _weight_grad_by_vocab_blocks(cdtype, fdtype)
    g_weight = torch.zeros(V, H, dtype=fdtype, device=hidden.device) if need[1] and not w_by_blocks else None
    g_bias = torch.zeros(V, dtype=fdtype, device=hidden.device) if need[2] else None
    g_rows = torch.zeros(rows[1].shape, dtype=fdtype, device=hidden.device) if need[3] else None
    any_grad = any(need)
    ac_all = a.to(fdtype)
    c_all = ac_all * V / ((1.0 - ac_all) * k) if k > 0 else None
    saved = (
        {n: torch.empty(N, dtype=fdtype, device=hidden.device) for n in ("lse", "coef", "g_x", "g_z", "g_R")}
        if w_by_blocks
        else None
    )
    bufs = _Buffers(min(chunk, N), V, hidden.device)
    bias_f = None if bias is None else bias.to(fdtype)

    for start in range(0, N, chunk):
        sl = slice(start, min(start + chunk, N))
        r = sl.stop - sl.start
        hc = hidden[sl].to(cdtype)
        zc, xc, ac = z[sl], x[sl], ac_all[sl]
        logits, dcap = _logits_into(bufs, hc, W, bias_f, R_rows, softcap, fdtype)
        logits[:, mask_id] = -math.inf
        lx, lz = logits.gather(1, xc[:, None])[:, 0], logits.gather(1, zc[:, None])[:, 0]
        # log-sum-exp in place (torch.logsumexp would allocate a [chunk, V] temporary)
        m = logits.amax(-1)
        p = logits.sub_(m[:, None]).exp_()
        s = p.sum(-1)
        p.div_(s[:, None])  # logits become p
        lse = m + s.log()
        logp_x, logp_z = lx - lse, lz - lse
        if k > 0:
            Rv = _vocab_R(bufs, p, c_all[sl], fdtype)
        else:
            Rv = torch.zeros_like(lse)

        with torch.enable_grad():
            leaves = [t.detach().requires_grad_(any_grad) for t in (logp_x, logp_z, Rv)]
            h = token_terms(*leaves, zc == xc, zc == mask_id, ac, k=k, V=V)
            if any_grad:
                gs = torch.autograd.grad((h * w[sl].to(fdtype)).sum(), leaves, allow_unused=True)
                g_x, g_z, g_R = (torch.zeros_like(lse) if g is None else g for g in gs)
        h_out[sl] = h.detach()
        if not any_grad:
            continue

        coef = g_x + g_z
        if k > 0:
            coef = coef + g_R * _vocab_Q(bufs, p, c_all[sl], fdtype)
        if saved is not None:
            for name, v in (("lse", lse), ("coef", coef), ("g_x", g_x), ("g_z", g_z), ("g_R", g_R)):
                saved[name][sl] = v
        ar = torch.arange(r, device=hidden.device)
        dl = _finish_dlogits(
            bufs, p, None if k == 0 else c_all[sl], coef, g_R, [(ar, xc, g_x), (ar, zc, g_z)], mask_id, dcap, fdtype
        )
        dlc = dl
        if cdtype != fdtype:
            dlc = bufs.get("low", cdtype, r)
            dlc.copy_(dl)
        if g_hidden is not None:
            gh = dlc @ W
            if R_rows is not None:  # the overridden rows' contribution instead of the base rows'
                gh += dlc[:, R_rows[0]] @ (R_rows[1] - W[R_rows[0]])
            g_hidden[sl] = gh.to(hidden.dtype)
        if g_weight is not None:
            g_weight.addmm_(dlc.T, hc)  # accumulate in place: no [V, H] temporary per chunk
        if g_bias is not None:
            g_bias += dl.sum(0)
        if g_rows is not None:
            g_rows += (dlc[:, R_rows[0]].T @ hc).to(fdtype)
    del bufs  # the token pass's buffers go before the vocabulary pass makes its own
    if w_by_blocks and N:
        g_weight = _weight_grad_by_blocks(
            hidden.to(cdtype),
            W,
            bias_f,
            R_rows,
            z,
            x,
            c_all,
            saved,
            k=k,
            mask_id=mask_id,
            softcap=softcap,
            chunk_mib=chunk_mib,
        )
    elif w_by_blocks:
        g_weight = torch.zeros_like(weight)
    if g_weight is not None and rows is not None:
        g_weight[rows[0]] = 0.0  # those rows of the base are replaced: the base row gets no gradient
    return h_out, (g_hidden, g_weight, g_bias, g_rows)


def _weight_grad_by_vocab_blocks(cdtype: torch.dtype, fdtype: torch.dtype) -> bool:
    """Whether a trainable head's gradient takes the second pass: when its matmuls run in a lower
    precision than the math (a float32 accumulator would be an extra 2x [V, H])."""
    return cdtype != fdtype


def _weight_grad_by_blocks(hidden, W, bias_f, rows, z, x, c_all, saved, *, k, mask_id, softcap, chunk_mib):
    """grad_weight [V, H] in W's dtype, one vocabulary block at a time: the block's logits for all
    N tokens are recomputed from the saved per-token lse and coefficients, then one matmul."""
    N = hidden.shape[0]
    V = W.shape[0]
    fdtype = saved["lse"].dtype
    block = max(1, int(chunk_mib * 2**20) // (4 * N))
    bufs = _Buffers(N, min(block, V), hidden.device)
    g_weight = torch.empty_like(W)
    lse, coef, g_R = saved["lse"], saved["coef"], saved["g_R"]
    for v0 in range(0, V, block):
        v1 = min(v0 + block, V)
        logits, dcap = _logits_into(
            bufs, hidden, W[v0:v1], None if bias_f is None else bias_f[v0:v1], rows, softcap, fdtype, col0=v0
        )
        p = logits.sub_(lse[:, None]).exp_()
        mask_col = mask_id - v0 if v0 <= mask_id < v1 else None
        if mask_col is not None:
            p[:, mask_col] = 0.0
        onehots = []
        for ids, g in ((x, saved["g_x"]), (z, saved["g_z"])):
            sel = ((ids >= v0) & (ids < v1)).nonzero()[:, 0]
            onehots.append((sel, ids[sel] - v0, g[sel]))
        dl = _finish_dlogits(bufs, p, c_all, coef, g_R, onehots, mask_col, dcap, fdtype)
        dlc = bufs.get("low", W.dtype, N, v1 - v0)
        dlc.copy_(dl)
        torch.mm(dlc.T, hidden, out=g_weight[v0:v1])
    return g_weight


class _FusedXDLM(torch.autograd.Function):
    """h for the loss rows; ``run`` is the pass (torch: _chunked_pass, or the Triton one) that
    returns h and the gradients for the objective sum_i w_i h_i, all formed during forward."""

    @staticmethod
    def forward(ctx, run, kw, hidden, weight, bias, row_ids, row_values, z, x, a, w):
        need = tuple(ctx.needs_input_grad[i] for i in (2, 3, 4, 6))  # all False under no_grad
        rows = None if row_ids is None else (row_ids, row_values)
        h, grads = run(hidden, weight, bias, rows, z, x, a, w, need=need, **kw)
        ctx.run, ctx.kw, ctx.need = run, kw, need
        ctx.save_for_backward(hidden, weight, bias, row_ids, row_values, z, x, a, w)
        # Kept as a plain attribute, not a saved tensor: backward hands the buffers to autograd as
        # the only reference, so a fresh .grad is the buffer itself, not a copy.
        ctx.grads = list(grads)
        return h

    @staticmethod
    def backward(ctx, grad_h):
        hidden, weight, bias, row_ids, row_values, z, x, a, w = ctx.saved_tensors
        grads, ctx.grads = ctx.grads, None
        grad_h = grad_h.to(w.dtype)
        # Precomputed grads are for sum_i w_i h_i: reuse them when grad_h = c * w.
        ww = (w * w).sum()
        c = (grad_h * w).sum() / ww if ww > 0 else grad_h.new_zeros(())
        scale = grad_h.abs().max() if grad_h.numel() else grad_h.new_zeros(())
        if grad_h.numel() == 0 or bool((grad_h - c * w).abs().max() <= 1e-6 * scale):
            grads = [None if g is None else g.mul_(c.to(g.dtype)) for g in grads]  # our own buffers
        else:  # an unusual upstream gradient: redo the pass with it as the weight
            grads = None
            rows = None if row_ids is None else (row_ids, row_values)
            _, grads = ctx.run(hidden, weight, bias, rows, z, x, a, grad_h, need=ctx.need, **ctx.kw)
            grads = list(grads)
        g_hidden, g_weight, g_bias, g_rows = grads
        if g_hidden is not None and g_hidden.dtype != hidden.dtype:
            g_hidden = g_hidden.to(hidden.dtype)
        if g_weight is not None and g_weight.dtype != weight.dtype:
            g_weight = g_weight.to(weight.dtype)
        if g_bias is not None:
            g_bias = g_bias.to(bias.dtype)
        if g_rows is not None:
            g_rows = g_rows.to(row_values.dtype)
        return None, None, g_hidden, g_weight, g_bias, None, g_rows, None, None, None, None


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
    chunk_mib: float | None = None,
    bias: torch.Tensor | None = None,
    logit_softcap: float | None = None,
    token_weight: torch.Tensor | None = None,
    weight_rows: tuple[torch.Tensor, torch.Tensor] | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Per-token h: [B, L] from final hidden states [B, L, H] and the output projection [V, H].

    Same values and gradients as ``xdlm_loss(hidden @ W.T + bias, ...)`` without materialising
    the logits. ``loss_mask`` [B, L] (bool / 0-1): tokens outside get h = 0 and cost nothing.
    ``logit_softcap``: logits = cap * tanh(logits / cap) (Gemma 2). ``token_weight`` ([B] or
    [B, L]): the weights the caller will put on h (e.g. schedule.neg_dalpha_dt(t)); a correct
    gradient is returned for any use of h, this only makes the common case single-pass.
    ``chunk_mib``: memory budget per [chunk, V] float32 buffer (default 64 MiB); ``chunk_size``
    (tokens per chunk) overrides it. ``weight_rows`` = (ids [n], rows [n, H]): the head's rows at
    ``ids`` are ``rows`` instead (PEFT trainable tokens); they get an [n, H] gradient while a frozen
    ``lm_head_weight`` gets none. ``backend``: "torch", "triton" (CUDA) or "auto" (Triton on CUDA
    when installed, else torch).
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
    if chunk_mib is not None and not chunk_mib > 0:
        raise ValueError(f"chunk_mib must be > 0 (MiB per [chunk, V] buffer) or None, got {chunk_mib!r}")
    chunk_mib = DEFAULT_CHUNK_MIB if chunk_mib is None else float(chunk_mib)
    if chunk_size is None:
        chunk_size = default_chunk_size(V, chunk_mib)
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int (tokens per chunk), got {chunk_size!r}")
    row_ids = row_values = None
    if weight_rows is not None:
        row_ids, row_values = weight_rows
        row_ids = torch.as_tensor(row_ids, device=hidden.device).long().reshape(-1)
        if row_values.dim() != 2 or tuple(row_values.shape) != (row_ids.numel(), H):
            raise ValueError(
                f"weight_rows must be (ids [n], rows [n, H={H}]), got rows of shape {tuple(row_values.shape)}"
            )
        if row_ids.numel() and not (0 <= int(row_ids.min()) and int(row_ids.max()) < V):
            raise ValueError(f"weight_rows ids must lie in [0, {V}), got {row_ids.tolist()}")
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
    fdtype = (
        torch.float64 if torch.promote_types(hidden.dtype, lm_head_weight.dtype) == torch.float64 else torch.float32
    )
    sel = lambda t: t.reshape(B * L, *t.shape[2:])[rows]  # noqa: E731
    args = (
        sel(hidden),
        lm_head_weight,
        bias,
        row_ids,
        row_values,
        sel(z_t).long(),
        sel(x0).long(),
        sel(a).to(fdtype),
        sel(token_weight).to(fdtype),
    )
    kw = dict(k=k, mask_id=mask_id, softcap=logit_softcap)
    if _use_triton(backend, hidden, row_ids, mask_id):
        from .fused_loss_triton import triton_pass

        h_rows = _FusedXDLM.apply(triton_pass, kw, *args)
    else:
        h_rows = _FusedXDLM.apply(_chunked_pass, dict(kw, chunk=chunk_size, chunk_mib=chunk_mib), *args)
    h = torch.zeros(B * L, dtype=fdtype, device=hidden.device)
    return h.index_put((rows,), h_rows).view(B, L)


def _use_triton(backend: str, hidden: torch.Tensor, row_ids: torch.Tensor | None, mask_id: int) -> bool:
    """backend "auto": Triton on CUDA when installed; "triton": Triton or a clear error."""
    if backend not in ("auto", "torch", "triton"):
        raise ValueError(f"backend must be 'auto', 'torch' or 'triton', got {backend!r}")
    if backend == "torch":
        return False
    from .fused_loss_triton import triton_available

    ok, why = triton_available(hidden, explicit=backend == "triton")
    if ok and row_ids is not None and bool((row_ids != mask_id).any()):
        ok, why = (
            False,
            "the Triton kernel takes weight_rows only for the mask row (LoRA's); others need the torch path",
        )
    if backend == "triton" and not ok:
        raise RuntimeError(f"backend='triton' is not usable here: {why}; use backend='torch'")
    return ok
