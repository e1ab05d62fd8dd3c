"""Forward corruption q(z_t | x) = alpha_t [z_t == x] + (1 - alpha_t) pi(z_t)  (XDLM.md, "Forward")."""

from __future__ import annotations

import torch

from ._checks import as_alpha, check_ids, check_k, check_mask_id


def stationary(vocab_size: int, k: float, mask_id: int, *, dtype=torch.float32, device=None) -> torch.Tensor:
    """The stationary law pi: [V], pi(e) = k / V + (1 - k) [e == m]."""
    pi = torch.full((vocab_size,), k / vocab_size, dtype=dtype, device=device)
    pi[mask_id] += 1.0 - k
    return pi


def forward_noise(
    x0: torch.Tensor,
    alpha_t: torch.Tensor | float,
    *,
    k: float,
    mask_id: int,
    vocab_size: int,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Corrupt clean ids x0: [B, L] into z_t: [B, L] (long).

    Each token independently stays x with probability alpha_t; otherwise it becomes a uniform id
    over all V ids (mask included) with probability k, else the mask id.
    """
    k = check_k(k)
    check_mask_id(mask_id, vocab_size)
    if x0.dim() != 2:
        raise ValueError(f"x0 must be [B, L] token ids, got shape {tuple(x0.shape)}")
    check_ids("x0", x0, tuple(x0.shape))
    alpha = as_alpha("alpha_t", alpha_t, x0.shape[0]).to(x0.device, torch.float32)
    device = x0.device
    keep = torch.rand(x0.shape, generator=generator, device=device) < alpha
    uniform = torch.rand(x0.shape, generator=generator, device=device) < k
    random_ids = torch.randint(0, vocab_size, x0.shape, generator=generator, device=device)
    noise = torch.where(uniform, random_ids, torch.full_like(x0, mask_id))
    return torch.where(keep, x0.long(), noise.long())
