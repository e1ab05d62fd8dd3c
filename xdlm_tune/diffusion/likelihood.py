"""Monte-Carlo draws of the XDLM bound on -log p(target | context) (XDLM.md, "Training loss").

The bound is the training objective restricted to the target tokens, with the context never
noised: NELBO = int_eps^1 (-d alpha/dt) E_{z_t ~ q(. | x)} [ sum_i h_i ] dt, in nats. One draw per
row of a batch, stratified over the batch; the mean of the rows estimates it.

* ``k > 0``: t ~ U[eps, 1] (antithetic over the batch), z_t from ``forward_noise``, h from
  ``xdlm_loss``; a draw is (1 - eps) (-d alpha/dt) sum_i h_i, so that its mean is the integral
  over t in [eps, 1] itself (U[eps, 1] has density 1 / (1 - eps)).
* ``k = 0`` (MDLM): LLaDA's estimator (``get_log_likelihood`` in its eval_llada.py). With
  h = -log p(x) / (1 - alpha) on masked tokens and alpha = 1 - t, integrating over t given the
  number l of masked targets gives the weight 1/l on each subset of size l, so
  NELBO = E_{l ~ U{1..T}} [ (T / l) sum_{masked} -log p(x) ]: l is drawn (stratified over the
  batch), exactly l of the T targets are masked, uniformly at random. This is the bound for
  eps -> 0 with no t noise left, hence lower variance; ``xdlm_loss`` at alpha = 1 - l / T gives
  the (T / l) -log p(x) terms.
"""

from __future__ import annotations

import torch

from .loss import xdlm_loss
from .noise import forward_noise
from .schedule import Schedule

# xdlm_loss needs alpha > 0; at l = T (all masked) alpha = 1 - l/T = 0. For k = 0 alpha only
# enters h through 1 / (1 - alpha), which this floor changes by less than float32 resolves.
_ALPHA_FLOOR = 1e-12


def bound_noise(
    x0: torch.Tensor,
    *,
    k: float,
    mask_id: int,
    vocab_size: int,
    schedule: Schedule,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One noise draw per row of clean targets x0: [B, T] -> (z_t [B, T], alpha [B], weight [B]).

    A draw of the bound is ``weight * sum_i h_i(z_t, x0, alpha)`` (see ``bound_draws``).
    """
    B, T = x0.shape
    if T < 1:
        raise ValueError("the target is empty: the bound needs at least one target token")
    device = x0.device
    if k == 0:
        # l = (offset + floor(i T / B)) mod T + 1: each row's l is uniform on 1..T, rows spread evenly.
        offset = torch.randint(0, T, (1,), generator=generator, device=device)
        n_masked = (offset + torch.arange(B, device=device) * T // B) % T + 1  # [B]
        rank = torch.rand(B, T, generator=generator, device=device).argsort(-1).argsort(-1)
        z_t = torch.where(rank < n_masked[:, None], torch.full_like(x0, mask_id), x0)
        alpha = (1.0 - n_masked.float() / T).clamp_min(_ALPHA_FLOOR)
        return z_t, alpha, torch.ones(B, device=device)
    t = schedule.sample_t(B, antithetic=True, generator=generator, device=device).to(device)
    alpha = schedule.alpha(t)
    z_t = forward_noise(x0, alpha, k=k, mask_id=mask_id, vocab_size=vocab_size, generator=generator)
    return z_t, alpha, (1.0 - schedule.eps) * schedule.neg_dalpha_dt(t)


def bound_draws(
    logits: torch.Tensor,
    z_t: torch.Tensor,
    x0: torch.Tensor,
    alpha: torch.Tensor,
    weight: torch.Tensor,
    *,
    k: float,
    mask_id: int,
) -> torch.Tensor:
    """[B] draws of the NELBO (nats) from the target positions' logits [B, T, V] (mask column ignored)."""
    h = xdlm_loss(logits, z_t, x0, alpha, k=k, mask_id=mask_id)  # [B, T]
    return weight.to(h.dtype) * h.sum(-1)
