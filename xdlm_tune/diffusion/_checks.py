"""Argument checks shared by the diffusion core: clear errors that name the argument and the fix."""

from __future__ import annotations

import torch


def check_k(k: float) -> float:
    k = float(k)
    if not 0.0 <= k <= 1.0:
        raise ValueError(f"k={k} is outside [0, 1]: use k=0 for MDLM, k=1 for UDLM, 0<k<1 for XDLM (paper default 0.1)")
    return k


def check_mask_id(mask_id: int, vocab_size: int) -> int:
    if isinstance(mask_id, bool) or not isinstance(mask_id, int):
        raise TypeError(f"mask_id must be an int, got {type(mask_id).__name__}")
    if not 0 <= mask_id < vocab_size:
        raise ValueError(
            f"mask_id={mask_id} is outside the vocabulary [0, {vocab_size}): pass the id of the mask "
            "token in the model's output layer (resize the embeddings if you added one)"
        )
    return mask_id


def check_ids(name: str, ids: torch.Tensor, shape: tuple[int, ...]) -> None:
    if ids.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"{name} must hold token ids (int64), got dtype {ids.dtype}")
    if tuple(ids.shape) != tuple(shape):
        raise ValueError(
            f"{name} has shape {tuple(ids.shape)}, expected {tuple(shape)} ([B, L], like the other inputs)"
        )


def check_float(name: str, x: torch.Tensor) -> None:
    if not torch.is_floating_point(x):
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")


def as_alpha(name: str, alpha: torch.Tensor | float, batch: int, *, allow_one: bool = False) -> torch.Tensor:
    """Return alpha as [B, 1] after checking it lies in (0, 1) (or (0, 1] with allow_one)."""
    alpha = torch.as_tensor(alpha)
    check_float(name, alpha)
    if alpha.dim() == 0:
        alpha = alpha.expand(batch)
    if alpha.dim() == 2 and alpha.shape[1] == 1:
        alpha = alpha[:, 0]
    if alpha.dim() != 1 or alpha.shape[0] != batch:
        raise ValueError(f"{name} has shape {tuple(alpha.shape)}, expected [B] or [B, 1] with B={batch}")
    lo, hi = float(alpha.min()), float(alpha.max())
    if not (lo > 0.0 and (hi <= 1.0 if allow_one else hi < 1.0)):
        interval = "(0, 1]" if allow_one else "(0, 1)"
        raise ValueError(
            f"{name} must lie in {interval}, got values in [{lo:.6g}, {hi:.6g}]: sample t in [eps, 1] "
            "from a schedule with a floor, e.g. make_schedule('linear', eps=1e-3)"
        )
    return alpha[:, None]


def check_logits(
    logits: torch.Tensor, z_t: torch.Tensor, k: float, mask_id: int
) -> tuple[int, int, int, float, torch.dtype]:
    """Checks shared by the functions that take logits [B, L, V] and z_t [B, L].

    Returns (B, L, V, k, dtype): the math runs in float32, or float64 for float64 logits.
    """
    check_float("logits", logits)
    if logits.dim() != 3:
        raise ValueError(f"logits must be [B, L, V], got shape {tuple(logits.shape)}")
    B, L, V = logits.shape
    k = check_k(k)
    check_mask_id(mask_id, V)
    check_ids("z_t", z_t, (B, L))
    return B, L, V, k, torch.float64 if logits.dtype == torch.float64 else torch.float32


def without_mask(logits: torch.Tensor, mask_id: int, dtype: torch.dtype) -> torch.Tensor:
    """A copy of logits in ``dtype`` with the mask column at -inf: the model never predicts the mask."""
    logits = logits.to(dtype).clone()
    logits[..., mask_id] = -float("inf")
    return logits
