"""The recipe reference (docs/recipes.md), generated from the schema: each field's type, default and help.

The help text of a field is the string literal right below it in schema.py (an attribute
docstring, as in litgpt), so a new field is documented where it is declared; the sampler's
fields (`diffusion.k`, `eval.gen_length`, ...) are declared, with their help, in sampler.py:

    seq_len: int = 256
    \"\"\"The packed block length (pretrain) or the longest prompt + answer (sft).\"\"\"

    python -m xdlm_tune.config.docs                    # print the reference
    python -m xdlm_tune.config.docs --write docs/recipes.md  # replace it between the two marker comments
    python -m xdlm_tune.config.docs --write docs/sampling.md # the sampler settings' table (every name of each)
    python -m xdlm_tune.config.docs --check docs/recipes.md  # exit 1 when the docs' copy is stale
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import sys
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union

from .field_help import field_help
from .sampler import SamplerSettings
from .schema import Recipe

BEGIN = "<!-- recipe-reference: generated from xdlm_tune/config/schema.py by `python -m xdlm_tune.config.docs --write docs/recipes.md`; edit the schema, not this table -->"
END = "<!-- end of recipe-reference -->"
SAMPLER_BEGIN = "<!-- sampler-settings: generated from xdlm_tune/config/sampler.py by `python -m xdlm_tune.config.docs --write docs/sampling.md`; edit SamplerSettings, not this table -->"
SAMPLER_END = "<!-- end of sampler-settings -->"


def undocumented(cls: type = Recipe, where: str = "") -> list[str]:
    """Key paths of fields that have no help text (a test keeps this empty)."""
    helps, missing = field_help(cls), []
    for f in dataclasses.fields(cls):
        tp = typing.get_type_hints(cls)[f.name]
        if cls is not Recipe and f.name not in helps:
            missing.append(f"{where}{f.name}")
        if dataclasses.is_dataclass(tp):
            missing += undocumented(tp, f"{where}{f.name}.")
    return missing


def reference() -> str:
    """The markdown reference of every recipe section, in the order of Recipe's fields."""
    parts = []
    for section in dataclasses.fields(Recipe):
        cls = typing.get_type_hints(Recipe)[section.name]
        parts.append(
            f"### `{section.name}`\n\n{_cell(inspect.getdoc(cls) or '')}\n\n"
            "| key | type | default | what |\n|---|---|---|---|\n" + "\n".join(_rows(cls, f"{section.name}."))
        )
    return "\n\n".join(parts) + "\n"


def sampler_reference() -> str:
    """Every SamplerSettings field under each of its names: recipe key, command-line flag, keyword of
    `generate` / lm-eval's model_args / an export's `diffusion_generate` (docs/sampling.md)."""
    from .sampler import ALIASES, TRAINED
    from .sampler_args import flag

    helps, hints = field_help(SamplerSettings), typing.get_type_hints(SamplerSettings)
    alias = {name: a for a, name in ALIASES.items()}
    rows = []
    for f in dataclasses.fields(SamplerSettings):
        key = (
            f"`diffusion.{f.name}`"
            if f.name in TRAINED
            else f"`eval.{f.name}`" + (" (a list)" if f.name == "steps" else "")
        )
        cli = "(the model's)" if f.name in TRAINED[1:] else f"`{flag(f.name)}`"
        kw = f"`{f.name}`" + (f" or `{alias[f.name]}`" if f.name in alias else "")
        rows.append(
            f"| {kw} | {key} | {cli} | {_type(hints[f.name])} | `{_yaml(f.default)}` | {_cell(helps[f.name])} |"
        )
    return (
        "| keyword | recipe key | eval / genppl / sweep flag | type | default | what |\n|---|---|---|---|---|---|\n"
        + "\n".join(rows)
        + "\n"
    )


def splice(text: str, generated: str, begin: str = BEGIN, end: str = END) -> str:
    """`text` with the part between `begin` and `end` replaced by `generated`."""
    if text.count(begin) != 1 or text.count(end) != 1 or text.index(begin) > text.index(end):
        raise ValueError(f"expected one pair of marker lines:\n{begin}\n...\n{end}")
    head, rest = text.split(begin)
    _, tail = rest.split(end)
    return f"{head}{begin}\n{generated}{end}{tail}"


def regenerate(text: str) -> str:
    """`text` with each generated table it holds (the recipe reference, the sampler settings) made anew."""
    if BEGIN in text:
        text = splice(text, reference())
    if SAMPLER_BEGIN in text:
        text = splice(text, sampler_reference(), SAMPLER_BEGIN, SAMPLER_END)
    if BEGIN not in text and SAMPLER_BEGIN not in text:
        raise ValueError(f"no generated table's marker lines:\n{BEGIN}\nor\n{SAMPLER_BEGIN}")
    return text


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m xdlm_tune.config.docs",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    group = ap.add_mutually_exclusive_group()
    group.add_argument("--write", metavar="FILE", help="replace the reference between the markers in FILE")
    group.add_argument("--check", metavar="FILE", help="exit 1 if FILE's reference differs from the schema's")
    args = ap.parse_args(argv)
    missing = undocumented()
    if missing:
        print(
            f"fields without help text (add a docstring below each in xdlm_tune/config/schema.py): "
            f"{', '.join(missing)}",
            file=sys.stderr,
        )
        return 1
    if not (args.write or args.check):
        print(reference(), end="")
        return 0
    path = Path(args.write or args.check)
    text = path.read_text()
    try:
        new = regenerate(text)
    except ValueError as err:
        print(f"{path}: {err}", file=sys.stderr)
        return 1
    if args.write:
        if new != text:
            path.write_text(new)
        print(f"{path}: generated tables {'updated' if new != text else 'already up to date'}")
        return 0
    if new != text:
        print(
            f"{path}: a generated table differs from xdlm_tune/config (schema.py, sampler.py); "
            f"run: python -m xdlm_tune.config.docs --write {path}",
            file=sys.stderr,
        )
        return 1
    return 0


# --------------------------------------------------------------------------- rendering


def _rows(cls: type, prefix: str) -> list[str]:
    helps, hints, rows = field_help(cls), typing.get_type_hints(cls), []
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            rows += _rows(tp, f"{prefix}{f.name}.")
            continue
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        rows.append(f"| `{prefix}{f.name}` | {_type(tp)} | `{_yaml(default)}` | {_cell(helps.get(f.name, ''))} |")
    return rows


def _type(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        return " or ".join(_type(a) for a in typing.get_args(tp))
    if origin is Literal:
        return r" \| ".join(f"`{c}`" for c in typing.get_args(tp))
    if origin is list:
        return f"list of {_type(typing.get_args(tp)[0])}"
    return {type(None): "null", bool: "bool", int: "int", float: "float", str: "string"}[tp]


def _yaml(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return "[" + ", ".join(_yaml(v) for v in value) + "]"
    return str(value)


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", r"\|")


if __name__ == "__main__":
    sys.exit(main())
