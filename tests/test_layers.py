"""The floors of DESIGN.md, checked on the import statements (function bodies included): each room
imports only its own floor and the floors below; train, evaluation and export stand side by side
(none imports another); no two modules import each other, directly or round a longer loop; the math
imports no transformers; the executor (sandbox/) the standard library only; and the packages whose
docstrings say they load no torch do not (checked in a fresh interpreter)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "xdlm_tune"
SIDE_BY_SIDE = ("train", "evaluation", "export")
# Bottom to top. A room is a subpackage or a top-level module of xdlm_tune ("" is xdlm_tune/__init__.py).
FLOORS = (
    ("", "errors", "console", "launch", "config", "sandbox", "benchmark_data"),
    ("diffusion",),
    ("model",),
    ("data",),
    ("sampling",),
    ("checkpoints",),
    SIDE_BY_SIDE,
    ("lm_eval",),
    ("workflows",),
    ("cli",),
)
FLOOR_OF = {room: i for i, rooms in enumerate(FLOORS) for room in rooms}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


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


def project_imports(path: Path) -> set[str]:
    """The project modules a file imports: `from pkg import sub` is an import of pkg.sub, not of pkg."""
    own = module_name(path)
    package = own if path.name == "__init__.py" else own.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name in MODULES)
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
            module = ".".join(p for p in ((base if node.level else ""), node.module) if p)
            for alias in node.names:
                sub = f"{module}.{alias.name}"
                if sub in MODULES:
                    out.add(sub)
                elif module in MODULES:
                    out.add(module)
    out.discard(own)
    return out


def import_graph() -> dict[str, set[str]]:
    return {name: project_imports(path) for name, path in MODULES.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every set of modules that import each other round a loop (strongly connected, > 1 module)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """Imports from a room to a room on a higher floor, or across the side-by-side floor."""
    bad = []
    for src, targets in graph.items():
        a = room(src)
        for dst in targets:
            b = room(dst)
            if a == b:
                continue
            if FLOOR_OF[b] > FLOOR_OF[a] or (a in SIDE_BY_SIDE and b in SIDE_BY_SIDE):
                bad.append(f"{src} -> {dst}")
    return sorted(bad)


def test_every_room_has_a_floor():
    assert {room(m) for m in MODULES} <= set(FLOOR_OF), sorted({room(m) for m in MODULES} - set(FLOOR_OF))


def test_no_import_cycles():
    assert cycles(import_graph()) == []


def test_no_import_from_a_lower_floor_to_a_higher_one():
    assert upward_imports(import_graph()) == []


def test_the_checks_catch_a_planted_cycle_and_a_planted_upward_import():
    graph = import_graph()
    planted = {k: set(v) for k, v in graph.items()}
    # evaluation.load already imports evaluation.harness; harness importing load closes a loop
    assert "xdlm_tune.evaluation.harness" in planted["xdlm_tune.evaluation.load"]
    planted["xdlm_tune.evaluation.harness"].add("xdlm_tune.evaluation.load")
    assert cycles(planted) == [["xdlm_tune.evaluation.harness", "xdlm_tune.evaluation.load"]]
    # the model layer reaching up into the export (as model.availability once did with export.card)
    planted = {k: set(v) for k, v in graph.items()}
    planted["xdlm_tune.model.availability"].add("xdlm_tune.export.card")
    assert upward_imports(planted) == ["xdlm_tune.model.availability -> xdlm_tune.export.card"]
    planted["xdlm_tune.train.loop"] = planted["xdlm_tune.train.loop"] | {"xdlm_tune.evaluation.harness"}
    assert "xdlm_tune.train.loop -> xdlm_tune.evaluation.harness" in upward_imports(planted)


def test_the_math_imports_no_transformers_and_the_executor_only_the_standard_library():
    for path in (PACKAGE / "diffusion").rglob("*.py"):
        assert not {n for n in imported_modules(path) if n.split(".")[0] in ("transformers", "peft")}, path
    # The executor is the security boundary: its files import the standard library and each other only.
    for path in (PACKAGE / "sandbox").rglob("*.py"):
        imported = imported_modules(path)
        siblings = {p.stem for p in (PACKAGE / "sandbox").glob("*.py")}  # the runner imports them by bare name
        bad = {n for n in imported if n.split(".")[0] not in (*sys.stdlib_module_names, *siblings, "xdlm_tune")}
        bad |= {n for n in imported if n.startswith("xdlm_tune") and not n.startswith("xdlm_tune.sandbox")}
        assert not bad, (path.name, bad)


def test_relative_imports_are_resolved():  # the checker must see `from ..checkpoints.load import x` as that module
    assert "xdlm_tune.checkpoints.load" in project_imports(PACKAGE / "evaluation" / "load.py")
    assert "xdlm_tune.evaluation.genppl.metrics" in project_imports(PACKAGE / "evaluation" / "genppl" / "task.py")


# Modules whose docstrings say they need no torch (config: "the recipe layer imports it without torch";
# evaluation's __init__: "Nothing here imports torch"; the executor; the shipped benchmark files; the
# command line, which imports a stage only when it runs).
TORCH_FREE = (
    "xdlm_tune.config",
    "xdlm_tune.config.sampler",
    "xdlm_tune.config.sampler_args",
    "xdlm_tune.evaluation",
    "xdlm_tune.sandbox",
    "xdlm_tune.benchmark_data",
    "xdlm_tune.checkpoints.protocol",
    "xdlm_tune.cli",
)


def test_the_torch_free_claims_hold():
    code = "import importlib, sys\n" + "".join(
        f"importlib.import_module({m!r}); assert 'torch' not in sys.modules, {m!r}\n" for m in TORCH_FREE
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=PACKAGE.parent)
    assert proc.returncode == 0, proc.stderr[-2000:]


@pytest.mark.parametrize("package", ["evaluation", "config", "sandbox", "checkpoints", "workflows", "lm_eval"])
def test_each_package_docstring_names_only_modules_that_exist(package):
    """A package docstring that names a module `x.py` names a file of that package (or of the project)."""
    import re

    doc = ast.get_docstring(ast.parse((PACKAGE / package / "__init__.py").read_text())) or ""
    named = set(re.findall(r"(?<![/\w])([a-z_]+)\.py\b", doc))
    here = {p.stem for p in (PACKAGE / package).rglob("*.py")}
    assert named <= here, sorted(named - here)


def test_the_layout_table_matches_the_modules():
    """docs/architecture.md's table: one row per room with its floor as FLOORS has it, and every file it
    names in a room exists. Planted: `plan.py` renamed in the table -> fails."""
    import re

    text = (PACKAGE.parent / "docs" / "architecture.md").read_text()
    rows = re.findall(r"^\| (\d+) \| (.+?) \| (.+) \|$", text, re.M)
    listed = {}
    for floor, paths, what in rows:
        for path in re.findall(r"`xdlm_tune/([\w/.]+?)/?`", paths):
            name = path.removesuffix(".py")
            listed[name] = int(floor)
            if (PACKAGE / path).is_dir():
                for file in re.findall(r"`([a-z_]+\.py)`", what):
                    assert list((PACKAGE / path).rglob(file)), f"docs/architecture.md names {path}/{file}"
    rooms = {room(m) for m in MODULES} - {""}
    assert {r: listed.get(r) for r in rooms} == {r: FLOOR_OF[r] for r in rooms}
