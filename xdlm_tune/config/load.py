"""Reading, overriding and writing recipes.

`load_recipe` maps YAML one-to-one onto the dataclasses of schema.py. Unknown keys and
values of the wrong type are rejected with the key path and the closest valid key, before
anything heavy is imported; then `Recipe.validate()` checks the values themselves.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from .schema import Recipe, RecipeError, _enum_msg
from .shipped import find_file
from .shipped import names as shipped_names


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys (PyYAML silently keeps the last one)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise RecipeError(f"duplicate key {key!r} {key_node.start_mark}")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_recipe(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    """Read a YAML recipe (None: all defaults; a shipped recipe's name, see shipped.py), apply
    `key.sub=value` overrides, validate.

    Every error line names where its value came from: the file and line, the command-line
    override, or the default."""
    raw: dict[str, Any] = {}
    sources: dict[str, str] = {}  # key path -> where its value was set
    if path is not None:
        found = find_file(path, "recipes")
        if found is None:
            raise RecipeError(f"recipe file not found: {path} (shipped recipes: {shipped_names('recipes')})")
        path = found
        text = path.read_text()
        try:
            raw = yaml.load(text, Loader=_UniqueKeyLoader) or {}
        except yaml.YAMLError as e:
            raise RecipeError(f"{path}: not valid YAML: {e}") from None
        if not isinstance(raw, dict):
            raise RecipeError(
                f"{path}: a recipe is a mapping of sections (model:, data:, ...), got {type(raw).__name__}"
            )
        sources.update(_key_lines(text, path))
    for item in overrides:
        key = apply_override(raw, item)
        sources[key] = f"set by the command-line override {item.removeprefix('--')!r}"
        # a section set whole on the command line owns its keys too
        sources.update({k: sources[key] for k in list(sources) if k.startswith(key + ".")})
    errs: list[str] = []
    recipe = _build(Recipe, raw, "", errs)
    errs += _value_problems(recipe, errs)
    if errs:
        raise RecipeError("invalid recipe:\n  " + "\n  ".join(_with_source(e, sources) for e in errs))
    return recipe


def recipe_from_dict(raw: dict[str, Any], where: str = "recipe") -> Recipe:
    """A Recipe from its dict (``Recipe.to_dict()``, e.g. as stored in a checkpoint or config.json), validated."""
    errs: list[str] = []
    recipe = _build(Recipe, copy.deepcopy(raw), "", errs)
    errs += _value_problems(recipe, errs)
    if errs:
        raise RecipeError(f"{where}: invalid recipe:\n  " + "\n  ".join(errs))
    return recipe


def _value_problems(recipe: Recipe, type_errors: list[str]) -> list[str]:
    """The value checks, run even after type errors (a mistyped value was left at its default), minus
    the keys already reported."""
    bad = {e.split(":", 1)[0] for e in type_errors}
    return [f"{key}: {msg}" for key, msg in recipe.problems() if key not in bad]


def source_of(key: str, sources: dict[str, str]) -> str:
    """Where the value at `key` (or the nearest section above it) was set; the default if nowhere."""
    parts = key.split(".")
    for i in range(len(parts), 0, -1):
        hit = sources.get(".".join(parts[:i]))
        if hit:
            return hit
    return "the default value"


def _with_source(err: str, sources: dict[str, str]) -> str:
    key = err.split(":", 1)[0].strip()
    return f"{err} ({source_of(key, sources)})"


def _key_lines(text: str, path: Path) -> dict[str, str]:
    """{'diffusion.k': 'recipes/x.yaml, line 12', ...} for every key of a YAML mapping."""
    out: dict[str, str] = {}

    def walk(node: Any, prefix: str) -> None:
        if not isinstance(node, yaml.MappingNode):
            return
        for key_node, value_node in node.value:
            key = f"{prefix}{key_node.value}"
            out[key] = f"set in {path}, line {key_node.start_mark.line + 1}"
            walk(value_node, key + ".")

    walk(yaml.compose(text, Loader=yaml.SafeLoader), "")
    return out


def apply_override(raw: dict[str, Any], item: str) -> str:
    """Set `a.b.c=value` in a raw recipe dict (the value parsed as a YAML scalar/flow); returns 'a.b.c'."""
    item = item.removeprefix("--")
    key, sep, text = item.partition("=")
    if not sep or not key:
        raise RecipeError(f"command-line override {item!r} must look like section.key=value (e.g. diffusion.k=0.5)")
    parts = key.strip().split(".")
    tp = _check_key_path(parts)
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError as e:
        if tp not in (str, str | None):
            raise RecipeError(f"command-line override {item!r}: value is not valid YAML: {e}") from None
        value = text
    if tp in (str, str | None) and value is not None and not isinstance(value, str):
        value = text.strip()  # a text field takes the text as typed: mask_token=[MASK], name_or_path=123
    node = raw
    for p in parts[:-1]:
        if not isinstance(node.get(p), dict):
            node[p] = {}
        node = node[p]
    node[parts[-1]] = value
    return ".".join(parts)


def save_recipe(recipe: Recipe, path: str | Path) -> Path:
    """Write the resolved recipe as YAML; load_recipe(path) gives back an equal Recipe."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(recipe_to_yaml(recipe))
    return path


class _RecipeDumper(yaml.SafeDumper):
    """Sections as blocks, lists inline ([q_proj, v_proj]): reads like the shipped recipes."""


_RecipeDumper.add_representer(
    list, lambda dumper, data: dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=True)
)


