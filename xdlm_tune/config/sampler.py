"""How an answer is sampled, as one typed object: ``SamplerSettings``, the only definition of each option.

Every field's type (its allowed values), default and one-line help are declared here and
nowhere else: the recipe's ``diffusion`` section embeds ``k`` / ``schedule`` / ``eps`` and its
``eval`` section the sampler's choices (schema.py); the command lines share
``add_sampler_arguments`` / ``settings_from_args`` (sampler_args.py); an export writes the settings
whole into ``config.json`` (``xdlm.sampler``) and its ``diffusion_generate(ids, **overrides)`` is
``settings.replace(**overrides)``. Standard library only, so the recipe layer imports it without
torch. This file is also copied into every export's ``modeling_xdlm.py``.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class SamplerSettings:
    """Every sampling option. ``generate(model, ids, settings)`` or ``generate(model, ids, steps=32, ...)``."""

    steps: int = 32
    """Model forward passes per answer, split evenly over the blocks (`final_step: ancestral` adds one per block;
    `threshold` may end blocks early)."""
    gen_length: int = 256
    """Answer tokens generated."""
    block_length: int | None = None
    """Semi-autoregressive block length; divides `gen_length`; null: one block."""
    sampler: Literal["confidence", "xdlm", "ancestral"] | None = None
    """`confidence`, `xdlm` or `ancestral`; null: xdlm for k > 0, confidence for k = 0. confidence: LLaDA's
    low-confidence decoding (the MDLM sampler); xdlm: confidence plus revisions under the authors' per-block budget;
    ancestral: exact reverse steps."""
    temperature: float = 0.0
    """0: argmax decisions (greedy); > 0: sampled."""
    top_p: float = 1.0
    """Nucleus mass kept when sampling (temperature > 0)."""
    k: float = 0.1
    """The mixing ratio the model was trained with: 0 = MDLM (absorbing), 1 = UDLM (uniform), in between XDLM (the
    ancestral sampler walks it; xdlm's revision budget uses it)."""
    schedule: Literal["linear", "cosine", "loglinear"] = "linear"
    """The noise schedule alpha_t the model was trained with."""
    eps: float = 1e-3
    """t ~ U[eps, 1] in training; keeps alpha_t inside (0, 1)."""
    revise_prompt: bool = False
    """xdlm: also rewrite prompt tokens, as the authors' code does."""
    final_step: Literal["none", "ancestral"] = "none"
    """`ancestral`: the authors' extra sampled step to alpha_s = 1 (sampler ancestral only; one more pass per block);
    `none`: the last step's logits fill what is still masked."""
    cache: Literal["none", "prefix", "dual"] = "none"
    """KV cache inside a block: `prefix` keeps the prompt and earlier blocks, `dual` also the masked tail
    (faster, approximate); `none`: every step runs the whole sequence."""
    refresh: Literal["step", "block"] = "step"
    """After a revision rewrites a cached position: a full pass at the next `step`, or at the next `block` start."""
    refresh_every: int | None = None
    """Also a full pass every N steps of a block (1: exactly the uncached sampler); null: never."""
    threshold: float | None = None
    """confidence / xdlm: reveal every masked position of the block at least this confident (at least the schedule's
    share; a block whose tokens are all revealed ends early); null: the fixed schedule."""

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
        """A copy with ``changes`` applied (None values are ignored: they mean "keep"; ``max_new_tokens`` and
        ``alg`` are accepted as the aliases of ``gen_length`` and ``sampler`` that Dream's API uses)."""
        return with_overrides(self, changes)

    def to_dict(self) -> dict:
        """Every field, for JSON (``config.json``'s ``xdlm.sampler``); ``from_dict`` reads it back."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> SamplerSettings:
        """The settings in ``values`` (missing fields: the defaults); an unknown name is a TypeError."""
        return with_overrides(cls(), dict(values), keep_none=True)

    def problems(self) -> list[tuple[str, str]]:
        """Every bad value and broken cross-field rule, as (field, message); the recipe's checks and ``check`` use it."""
        errs: list[tuple[str, str]] = []
        for name, tp in _SETTING_HINTS.items():
            choices = _allowed_values(tp)
            value = getattr(self, name)
            if value is None and _nullable(tp):
                continue
            if choices:
                if value not in choices or isinstance(value, bool):
                    errs.append((name, f"must be one of {', '.join(repr(c) for c in choices)}, got {value!r}"))
            elif not _has_field_type(value, tp):
                errs.append((name, f"must be {_kind_name(tp)}, got {value!r}"))
        if errs:
            return errs  # the rules below compare values
        if not _is_whole(self.gen_length) or self.gen_length < 1:
            errs.append(("gen_length", f"must be a positive integer, got {self.gen_length!r}"))
            return errs  # the rules below divide by it
        block = self.block_length if self.block_length is not None else self.gen_length
        if not _is_whole(block) or block < 1 or self.gen_length % block:
            errs.append(("block_length", f"must be positive and divide gen_length ({self.gen_length}), got {block!r}"))
        elif not _is_whole(self.steps) or not 1 <= self.steps <= self.gen_length:
            errs.append(("steps", f"must be in [1, gen_length={self.gen_length}] (a pass reveals at least one token)"))
        elif self.steps % self.blocks:
            errs.append(
                ("steps", f"must be a multiple of the number of blocks ({self.blocks} = gen_length / block_length)")
            )
        if not self.temperature >= 0:
            errs.append(("temperature", f"must be >= 0, got {self.temperature}"))
        if not 0 < self.top_p <= 1:
            errs.append(("top_p", f"must be in (0, 1], got {self.top_p}"))
        if not 0 <= self.k <= 1:
            errs.append(("k", f"must be in [0, 1] (0 = MDLM, 1 = UDLM), got {self.k}"))
        if not 0 < self.eps < 0.5:
            errs.append(("eps", f"must be in (0, 0.5) so that alpha_t stays inside (0, 1), got {self.eps}"))
        sampler = self.resolved_sampler
        if self.final_step == "ancestral" and sampler != "ancestral":
            errs.append(
                (
                    "final_step",
                    f"'ancestral' applies to the ancestral sampler only (sampler is {sampler!r}); use 'none'",
                )
            )
        if self.revise_prompt and sampler != "xdlm":
            errs.append(("revise_prompt", f"applies to the xdlm sampler only (sampler is {sampler!r}); set it false"))
        every = self.refresh_every
        if every is not None and (not _is_whole(every) or every < 1):
            errs.append(
                ("refresh_every", f"must be a positive integer (1: a full pass every step) or null, got {every!r}")
            )
        if self.cache == "none" and (self.refresh != "step" or self.refresh_every is not None):
            errs.append(
                (
                    "refresh",
                    "refresh / refresh_every apply to a KV cache only (cache is 'none'): set cache "
                    "to prefix or dual, or drop them",
                )
            )
        if self.threshold is not None:
            if not 0 < self.threshold <= 1:
                errs.append(("threshold", f"must be in (0, 1] (a confidence) or null, got {self.threshold}"))
            elif sampler == "ancestral":
                errs.append(
                    (
                        "threshold",
                        "applies to the confidence and xdlm samplers only (sampler is "
                        "'ancestral'); drop it or choose another sampler",
                    )
                )
        return errs

    def check(self) -> SamplerSettings:
        """Raise ValueError naming the first bad field, its value and the fix; return self."""
        for name, msg in self.problems():
            raise ValueError(f"{name}={getattr(self, name)!r}: {msg}")
        return self


SETTING_NAMES = tuple(f.name for f in dataclasses.fields(SamplerSettings))
TRAINED = ("k", "schedule", "eps")  # how the model was trained: the recipe's `diffusion` section, not a sampler choice
ALIASES = {"max_new_tokens": "gen_length", "alg": "sampler"}  # Dream's diffusion_generate names
_SETTING_HINTS = typing.get_type_hints(SamplerSettings)


def _allowed_values(tp) -> tuple:
    """The allowed values of a Literal (or Literal | None) field; () for other types."""
    for arg in (tp, *typing.get_args(tp)):
        if typing.get_origin(arg) is Literal:
            return typing.get_args(arg)
    return ()


def _nullable(tp) -> bool:
    return type(None) in typing.get_args(tp)


def _has_field_type(value, tp) -> bool:
    """``value`` has the field's Python type (an int is a float; a bool is neither)."""
    kinds = [a for a in (*typing.get_args(tp), tp) if isinstance(a, type) and a is not type(None)]
    if isinstance(value, bool):
        return bool in kinds
    if int in kinds and hasattr(value, "__index__"):  # int, and numpy / torch integer scalars
        return True
    if float in kinds and hasattr(value, "__float__") and not isinstance(value, str):
        return True
    return any(isinstance(value, k) for k in kinds)


def _kind_name(tp) -> str:
    kinds = [a for a in (*typing.get_args(tp), tp) if isinstance(a, type) and a is not type(None)]
    name = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(
        kinds[0], kinds[0].__name__
    )
    return name + (" or None" if _nullable(tp) else "")


def _is_whole(value) -> bool:
    return hasattr(value, "__index__") and not isinstance(value, bool)


SAMPLERS = _allowed_values(_SETTING_HINTS["sampler"])
SCHEDULES = _allowed_values(_SETTING_HINTS["schedule"])
FINAL_STEPS = _allowed_values(_SETTING_HINTS["final_step"])
CACHES = _allowed_values(_SETTING_HINTS["cache"])
REFRESHES = _allowed_values(_SETTING_HINTS["refresh"])


def with_overrides(settings: SamplerSettings | None, overrides: dict, *, keep_none: bool = False) -> SamplerSettings:
    """``settings`` (default: all defaults) with the non-None ``overrides`` (``keep_none``: None values too);
    ``max_new_tokens`` / ``alg`` are the aliases of ``gen_length`` / ``sampler``; unknown names are a TypeError."""
    if settings is not None and not isinstance(settings, SamplerSettings):
        raise TypeError(f"settings must be a SamplerSettings, got {type(settings).__name__}")
    changes, given = {}, {}
    for key, value in overrides.items():
        name = ALIASES.get(key, key)
        if name not in SETTING_NAMES:
            raise TypeError(
                f"unknown sampler setting {key!r}; the settings are: {', '.join(SETTING_NAMES)} "
                f"(aliases: {', '.join(f'{a} = {n}' for a, n in ALIASES.items())})"
            )
        if value is None and not keep_none:
            continue
        if name in given:
            raise TypeError(f"{given[name]} and {key} are the same setting ({name}): give one of them")
        given[name], changes[name] = key, value
    return dataclasses.replace(settings or SamplerSettings(), **changes)


def settings_of_export(block: dict) -> SamplerSettings:
    """The settings an export's config.json ``xdlm`` block records: ``sampler`` (format 2), or format 1's
    ``k`` / ``schedule`` / ``eps`` and ``generation`` defaults (``alg``, ``max_new_tokens``, ...)."""
    if "sampler" in block:
        return SamplerSettings.from_dict(block["sampler"])
    old = {key: block[key] for key in TRAINED if key in block}
    return SamplerSettings.from_dict({**(block.get("generation") or {}), **old})
