"""The XDLM bound on -log p(target | context) for a denoiser, by Monte Carlo (lm-eval's loglikelihood).

The context stays clean; only the target is noised (``diffusion.likelihood``). ``mc_num`` draws
in batches of ``batch_size`` rows (one model forward pass per batch, logits kept for the target
positions only); the generator is seeded afresh for every call, so a request's estimate does not
depend on which other requests ran before it or on which process ran it, and all requests of a
given target length see the same noise pattern (common random numbers, which makes the
comparison of the choices of a multiple-choice question less noisy).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from ..config.sampler import SamplerSettings
from ..diffusion import make_schedule
from ..diffusion.likelihood import bound_draws, bound_noise
from ..sampling import model_logits_fn


@dataclass(frozen=True)
class BoundSettings:
    """How the bound is estimated (lm-eval model_args of the same names)."""

    k: float = SamplerSettings.k
    mc_num: int = 128
    batch_size: int = 32
    schedule: str = SamplerSettings.schedule
    eps: float = SamplerSettings.eps
    seed: int = 1234


def output_size(model) -> int:
    """V, the model's output size (its output embedding's rows; mask id included)."""
    head = model.get_output_embeddings()
    if head is None:
        raise ValueError("the model has no output embedding to read its vocabulary size from")
    return head.weight.shape[0]


@torch.no_grad()
def nelbo_draws(
    model,
    context: Sequence[int],
    target: Sequence[int],
    *,
    mask_id: int,
    shift: bool,
    settings: BoundSettings,
    vocab_size: int | None = None,
) -> torch.Tensor:
    """[mc_num] float64 draws of the NELBO of ``target`` given ``context`` (nats); their mean is the estimate.

    ``context`` must be non-empty when ``shift`` is on (token i is predicted from position i - 1).
    """
    if not target:
        raise ValueError("the continuation encodes to no tokens: nothing to score")
    if shift and not context:
        raise ValueError("a shifted model needs at least one context token (prepend BOS/EOS)")
    if mask_id in context or mask_id in target:
        raise ValueError(f"the text encodes to the mask token id {mask_id}: it must be clean text")
    device = next(model.parameters()).device
    V = vocab_size or output_size(model)
    sched = make_schedule(settings.schedule, settings.eps)
    gen = torch.Generator(device=device).manual_seed(settings.seed)
    fn = model_logits_fn(model, shift=shift)
    ctx = torch.tensor(list(context), dtype=torch.long, device=device)
    x0_row = torch.tensor(list(target), dtype=torch.long, device=device)
    T = x0_row.numel()
    draws = []
    for start in range(0, settings.mc_num, settings.batch_size):
        B = min(settings.batch_size, settings.mc_num - start)
        x0 = x0_row.expand(B, T)
        z_t, alpha, weight = bound_noise(x0, k=settings.k, mask_id=mask_id, vocab_size=V, schedule=sched, generator=gen)
        ids = torch.cat([ctx.expand(B, ctx.numel()), z_t], 1)
        logits = fn(ids, None, T)  # [B, T, V]
        draws.append(
            bound_draws(logits, z_t, x0, alpha.to(device), weight.to(device), k=settings.k, mask_id=mask_id).double()
        )
    return torch.cat(draws)
