"""The sampler's command-line flags, made from ``SamplerSettings`` (eval, genppl and the sweep share them).

    add_sampler_arguments(ap)                 # --steps N [N ...], --gen-length, --sampler, ..., --threshold
    settings, budgets = settings_from_args(args, base)

Every flag defaults to None, meaning "keep ``base``": the model's own settings (an export's
config.json, a checkpoint's recipe) or the protocol a command measures with (gen-PPL). Each
flag's type, choices and help come from the field it sets.
"""

from __future__ import annotations

import argparse
import typing
from typing import Callable

from .field_help import field_help
from .sampler import TRAINED, SamplerSettings, _allowed_values

FLAG_OF = {"steps": "--steps"}  # every other field: --<name with dashes>


def flag(name: str) -> str:
    """The command-line flag of a SamplerSettings field: gen_length -> --gen-length."""
    return FLAG_OF.get(name, "--" + name.replace("_", "-"))


def add_sampler_arguments(
    ap: argparse.ArgumentParser, *, base_help: str = "the model's own", skip: tuple[str, ...] = TRAINED[1:]
) -> None:
    """One flag per SamplerSettings field (``skip``: schedule and eps, which only training sets; k stays
    as an override). ``--steps`` takes several budgets. ``base_help`` names where unset values come from."""
    hints = typing.get_type_hints(SamplerSettings)
    helps = field_help(SamplerSettings)
    group = ap.add_argument_group(f"sampler settings (SamplerSettings; unset: {base_help})")
    names = tuple(name for name in hints if name not in skip)
    ap.set_defaults(sampler_flags=names)  # what settings_from_args reads back
    for name, tp in hints.items():
        if name not in names:
            continue
        text = helps[name].replace("%", "%%")
        if name == "steps":
            group.add_argument(flag(name), type=int, nargs="+", default=None, metavar="N", help=f"budgets: {text}")
            continue
        core = [a for a in (tp, *typing.get_args(tp)) if a is not type(None) and typing.get_origin(a) is None]
        choices = _allowed_values(tp)
        if choices:
            group.add_argument(flag(name), choices=choices, default=None, help=text)
        elif bool in core:
            group.add_argument(flag(name), action=argparse.BooleanOptionalAction, default=None, help=text)
        else:
            kind = int if int in core else float
            group.add_argument(flag(name), type=kind, default=None, metavar="N" if kind is int else "X", help=text)


def settings_from_args(
    args: argparse.Namespace, base: SamplerSettings, fail: Callable[[str], object] | None = None
) -> tuple[SamplerSettings, list[int]]:
    """(``base`` with every flag that was given, the step budgets): budgets are ``--steps`` or ``[base.steps]``;
    the settings carry the first budget. ``fail``: called with the first problem (``settings_problem``), if any."""
    given = {name: getattr(args, name) for name in args.sampler_flags if name != "steps"}
    budgets = list(args.steps) if getattr(args, "steps", None) else [base.steps]
    settings = base.replace(**given, steps=budgets[0])
    problem = settings_problem(settings, budgets) if fail is not None else None
    if problem:
        fail(problem)
    return settings, budgets


def settings_problem(settings: SamplerSettings, budgets: list[int]) -> str | None:
    """The first problem, phrased with the flags (for ``ArgumentParser.error``): a budget that does not fit
    names every budget that does not (``--steps [9]: ...``); None if all fit."""
    bad_steps, other = [], None
    for steps in budgets:
        for name, msg in settings.replace(steps=steps).problems():
            if name == "steps":
                bad_steps.append((steps, msg))
            elif other is None:
                other = f"{flag(name)} {getattr(settings, name)}: {msg}"
    if other:
        return other
    if bad_steps:
        return f"--steps {[s for s, _ in bad_steps]}: {bad_steps[0][1]}"
    return None
