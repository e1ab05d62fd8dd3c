"""The recipe reference (docs/recipes.md), generated from the schema: each field's type, default and help.

The help text of a field is the string literal right below it in schema.py (an attribute
docstring, as in litgpt), so a new field is documented where it is declared:

    seq_len: int = 256
    \"\"\"The packed block length (pretrain) or the longest prompt + answer (sft).\"\"\"

    python -m xdlm_tune.config.docs                    # print the reference
    python -m xdlm_tune.config.docs --write docs/recipes.md  # replace it between the two marker comments
    python -m xdlm_tune.config.docs --check docs/recipes.md  # exit 1 when the docs' copy is stale
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import sys
import textwrap
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union

from .schema import Recipe

BEGIN = "<!-- recipe-reference: generated from xdlm_tune/config/schema.py by `python -m xdlm_tune.config.docs --write docs/recipes.md`; edit the schema, not this table -->"
END = "<!-- end of recipe-reference -->"


def field_help(cls: type) -> dict[str, str]:
    """{field name: its attribute docstring} for one dataclass, whitespace collapsed."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body
    out = {}
    for node, after in zip(body, body[1:]):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(after, ast.Expr)
            and isinstance(after.value, ast.Constant)
            and isinstance(after.value.value, str)
        ):
            out[node.target.id] = " ".join(after.value.value.split())
    return out


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


def splice(text: str, generated: str) -> str:
    """`text` with the part between BEGIN and END replaced by `generated`."""
    if text.count(BEGIN) != 1 or text.count(END) != 1 or text.index(BEGIN) > text.index(END):
        raise ValueError(f"expected one pair of marker lines:\n{BEGIN}\n...\n{END}")
    head, rest = text.split(BEGIN)
    _, tail = rest.split(END)
    return f"{head}{BEGIN}\n{generated}{END}{tail}"


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
        new = splice(text, reference())
    except ValueError as err:
        print(f"{path}: {err}", file=sys.stderr)
        return 1
    if args.write:
        if new != text:
            path.write_text(new)
        print(f"{path}: recipe reference {'updated' if new != text else 'already up to date'}")
        return 0
    if new != text:
        print(
            f"{path}: the recipe reference differs from xdlm_tune/config/schema.py; "
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
