"""`train`'s `_train` and the sampler's `generate` read as their steps: each step is a named
function, called in the order the module docstring lists, and the two bodies stay short."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import xdlm_tune

PACKAGE = Path(xdlm_tune.__file__).parent
MAX_BODY_LINES = 30  # statements after the docstring; today 12 (_train) and 11 (generate)

# (file, function, [(file defining the step, step name), ...] in the order the body calls them)
STEPS = [
    (
        "train/loop.py",
        "_train",
        [
            ("train/start.py", "run_folder"),  # 1. where the run lives
            ("train/start.py", "start_processes"),  # 2. accelerate / DeepSpeed
            ("train/start.py", "load_denoiser"),  # 3. the model
            ("train/start.py", "load_data"),  # 4. the data and the noise
            ("train/start.py", "wrap_for_training"),  # 5. optimizer, schedule, wrapping
            ("train/loop.py", "_Run"),
            ("train/loop.py", "_resume"),  # 6. resume
            ("train/loop.py", "_open_outputs"),
            ("train/loop.py", "_loop"),  # 7. the loop
        ],
    ),
    (
        "train/loop.py",
        "_loop",
        [("train/loop.py", name) for name in ("_evaluate", "_take_step", "_log_metrics", "_evaluate", "_save")],
    ),
    (
        "sampling/generate.py",
        "generate",
        [
            ("sampling/generate.py", name)
            for name in (
                "_check_prompt",
                "_aligned_prompt",
                "_start_run",
                "_initial_sequence",
                "_denoise_block",
                "_finish",
            )
        ],
    ),
    (
        "sampling/generate.py",
        "_denoise_block",
        [("sampling/generate.py", name) for name in ("_open_block", "_pass_logits", "_ancestral_pass", "_decode_pass")],
    ),
    (
        "sampling/generate.py",
        "_decode_pass",
        [("sampling/generate.py", name) for name in ("_pass_choices", "_reveal", "_revise")],
    ),
]


def module(rel: str) -> ast.Module:
    return ast.parse((PACKAGE / rel).read_text(encoding="utf-8"))


def top_level(rel: str, name: str) -> ast.FunctionDef | ast.ClassDef:
    found = [n for n in module(rel).body if isinstance(n, (ast.FunctionDef, ast.ClassDef)) and n.name == name]
    assert found, f"{rel} defines no top-level {name}"
    return found[0]


def calls_in_order(fn: ast.FunctionDef) -> list[str]:
    """The plain names the body calls (f(...), not obj.f(...)), in source order."""
    calls = [n for n in ast.walk(fn) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)]
    return [c.func.id for c in sorted(calls, key=lambda c: (c.lineno, c.col_offset))]


def body_lines(fn: ast.FunctionDef) -> int:
    body = fn.body
    if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0].value, "value", None), str):
        body = body[1:]  # the docstring does not count
    return body[-1].end_lineno - body[0].lineno + 1


@pytest.mark.parametrize("rel, function, steps", STEPS, ids=[f"{f}:{fn}" for f, fn, _ in STEPS])
def test_the_function_is_the_sequence_of_its_named_steps(rel, function, steps):
    fn = top_level(rel, function)
    for where, name in steps:
        top_level(where, name)  # each step exists as named
    calls, names = iter(calls_in_order(fn)), [name for _, name in steps]
    for i, name in enumerate(names):  # `in` consumes the iterator: the steps must come in this order
        assert name in calls, f"{rel}:{function} calls {names[:i]} but not then {name} (the steps: {names})"


@pytest.mark.parametrize("rel, function", [("train/loop.py", "_train"), ("sampling/generate.py", "generate")])
def test_the_step_lists_stay_short(rel, function):
    n = body_lines(top_level(rel, function))
    assert n <= MAX_BODY_LINES, f"{rel}:{function} is {n} lines: put the new work in a named step"
