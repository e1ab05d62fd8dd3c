"""Triton backend of fused_xdlm_loss: tiles of tokens x vocabulary, the [N, V] logits never in
global memory (the approach of Cut Cross-Entropy, plus XDLM's one extra vocabulary reduction).

Three kernels over a 2-D grid of (token block, vocabulary block) tiles. Each recomputes its tile's
logits from hidden [N, H] and the head [V, H] (a loop over H with tl.dot, float32 accumulation;
float64 inputs stay float64), adds the bias, soft-caps, and sets the mask column to -inf:

1. ``_stats``: per tile, the max and the sum of exp(logit - max) (an online log-sum-exp whose
   [N, V / BV] partials torch combines), and the logits at x and z.
2. ``_reduce`` (k > 0): per tile, partial sums of log1p(c p) (R) and q = c p / (1 + c p) (Q).
   R needs the global log-sum-exp first and log1p does not rescale the way exp does, so this is
   a second pass over the vocabulary rather than a rescaling trick.
3. ``_grad``: per tile, dh/dlogits in closed form from per-token coefficients (see fused_loss.py),
   then grad_hidden += dl @ W_tile and grad_weight += dl^T @ hidden_tile (grad_bias += sum dl) by
   float32 atomic adds.

The per-token algebra (``token_terms``) and its partial derivatives stay in torch on [N] tensors.
Memory: [N, V / BV] partials and [N] vectors; a trainable head adds a float32 [V, H] accumulator.
Block sizes are untuned. Correctness is tested on CPU under TRITON_INTERPRET=1 against the torch
path; speed and memory on a GPU are measured only by benchmarks/gpu_check.sh.
"""

from __future__ import annotations

import os

import torch

from .loss import token_terms

try:
    import triton
    import triton.language as tl
except ImportError:  # optional: pip install 'xdlm-tune[triton]'
    triton = tl = None


def triton_available(hidden: torch.Tensor, *, explicit: bool = False) -> tuple[bool, str]:
    """(usable, why not). Automatic choice: CUDA tensors only. Explicit: CPU too under TRITON_INTERPRET=1."""
    if triton is None:
        return False, "triton is not installed (pip install 'xdlm-tune[triton]')"
    if hidden.is_cuda and not _INTERPRET:
        return True, ""
    if explicit and _INTERPRET:
        return True, ""
    return False, (
        f"hidden is on {hidden.device.type}, not CUDA (TRITON_INTERPRET=1, set before import, "
        "runs the kernel on the CPU)"
    )


_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"

