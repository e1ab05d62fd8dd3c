"""How an answer is sampled, as one typed object: ``SamplerSettings``.

Built once (from a recipe's ``eval`` + ``diffusion`` sections, from the eval CLI, or from an
export's ``config.json``) and passed whole to ``generate``. ``k``, ``schedule`` and ``eps`` describe
how the model was trained; the rest choose the sampler. This file is also
copied into every export's ``modeling_xdlm.py`` (after the diffusion core it imports from).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..diffusion import SCHEDULES

SAMPLERS = ("ancestral", "confidence", "xdlm")
FINAL_STEPS = ("none", "ancestral")
CACHES = ("none", "prefix", "dual")
REFRESHES = ("step", "block")


@dataclass(frozen=True)
class SamplerSettings:
    """Every sampling option. ``generate(model, ids, settings)`` or ``generate(model, ids, steps=32, ...)``.

    steps: model forward passes (split evenly over blocks; ``final_step="ancestral"`` adds one).
    gen_length / block_length: answer tokens, denoised block by block (None: one block).
    sampler: "confidence" (LLaDA's low-confidence decoding, the MDLM sampler), "xdlm" (confidence
        plus revisions under the authors' per-block budget), "ancestral" (exact reverse steps).
        None: "xdlm" when k > 0, else "confidence".
    temperature / top_p: 0 = argmax decisions; top_p filters the sampled distribution only.
    k / schedule / eps: the trained model's mixing ratio and noise schedule (ancestral walks it).
    revise_prompt: xdlm may also rewrite prompt tokens, as the authors' code does.
    final_step: "ancestral" adds the authors' extra sampled step at alpha_s = 1 (T + 1 passes);
        "none" fills what is still masked from the last step's logits (T passes).
    cache: "none" (every step runs the whole sequence), "prefix" (inside a block, steps after the
        first run only the block against the cached keys/values of everything before it), "dual"
        (also the masked positions after the block, cached at the block start). See cache.py.
    refresh: when a revision rewrites a cached position: "step" (a full pass at the next step) or
        "block" (at the next block start only). refresh_every: also a full pass every N steps of a
        block (1: every step, the uncached sampler exactly).
    threshold: confidence / xdlm reveal every masked position of the block whose confidence
        reaches it (at least the schedule's share; a block whose tokens are all revealed ends early).
    """

    steps: int | None = None
    gen_length: int = 256
    block_length: int | None = None
    sampler: str | None = None
    temperature: float = 0.0
    top_p: float = 1.0
    k: float = 0.1
    schedule: str = "linear"
    eps: float = 1e-3
    revise_prompt: bool = False
    final_step: str = "none"
    cache: str = "none"
    refresh: str = "step"
    refresh_every: int | None = None
    threshold: float | None = None

    @property
    def resolved_sampler(self) -> str:
        """The sampler actually run: ``sampler``, or by default xdlm for k > 0, confidence for k = 0."""
        if self.sampler is not None:
            return self.sampler
        return "xdlm" if self.k > 0 else "confidence"

    @property
    def variant(self) -> str:
        """A short label of the speed options ("" for the plain sampler), e.g. "cache=dual tau=0.9"."""
        parts = []
        if self.cache != "none":
            parts.append(f"cache={self.cache}")
            if self.refresh != "step":
                parts.append(f"refresh={self.refresh}")
            if self.refresh_every is not None:
                parts.append(f"every={self.refresh_every}")
        if self.threshold is not None:
            parts.append(f"tau={self.threshold:g}")
        return " ".join(parts)

    @property
    def blocks(self) -> int:
        return self.gen_length // (self.block_length or self.gen_length)

    def replace(self, **changes) -> SamplerSettings:
        """A copy with ``changes`` applied (None values are ignored: they mean "keep")."""
        return with_overrides(self, changes)

    def check(self) -> SamplerSettings:
        """Raise ValueError naming the first bad field and the fix; return self."""
        if self.sampler is not None and self.sampler not in SAMPLERS:
            raise ValueError(f"sampler={self.sampler!r} is unknown: choose one of {', '.join(SAMPLERS)}")
        if self.steps is None:
            raise ValueError("steps is not set: give the number of forward passes, e.g. steps=32")
        if self.gen_length < 1:
            raise ValueError(f"gen_length={self.gen_length} must be >= 1")
        if not 1 <= self.steps <= self.gen_length:
            raise ValueError(
                f"steps={self.steps} must be in [1, gen_length={self.gen_length}]: "
                "one forward pass reveals at least one token"
            )
        block = self.block_length or self.gen_length
        if block < 1 or self.gen_length % block:
            raise ValueError(f"block_length={self.block_length} must divide gen_length={self.gen_length}")
        if self.steps % self.blocks:
            raise ValueError(
                f"steps={self.steps} must be a multiple of the number of blocks "
                f"({self.blocks} = gen_length / block_length)"
            )
        if self.temperature < 0:
            raise ValueError(f"temperature={self.temperature} must be >= 0")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p={self.top_p} must be in (0, 1]")
        if not 0 <= self.k <= 1:
            raise ValueError(f"k={self.k} is outside [0, 1]")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule={self.schedule!r} is unknown: choose one of {', '.join(SCHEDULES)}")
        if not 0 < self.eps < 0.5:
            raise ValueError(f"eps={self.eps} must lie in (0, 0.5)")
        if self.final_step not in FINAL_STEPS:
            raise ValueError(f"final_step={self.final_step!r} is unknown: choose one of {', '.join(FINAL_STEPS)}")
        if self.final_step != "none" and self.resolved_sampler != "ancestral":
            raise ValueError(
                f"final_step={self.final_step!r} applies to the ancestral sampler only "
                f"(sampler is {self.resolved_sampler!r}); set final_step='none'"
            )
        if self.revise_prompt and self.resolved_sampler != "xdlm":
            raise ValueError(
                f"revise_prompt=True applies to the xdlm sampler only (sampler is {self.resolved_sampler!r})"
            )
        if self.cache not in CACHES:
            raise ValueError(f"cache={self.cache!r} is unknown: choose one of {', '.join(CACHES)}")
        if self.refresh not in REFRESHES:
            raise ValueError(f"refresh={self.refresh!r} is unknown: choose one of {', '.join(REFRESHES)}")
        every = self.refresh_every
        if every is not None and (isinstance(every, bool) or not isinstance(every, int) or every < 1):
            raise ValueError(f"refresh_every={every!r} must be a positive integer (1: a full pass every step) or None")
        if self.cache == "none" and (self.refresh != "step" or self.refresh_every is not None):
            raise ValueError(
                "refresh / refresh_every apply to a KV cache only (cache is 'none'); "
                "set cache='prefix' or 'dual', or drop them"
            )
        if self.threshold is not None:
            if not 0 < self.threshold <= 1:
                raise ValueError(f"threshold={self.threshold} must be in (0, 1] (a confidence), or None")
            if self.resolved_sampler == "ancestral":
                raise ValueError(
                    "threshold applies to the confidence and xdlm samplers only (sampler is "
                    "'ancestral'); drop threshold or choose another sampler"
                )
        return self


SETTING_NAMES = tuple(f.name for f in dataclasses.fields(SamplerSettings))


def with_overrides(settings: SamplerSettings | None, overrides: dict) -> SamplerSettings:
    """``settings`` (default: all defaults) with the non-None ``overrides``; unknown names are a TypeError."""
    unknown = sorted(set(overrides) - set(SETTING_NAMES))
    if unknown:
        raise TypeError(f"unknown sampler setting(s) {unknown}; the settings are: {', '.join(SETTING_NAMES)}")
    if settings is not None and not isinstance(settings, SamplerSettings):
        raise TypeError(f"settings must be a SamplerSettings, got {type(settings).__name__}")
    changes = {key: value for key, value in overrides.items() if value is not None}
    return dataclasses.replace(settings or SamplerSettings(), **changes)
