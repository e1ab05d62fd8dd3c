"""The rules one sampler step applies, as the authors' samplers define them: how many tokens a step
reveals (LLaDA's even share), the revision budget of xdlm (int(acc * k / (1 - k)) in float32), the
choice at a position (argmax or Gumbel-max, confidence untempered) and nucleus filtering (the exact
ancestral reverse step is generate.py's `_ancestral_step`). Tensors in, tensors out; generate.py runs them (and both are copied into
every export's modeling_xdlm.py).
"""

from __future__ import annotations

import math

import torch

ANCESTRAL_T_MIN = 1e-5


def top_p_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest set of ids whose probability reaches ``top_p`` (others -> -inf). [..., V]."""
    if top_p >= 1.0:
        return logits
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    cum = sorted_logits.softmax(-1).cumsum(-1)
    drop_sorted = (cum - sorted_logits.softmax(-1)) >= top_p  # mass before this id already >= top_p
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, -math.inf)


def _gumbel(shape, generator, device, dtype) -> torch.Tensor:
    tiny = torch.finfo(dtype).tiny
    u = torch.rand(shape, generator=generator, device=device, dtype=dtype).clamp_min(tiny)
    return -torch.log((-torch.log(u)).clamp_min(tiny))


def _rank_mask(score: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
    """[B, L] bool: the n[b] highest-scoring entries of each row (entries at -inf never chosen)."""
    order = score.argsort(dim=-1, descending=True, stable=True)
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(score.shape[1], device=score.device).expand_as(order))
    return (rank < n[:, None]) & torch.isfinite(score)


def _choices(logits, raw, region, temperature, generator):
    """[B, R] each: the choice at each position (argmax, or Gumbel-max at temperature > 0), its
    confidence and the probability of the current token, both from the untempered ``raw`` [B, R, V]."""
    if temperature > 0:  # Gumbel-max in float64 (as LLaDA), so rare ids are not lost to rounding
        pred = (logits.double() + _gumbel(logits.shape, generator, logits.device, torch.float64)).argmax(-1)
    else:
        pred = logits.argmax(-1)
    # Confidence is the model's own probability (untempered), as in LLaDA and the authors' code.
    probs = raw.softmax(-1)
    conf = probs.gather(-1, pred[..., None])[..., 0]
    current = probs.gather(-1, region[..., None])[..., 0]
    return pred, conf, current


def _reveal_schedule(n_masked: int, steps: int, device) -> torch.Tensor:
    """[S] tokens revealed per step: an even share of the block, the remainder first (LLaDA's rule)."""
    base, rem = divmod(n_masked, steps)
    return (torch.full((steps,), base, dtype=torch.long) + (torch.arange(steps) < rem).long()).to(device)


def _revision_quota(reveals: torch.Tensor, k: float) -> torch.Tensor:
    """[S] new revisions allowed per step in one block (the authors' per-block budget).

    With acc_i the block's scheduled reveals up to and including step i, the cumulative budget is
    int(acc_i * k / (1 - k)) computed in float32, forced to 0 at the block's first step.
    """
    acc = (reveals.cumsum(0).to(torch.float32) * k / (1 - k)).to(torch.long)
    acc[0] = 0
    return torch.cat([acc[:1], acc[1:] - acc[:-1]])
