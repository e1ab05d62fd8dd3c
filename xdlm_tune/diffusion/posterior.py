"""The model's reverse step p_theta(z_s | z_t) (XDLM.md, "Reverse step"), mean parameterisation."""

from __future__ import annotations

import torch

from ._checks import as_alpha, check_logits, without_mask


def reverse_posterior(
    logits: torch.Tensor,
    z_t: torch.Tensor,
    alpha_t: torch.Tensor | float,
    alpha_s: torch.Tensor | float,
    *,
    k: float,
    mask_id: int,
) -> torch.Tensor:
    """probs: [B, L, V] of z_s given z_t: [B, L], from logits: [B, L, V] and alpha_s >= alpha_t.

        p(z_s = e | z_t) ∝ f_s(p, e) (a_ts [z_t == e] + (1 - a_ts) pi(z_t)),
        f_s(p, e) = alpha_s p(e) + (1 - alpha_s) pi(e),  a_ts = alpha_t / alpha_s,
        pi(e) = k / V + (1 - k) [e == m].

    O(V) per position. alpha_s may be 1 (the final, clean step). Float32 (float64 for float64 logits).
    """
    B, L, V, k, dtype = check_logits(logits, z_t, k, mask_id)
    a_t = as_alpha("alpha_t", alpha_t, B).to(logits.device, dtype)[..., None]  # [B, 1, 1]
    a_s = as_alpha("alpha_s", alpha_s, B, allow_one=True).to(logits.device, dtype)[..., None]
    if bool((a_s < a_t).any()):
        raise ValueError("alpha_s must be >= alpha_t (s is the earlier, cleaner time): swap the arguments")

    p = torch.softmax(without_mask(logits, mask_id, dtype), dim=-1)
    # f_s(p, e): keep the prediction with prob alpha_s, else draw from pi.
    f_s = a_s * p + (1.0 - a_s) * (k / V)
    f_s[..., mask_id] += (1.0 - a_s[..., 0]) * (1.0 - k)
    # Likelihood of the observed z_t given z_s = e: a_ts [z_t == e] + (1 - a_ts) pi(z_t).
    a_ts = a_t / a_s
    pi_zt = k / V + (1.0 - k) * (z_t == mask_id).to(dtype)  # [B, L]
    like = ((1.0 - a_ts) * pi_zt[..., None]).expand(B, L, V).clone()
    like.scatter_add_(-1, z_t.long()[..., None], a_ts.expand(B, L, 1).contiguous())
    probs = f_s * like
    Z = probs.sum(-1, keepdim=True)
    # Z underflows to 0 only when k = 0, z_t is not the mask and p(z_t) underflows: then the
    # likelihood alone is one-hot at z_t, which is the exact answer.
    return torch.where(Z > 0, probs / Z.clamp_min(torch.finfo(dtype).tiny), like / like.sum(-1, keepdim=True))
