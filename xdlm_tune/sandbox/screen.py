"""Static screen of a program before it runs: introspection a benchmark solution has no reason to use.

The runner's audit hook denies the same things at run time (see sandbox_runner); the screen
catches them before any code runs and names the construct and its line. It reads names,
attributes, imports and string constants, so ``getattr(sys, "_getframe")`` is caught too;
what it cannot see (``"_get" + "frame"``) is left to the hook. Measured on all 974 MBPP and 164
HumanEval reference solutions: none is flagged (tests/test_tasks.py runs them all).
"""

from __future__ import annotations

import ast
import threading
import warnings

# What each construct is for when a program forges its verdict. Modules count when imported (or
# named in a string, as for __import__); names when used as a name, an attribute or a string;
# attribute-only words (`sys.audit`) only as an attribute, since they are common English words.
_MODULES = {
    "frame introspection": ("inspect", "traceback"),
    "object graph walk (gc)": ("gc",),
    "ctypes": ("ctypes", "_ctypes", "cffi"),
    "signal handlers": ("signal", "_signal"),
    "interpreter internals": (
        "_imp",
        "_thread",
        "builtins",
        "_testcapi",
        "_testinternalcapi",
        "_xxsubinterpreters",
        "_posixsubprocess",
    ),
}
_NAMES = {
    "frame introspection": (
        "_getframe",
        "_current_frames",
        "_current_exceptions",
        "f_back",
        "f_locals",
        "f_globals",
        "f_builtins",
        "f_code",
        "f_trace",
        "tb_frame",
        "tb_next",
        "gi_frame",
        "cr_frame",
        "ag_frame",
        "currentframe",
        "extract_stack",
        "walk_stack",
        "walk_tb",
    ),
    "code introspection": (
        "__code__",
        "__closure__",
        "__globals__",
        "co_consts",
        "co_code",
        "gi_code",
        "cr_code",
        "ag_code",
        "__subclasses__",
    ),
    "object graph walk (gc)": ("get_objects", "get_referrers", "get_referents"),
    "trace, profile or audit hook": ("settrace", "setprofile", "gettrace", "addaudithook"),
    "ctypes": ("pythonapi",),
    "signal handlers": ("setitimer",),
    "interpreter internals": ("__builtins__",),
}
_ATTRIBUTES = {"trace, profile or audit hook": ("audit", "monitoring")}
_PATHS = {"reading /proc or devices": ("/proc", "/dev/fd", "/dev/mem", "/dev/kmem")}


def _index(table: dict) -> dict:
    return {word: category for category, words in table.items() for word in words}


_MODULE, _NAME, _ATTRIBUTE, _PATH = _index(_MODULES), _index(_NAMES), _index(_ATTRIBUTES), _index(_PATHS)
_QUIET = threading.Lock()  # catch_warnings changes global state; execute_many calls from threads


def screen(program: str) -> str | None:
    """None if ``program`` uses none of the screened constructs, else "<category> (`word` on line N)".

    A program that does not parse is not screened: running it reports the SyntaxError.
    """
    try:
        with _QUIET, warnings.catch_warnings():  # e.g. invalid escapes: the child reports them, if at all
            warnings.simplefilter("ignore")
            tree = ast.parse(program)
    except (SyntaxError, ValueError):
        return None
    for node in ast.walk(tree):
        for word, table in _words(node):
            if word in table:
                return f"{table[word]} (`{word}` on line {getattr(node, 'lineno', '?')})"
        name = _always_equal(node)
        if name is not None:
            return f"an always-equal object (`{name}` on line {node.lineno})"
    return None


def _words(node: ast.AST) -> list[tuple[str, dict]]:
    """(word, table to look it up in) for what ``node`` names."""
    if isinstance(node, ast.Name):
        return [(node.id, _NAME)]
    if isinstance(node, ast.Attribute):
        return [(node.attr, _NAME), (node.attr, _ATTRIBUTE)]
    if isinstance(node, ast.Import):
        return [(part, _MODULE) for alias in node.names for part in alias.name.split(".")]
    if isinstance(node, ast.ImportFrom):
        return [(part, _MODULE) for part in (node.module or "").split(".")] + [(a.name, _NAME) for a in node.names]
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        text = node.value
        found = [(text, _NAME), (text, _MODULE)] if text.isidentifier() else []
        return found + [(p, _PATH) for p in _PATH if p in text]
    return []


def _always_equal(node: ast.AST) -> str | None:
    """``__eq__`` returning True (or ``__ne__`` False) whatever it is given: any ``==`` test passes."""
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name in ("__eq__", "__ne__"):
        body = [s for s in node.body if not (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant))]
        if len(body) == 1 and isinstance(body[0], ast.Return) and _is_const(body[0].value, node.name == "__eq__"):
            return node.name
    if isinstance(node, ast.Assign) and isinstance(node.value, ast.Lambda):  # __eq__ = lambda s, o: True
        for target in node.targets:
            if isinstance(target, ast.Name) and target.id in ("__eq__", "__ne__"):
                if _is_const(node.value.body, target.id == "__eq__"):
                    return target.id
    return None


def _is_const(node: ast.AST | None, value: bool) -> bool:
    return isinstance(node, ast.Constant) and node.value is value