if triton is not None:

    @triton.jit
    def _mm(a, b, acc, IEEE: tl.constexpr, UPCAST: tl.constexpr, ACC: tl.constexpr):
        """acc + a @ b. UPCAST (interpreter, 16-bit inputs): its bf16 tl.dot is wrong (triton 3.9), so
        the already-rounded operands are multiplied in float32 there; compiled kernels use tl.dot."""
        if UPCAST:
            a = a.to(tl.float32)
            b = b.to(tl.float32)
        if IEEE or UPCAST:
            return tl.dot(a, b, acc, input_precision="ieee", out_dtype=ACC)
        return tl.dot(a, b, acc, out_dtype=ACC)

    @triton.jit
    def _tile_logits(
        hid,
        w,
        bias,
        offs_n,
        offs_v,
        N,
        V,
        H,
        mask_id,
        softcap,
        HAS_BIAS: tl.constexpr,
        HAS_CAP: tl.constexpr,
        IEEE: tl.constexpr,
        UPCAST: tl.constexpr,
        ACC: tl.constexpr,
        BN: tl.constexpr,
        BV: tl.constexpr,
        BH: tl.constexpr,
    ):
        """logits [BN, BV] of one tile (ACC dtype) and d(softcap)/dlogit (1 without softcap)."""
        acc = tl.zeros((BN, BV), dtype=ACC)
        rn = offs_n.to(tl.int64)[:, None] * H
        rv = offs_v.to(tl.int64)[:, None] * H
        for h0 in range(0, H, BH):
            offs_h = h0 + tl.arange(0, BH)
            a = tl.load(hid + rn + offs_h[None, :], mask=(offs_n[:, None] < N) & (offs_h[None, :] < H), other=0.0)
            b = tl.load(w + rv + offs_h[None, :], mask=(offs_v[:, None] < V) & (offs_h[None, :] < H), other=0.0)
            acc = _mm(a, tl.trans(b), acc, IEEE, UPCAST, ACC)
        if HAS_BIAS:
            acc += tl.load(bias + offs_v, mask=offs_v < V, other=0.0).to(ACC)[None, :]
        dcap = tl.full((BN, BV), 1.0, ACC)
        if HAS_CAP:
            e = tl.exp(2.0 * acc / softcap)  # tanh(y) = 1 - 2 / (exp(2 y) + 1): inf -> 1, 0 -> -1
            t = 1.0 - 2.0 / (e + 1.0)
            acc = softcap * t
            dcap = 1.0 - t * t
        bad = (offs_v[None, :] == mask_id) | (offs_v[None, :] >= V)
        return tl.where(bad, float("-inf"), acc), dcap

    @triton.jit
    def _log1p(u):
        """log(1 + u) without losing small u (Goldberg's trick; tl has no log1p everywhere)."""
        w = 1.0 + u
        d = tl.where(w == 1.0, 1.0, w - 1.0)
        return tl.where(w == 1.0, u, tl.log(w) * (u / d))

    @triton.jit
    def _stats(
        hid,
        w,
        bias,
        x_ids,
        z_ids,
        part_max,
        part_sum,
        out_lx,
        out_lz,
        N,
        V,
        H,
        NVB,
        mask_id,
        softcap,
        HAS_BIAS: tl.constexpr,
        HAS_CAP: tl.constexpr,
        IEEE: tl.constexpr,
        UPCAST: tl.constexpr,
        ACC: tl.constexpr,
        BN: tl.constexpr,
        BV: tl.constexpr,
        BH: tl.constexpr,
    ):
        pid_n, pid_v = tl.program_id(0), tl.program_id(1)
        offs_n = pid_n * BN + tl.arange(0, BN)
        offs_v = pid_v * BV + tl.arange(0, BV)
        logits, dcap = _tile_logits(
            hid, w, bias, offs_n, offs_v, N, V, H, mask_id, softcap, HAS_BIAS, HAS_CAP, IEEE, UPCAST, ACC, BN, BV, BH
        )
        m = tl.max(logits, axis=1)
        m_safe = tl.where(m == float("-inf"), 0.0, m)
        s = tl.sum(tl.exp(logits - m_safe[:, None]), axis=1)
        row = offs_n < N
        tl.store(part_max + offs_n.to(tl.int64) * NVB + pid_v, m, mask=row)
        tl.store(part_sum + offs_n.to(tl.int64) * NVB + pid_v, s, mask=row)
        v0 = pid_v * BV
        xs = tl.load(x_ids + offs_n, mask=row, other=-1)
        zs = tl.load(z_ids + offs_n, mask=row, other=-1)
        lx = tl.sum(tl.where(offs_v[None, :] == xs[:, None], logits, 0.0), axis=1)
        lz = tl.sum(tl.where(offs_v[None, :] == zs[:, None], logits, 0.0), axis=1)
        tl.store(out_lx + offs_n, lx, mask=row & (xs >= v0) & (xs < v0 + BV))
        tl.store(out_lz + offs_n, lz, mask=row & (zs >= v0) & (zs < v0 + BV))

    @triton.jit
    def _reduce(
        hid,
        w,
        bias,
        lse_p,
        c_p,
        part_R,
        part_Q,
        N,
        V,
        H,
        NVB,
        mask_id,
        softcap,
        HAS_BIAS: tl.constexpr,
        HAS_CAP: tl.constexpr,
        IEEE: tl.constexpr,
        UPCAST: tl.constexpr,
        ACC: tl.constexpr,
        BN: tl.constexpr,
        BV: tl.constexpr,
        BH: tl.constexpr,
    ):
        pid_n, pid_v = tl.program_id(0), tl.program_id(1)
        offs_n = pid_n * BN + tl.arange(0, BN)
        offs_v = pid_v * BV + tl.arange(0, BV)
        logits, dcap = _tile_logits(
            hid, w, bias, offs_n, offs_v, N, V, H, mask_id, softcap, HAS_BIAS, HAS_CAP, IEEE, UPCAST, ACC, BN, BV, BH
        )
        row = offs_n < N
        lse = tl.load(lse_p + offs_n, mask=row, other=0.0)
        c = tl.load(c_p + offs_n, mask=row, other=0.0)
        u = c[:, None] * tl.exp(logits - lse[:, None])  # c p; 0 at the mask column and past V
        tl.store(part_R + offs_n.to(tl.int64) * NVB + pid_v, tl.sum(_log1p(u), axis=1), mask=row)
        tl.store(part_Q + offs_n.to(tl.int64) * NVB + pid_v, tl.sum(u / (1.0 + u), axis=1), mask=row)

    @triton.jit
    def _grad(
        hid,
        w,
        bias,
        x_ids,
        z_ids,
        lse_p,
        c_p,
        coef_p,
        gR_p,
        gx_p,
        gz_p,
        g_hid,
        g_w,
        g_b,
        N,
        V,
        H,
        mask_id,
        softcap,
        K_POS: tl.constexpr,
        NEED_W: tl.constexpr,
        NEED_B: tl.constexpr,
        HAS_BIAS: tl.constexpr,
        HAS_CAP: tl.constexpr,
        IEEE: tl.constexpr,
        UPCAST: tl.constexpr,
        ACC: tl.constexpr,
        BN: tl.constexpr,
        BV: tl.constexpr,
        BH: tl.constexpr,
    ):
        pid_n, pid_v = tl.program_id(0), tl.program_id(1)
        offs_n = pid_n * BN + tl.arange(0, BN)
        offs_v = pid_v * BV + tl.arange(0, BV)
        logits, dcap = _tile_logits(
            hid, w, bias, offs_n, offs_v, N, V, H, mask_id, softcap, HAS_BIAS, HAS_CAP, IEEE, UPCAST, ACC, BN, BV, BH
        )
        row = offs_n < N
        lse = tl.load(lse_p + offs_n, mask=row, other=0.0)
        coef = tl.load(coef_p + offs_n, mask=row, other=0.0)
        p = tl.exp(logits - lse[:, None])
        dl = -coef[:, None] * p
        if K_POS:
            c = tl.load(c_p + offs_n, mask=row, other=0.0)
            g_R = tl.load(gR_p + offs_n, mask=row, other=0.0)
            u = c[:, None] * p
            dl += g_R[:, None] * (u / (1.0 + u))
        xs = tl.load(x_ids + offs_n, mask=row, other=-1)
        zs = tl.load(z_ids + offs_n, mask=row, other=-1)
        g_x = tl.load(gx_p + offs_n, mask=row, other=0.0)
        g_z = tl.load(gz_p + offs_n, mask=row, other=0.0)
        dl += tl.where(offs_v[None, :] == xs[:, None], g_x[:, None], 0.0)
        dl += tl.where(offs_v[None, :] == zs[:, None], g_z[:, None], 0.0)
        keep = row[:, None] & (offs_v[None, :] < V) & (offs_v[None, :] != mask_id)
        dl = tl.where(keep, dl * dcap, 0.0)
        if NEED_B:
            tl.atomic_add(g_b + offs_v, tl.sum(dl, axis=0).to(ACC), mask=offs_v < V)
        dlc = dl.to(w.dtype.element_ty)
        rn = offs_n.to(tl.int64)[:, None] * H
        rv = offs_v.to(tl.int64)[:, None] * H
        for h0 in range(0, H, BH):
            offs_h = h0 + tl.arange(0, BH)
            hmask = offs_h[None, :] < H
            wb = tl.load(w + rv + offs_h[None, :], mask=(offs_v[:, None] < V) & hmask, other=0.0)
            gh = _mm(dlc, wb, tl.zeros((BN, BH), dtype=ACC), IEEE, UPCAST, ACC)
            tl.atomic_add(g_hid + rn + offs_h[None, :], gh, mask=row[:, None] & hmask)
            if NEED_W:
                hb = tl.load(hid + rn + offs_h[None, :], mask=row[:, None] & hmask, other=0.0)
                gw = _mm(tl.trans(dlc), hb, tl.zeros((BV, BH), dtype=ACC), IEEE, UPCAST, ACC)
                tl.atomic_add(g_w + rv + offs_h[None, :], gw, mask=(offs_v[:, None] < V) & hmask)