def recipe_to_yaml(recipe: Recipe) -> str:
    return yaml.dump(recipe.to_dict(), Dumper=_RecipeDumper, sort_keys=False, default_flow_style=False)


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}; lists stay values."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def diff_recipes(a: Recipe, b: Recipe) -> list[tuple[str, Any, Any]]:
    """Key paths whose values differ between two recipes, as (path, a_value, b_value)."""
    fa, fb = flatten(a.to_dict()), flatten(b.to_dict())
    return [(k, fa.get(k), fb.get(k)) for k in fa if fa.get(k) != fb.get(k)]


# --------------------------------------------------------------------------- internals


def _unknown_key_msg(key: Any, valid: list[str], where: str) -> str:
    hint = difflib.get_close_matches(str(key), valid, n=1, cutoff=0.5)
    did = f"did you mean '{where}{hint[0]}'? " if hint else ""
    return f"{where}{key}: unknown key; {did}valid keys: {', '.join(valid)}"


def _is_section(cls: Any) -> bool:
    return isinstance(cls, type) and dataclasses.is_dataclass(cls)


def _check_key_path(parts: list[str]) -> Any:
    """Reject an override path that names no field; return the field's type."""
    cls: Any = Recipe
    for i, p in enumerate(parts):
        where = ".".join(parts[:i]) + ("." if i else "")
        if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
            raise RecipeError(f"command-line override {'.'.join(parts)}: {where.rstrip('.')} is a value, not a section")
        hints = typing.get_type_hints(cls)
        if p not in hints:
            owners = [name for name, t in hints.items() if i == 0 and _is_section(t) and p in typing.get_type_hints(t)]
            if owners:  # a field given without its section: max_steps=3 -> training.max_steps
                raise RecipeError(
                    f"command-line override {'.'.join(parts)}: {p} is not a section; did you mean "
                    + " or ".join(f"'{o}.{'.'.join(parts)}'" for o in owners)
                    + "? (fields are given as section.field)"
                )
            raise RecipeError("command-line override " + _unknown_key_msg(p, list(hints), where))
        cls = hints[p]
    return cls


def _build(cls: type, raw: Any, where: str, errs: list[str]) -> Any:
    """Make a dataclass from a raw mapping, collecting type/key errors into errs."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        errs.append(f"{where.rstrip('.') or 'recipe'}: expected a mapping of keys, got {raw!r}")
        return cls()
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in raw.items():
        if key not in hints:
            errs.append(_unknown_key_msg(key, list(hints), where))
            continue
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = _build(tp, value, f"{where}{key}.", errs)
            continue
        try:
            kwargs[key] = _coerce(value, tp)
        except _BadValue as e:
            errs.append(f"{where}{key}: {e}")
    return cls(**kwargs)


class _BadValue(Exception):
    pass


def _coerce(value: Any, tp: Any) -> Any:
    """Check (and gently convert) a YAML value against a type hint."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        alts = typing.get_args(tp)
        if value is None:
            if type(None) in alts:
                return None
            raise _BadValue(f"must not be null (expected {_type_name(tp)})")
        for alt in alts:
            if alt is type(None):
                continue
            try:
                return _coerce(value, alt)
            except _BadValue:
                pass
        # report against the single non-None alternative when there is one: clearer message
        rest = [a for a in alts if a is not type(None)]
        if len(rest) == 1:
            return _coerce(value, rest[0])
        raise _BadValue(f"expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices or isinstance(value, bool):
            raise _BadValue(_enum_msg(value, choices))
        return value
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise _BadValue(f"expected a list of {_type_name(item_tp)}, got {value!r}")
        return [_coerce(v, item_tp) for v in value]
    if value is None:
        raise _BadValue(f"must not be null (expected {_type_name(tp)})")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _BadValue(f"expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise _BadValue(f"expected an integer, got {value!r}")
    if tp is float:
        # PyYAML reads 1e-3 (no dot) as a string: accept anything float() understands.
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise _BadValue(f"expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        hint = " (quote it if it is meant as text)" if isinstance(value, (list, dict)) else ""
        raise _BadValue(f"expected a string, got {value!r}{hint}")
    raise TypeError(f"unsupported type in schema: {tp}")  # a bug in this file, not in the recipe


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    if origin is Literal:
        return " | ".join(repr(c) for c in typing.get_args(tp))
    return {type(None): "null", bool: "true/false", int: "integer", float: "number", str: "string"}.get(tp, str(tp))
