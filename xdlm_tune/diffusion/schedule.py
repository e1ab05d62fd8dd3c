"""Noise schedules alpha(t): the probability that a token is still clean at time t.

alpha falls from ~1 at t = 0 to ~0 at t = 1. Every schedule keeps alpha inside (0, 1) for
t in [eps, 1] because the loss has 1/alpha and 1/(1 - alpha) terms (XDLM.md, "Objects").
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..config.sampler import SCHEDULES, SamplerSettings  # standard library only: the names and defaults


@dataclass(frozen=True)
class Schedule:
    """alpha(t) and -d alpha / dt for t: [B] float in [eps, 1].

    * ``linear``:    alpha = 1 - (1 - eps) t                 (XDLM.md default; MDLM's "log-linear
                     noise" gives this same alpha)
    * ``cosine``:    alpha = eps + (1 - eps) cos(pi t / 2)
    * ``loglinear``: alpha = eps ** t                        (log alpha linear in t)
    """

    name: str
    eps: float = SamplerSettings.eps

    def alpha(self, t: torch.Tensor) -> torch.Tensor:
        e = self.eps
        if self.name == "linear":
            return 1.0 - (1.0 - e) * t
        if self.name == "cosine":
            return e + (1.0 - e) * torch.cos(0.5 * math.pi * t)
        return torch.exp(t * math.log(e))  # loglinear

    def neg_dalpha_dt(self, t: torch.Tensor) -> torch.Tensor:
        e = self.eps
        if self.name == "linear":
            return torch.full_like(t, 1.0 - e)
        if self.name == "cosine":
            return (1.0 - e) * 0.5 * math.pi * torch.sin(0.5 * math.pi * t)
        return -math.log(e) * torch.exp(t * math.log(e))

    def sample_t(
        self,
        batch: int,
        *,
        antithetic: bool = False,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> torch.Tensor:
        """t ~ U[eps, 1], shape [B]. ``antithetic`` stratifies: one uniform offset, B evenly spaced
        points (lower-variance Monte Carlo estimate of the time integral)."""
        u = torch.rand(
            1 if antithetic else batch, generator=generator, device=generator.device if generator else device
        )
        if antithetic:
            u = (u + torch.arange(batch, device=u.device) / batch) % 1.0
        return self.eps + (1.0 - self.eps) * u


def make_schedule(name: str = SamplerSettings.schedule, eps: float = SamplerSettings.eps) -> Schedule:
    """Build a schedule by name: "linear" (default), "cosine" or "loglinear"."""
    if name not in SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}: choose one of {', '.join(SCHEDULES)}")
    if not 0.0 < eps < 0.5:
        raise ValueError(f"eps={eps} must lie in (0, 0.5) (it keeps alpha away from 0 and 1); the usual value is 1e-3")
    return Schedule(name, float(eps))
