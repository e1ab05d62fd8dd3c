"""The floors of DESIGN.md, checked on the import statements: train, evaluation and export stand
side by side (none imports another); the math imports no transformers; the executor no torch."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "xdlm_tune"
SIDE_BY_SIDE = ("train", "evaluation", "export")


def imported_modules(path: Path) -> set[str]:
    """Absolute names of every module a file imports (relative imports resolved), function bodies included."""
    package = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1])
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            module = ".".join(p for p in (base, node.module) if p)
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


def files_of(subpackage: str) -> list[Path]:
    return sorted((PACKAGE / subpackage).rglob("*.py"))


@pytest.mark.parametrize("floor", SIDE_BY_SIDE)
def test_train_evaluation_and_export_do_not_import_each_other(floor):
    others = [f"xdlm_tune.{o}" for o in SIDE_BY_SIDE if o != floor]
    bad = {
        f"{p.relative_to(PACKAGE.parent)}: {name}"
        for p in files_of(floor)
        for name in imported_modules(p)
        if any(name == o or name.startswith(o + ".") for o in others)
    }
    assert not bad, f"xdlm_tune.{floor} imports a module of the same floor: {sorted(bad)}"


def test_the_math_imports_no_transformers_and_the_executor_no_torch():
    for path in files_of("diffusion"):
        assert not {n for n in imported_modules(path) if n.split(".")[0] in ("transformers", "peft")}, path
    # The executor is the security boundary: its files import the standard library and each other only.
    for path in files_of("sandbox"):
        imported = imported_modules(path)
        bad = {
            n
            for n in imported
            if n.split(".")[0] == "torch" or (n.startswith("xdlm_tune") and not n.startswith("xdlm_tune.sandbox"))
        }
        assert not bad, (path.name, bad)


def test_relative_imports_are_resolved():  # the checker above must see `from ..runs import x` as xdlm_tune.runs
    assert "xdlm_tune.runs.load_checkpoint" in imported_modules(PACKAGE / "evaluation" / "load.py")


@pytest.mark.parametrize("module", ["checkpoint.py", "runs.py", "config"])
def test_the_floors_below_train_evaluation_and_export_import_none_of_them(module):
    paths = files_of(module) if (PACKAGE / module).is_dir() else [PACKAGE / module]
    above = [f"xdlm_tune.{o}" for o in (*SIDE_BY_SIDE, "pipeline", "cli", "demo")]
    bad = {
        f"{p.name}: {name}"
        for p in paths
        for name in imported_modules(p)
        if any(name == o or name.startswith(o + ".") for o in above)
    }
    assert not bad, sorted(bad)