def _blocks(device: torch.device) -> tuple[int, int, int]:
    """(BN, BV, BH): small tiles under the interpreter (it runs every program in Python)."""
    return (16, 16, 16) if _INTERPRET else (64, 128, 64)


def triton_pass(hidden, weight, bias, rows, z, x, a, w, *, k, mask_id, softcap, need):
    """The Triton counterpart of fused_loss._chunked_pass: h [N] and the gradients in ``need``
    (hidden, weight, bias, rows) for the objective sum_i w_i h_i. ``rows`` may only replace the
    mask row, whose logit is excluded anyway: its gradient is 0."""
    N, H = hidden.shape
    V = weight.shape[0]
    cdtype = torch.promote_types(hidden.dtype, weight.dtype)
    fdtype = torch.float64 if cdtype == torch.float64 else torch.float32
    dev = hidden.device
    hid, W = hidden.to(cdtype).contiguous(), weight.to(cdtype).contiguous()
    b = None if bias is None else bias.to(fdtype).contiguous()
    BN, BV, BH = _blocks(dev)
    nvb = triton.cdiv(V, BV)
    grid = (triton.cdiv(N, BN), nvb)
    acc = tl.float64 if fdtype == torch.float64 else tl.float32
    ieee = cdtype in (torch.float32, torch.float64)
    common = dict(
        HAS_BIAS=b is not None,
        HAS_CAP=softcap is not None,
        IEEE=ieee,
        UPCAST=_INTERPRET and not ieee,
        ACC=acc,
        BN=BN,
        BV=BV,
        BH=BH,
    )
    cap = 1.0 if softcap is None else float(softcap)
    dummy = torch.zeros(1, dtype=fdtype, device=dev)
    bias_arg = dummy if b is None else b

    h_out = torch.zeros(N, dtype=fdtype, device=dev)
    zero_grads = lambda: (  # noqa: E731
        torch.zeros_like(hidden) if need[0] else None,
        torch.zeros_like(weight) if need[1] else None,
        torch.zeros_like(bias) if need[2] else None,
        torch.zeros_like(rows[1]) if need[3] else None,
    )
    if N == 0:
        return h_out, zero_grads()

    part_max = torch.empty(N, nvb, dtype=fdtype, device=dev)
    part_sum = torch.empty(N, nvb, dtype=fdtype, device=dev)
    lx = torch.empty(N, dtype=fdtype, device=dev)
    lz = torch.empty(N, dtype=fdtype, device=dev)
    _stats[grid](hid, W, bias_arg, x, z, part_max, part_sum, lx, lz, N, V, H, nvb, mask_id, cap, **common)
    m = part_max.amax(1)
    m = torch.where(torch.isinf(m), torch.zeros_like(m), m)
    lse = m + (part_sum * torch.exp(part_max - m[:, None])).sum(1).log()
    del part_max, part_sum
    af = a.to(fdtype)
    c = (af * V / ((1.0 - af) * k)).contiguous() if k > 0 else None
    Q = None
    if k > 0:
        part_R = torch.empty(N, nvb, dtype=fdtype, device=dev)
        part_Q = torch.empty(N, nvb, dtype=fdtype, device=dev)
        _reduce[grid](hid, W, bias_arg, lse, c, part_R, part_Q, N, V, H, nvb, mask_id, cap, **common)
        R, Q = part_R.sum(1), part_Q.sum(1)
        del part_R, part_Q
    else:
        R = torch.zeros_like(lse)

    any_grad = any(need)
    with torch.enable_grad():
        leaves = [t.detach().requires_grad_(any_grad) for t in (lx - lse, lz - lse, R)]
        h = token_terms(*leaves, z == x, z == mask_id, af, k=k, V=V)
        if any_grad:
            gs = torch.autograd.grad((h * w.to(fdtype)).sum(), leaves, allow_unused=True)
            g_x, g_z, g_R = (torch.zeros_like(lse) if g is None else g.contiguous() for g in gs)
    h_out = h.detach()
    if not any_grad:
        return h_out, (None, None, None, None)

    coef = (g_x + g_z + (g_R * Q if k > 0 else 0.0)).contiguous()
    g_hid = torch.zeros(N, H, dtype=fdtype, device=dev)
    g_w = torch.zeros(V, H, dtype=fdtype, device=dev) if need[1] else dummy
    g_b = torch.zeros(V, dtype=fdtype, device=dev) if need[2] else dummy
    _grad[grid](
        hid,
        W,
        bias_arg,
        x,
        z,
        lse,
        dummy if c is None else c,
        coef,
        g_R,
        g_x,
        g_z,
        g_hid,
        g_w,
        g_b,
        N,
        V,
        H,
        mask_id,
        cap,
        K_POS=k > 0,
        NEED_W=bool(need[1]),
        NEED_B=bool(need[2]),
        **common,
    )
    g_hidden = g_hid.to(hidden.dtype) if need[0] else None
    g_weight = g_w if need[1] else None
    if g_weight is not None and rows is not None:
        g_weight[rows[0]] = 0.0  # replaced rows: the base row gets no gradient
    g_rows = torch.zeros(rows[1].shape, dtype=fdtype, device=dev) if need[3] else None
    return h_out, (g_hidden, g_weight, g_b if need[2] else None, g_rows)
