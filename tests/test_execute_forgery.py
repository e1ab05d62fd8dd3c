"""Hostile programs that try to forge "passed": each is wrong, none may pass.

Every program defines a wrong ``add`` (tests: ``assert add(1, 2) == 3``) and tries one way to
reach the verdict as it lived in the previous, in-process executor (frames, gc, hooks, report
pipes, tampered modules). Each runs twice: without the static screen (``_screen=False``) and
with it, as the harness runs it. The verdict is now the judge's (xdlm_tune/sandbox/judge.py),
so they find nothing to forge; tests/test_sandbox_attacks.py holds the attacks on the new design.
"""

from __future__ import annotations

import signal

import pytest

from xdlm_tune.sandbox import execute
from xdlm_tune.sandbox.screen import screen

TESTS = "assert add(1, 2) == 3\n"
# Finds the report pipe without /proc: the only FIFO among the low descriptors.
OK_FD = (
    "import os, stat\ndef _ok(f):\n    try:\n        return stat.S_ISFIFO(os.fstat(f).st_mode)\n"
    "    except OSError:\n        return False\n"
)
WRONG = "def add(a, b):\n    return 0\n"
FORGE = (  # what a program does once it holds a frame: look for the reporter and the token
    "def forge(f):\n"
    "    while f is not None:\n"
    "        for name, value in list(f.f_locals.items()):\n"
    "            if callable(value) and name in ('report', 'write', 'vault', 'send'):\n"
    "                value('passed', 'tests', '')\n"
    "        f = f.f_back\n"
)

# (path, program, what the detail must say). Each program is wrong, and runs FORGE or similar.
FORGERIES = [
    (
        "the issue's frame walk",
        "import sys\nf = sys._getframe(0)\nwhile f is not None and 'report' not in f.f_locals:\n"
        "    f = f.f_back\nf.f_locals['report']('passed', 'tests', '')\n",
        "frame introspection (sys._getframe)",
    ),
    (
        "frame walk from inside the tests",
        FORGE + "import sys\ndef add(a, b):\n    forge(sys._getframe(1))\n    return 0\n",
        "frame introspection (sys._getframe)",
    ),
    (
        "getframe caught and ignored",
        "import sys\ntry:\n    sys._getframe()\nexcept BaseException:\n    pass\n",
        "frame introspection (sys._getframe)",
    ),
    (
        "getframe by a built name",
        "import sys\ngetattr(sys, '_get' + 'frame')(0)\n",
        "frame introspection (sys._getframe)",
    ),
    (
        "traceback",
        FORGE + "try:\n    1 / 0\nexcept ZeroDivisionError as e:\n    forge(e.__traceback__.tb_frame)\n",
        "frame introspection (.tb_frame)",
    ),
    (
        "exc_info traceback",
        FORGE + "import sys\ntry:\n    1 / 0\nexcept ZeroDivisionError:\n    forge(sys.exc_info()[2].tb_frame)\n",
        "frame introspection (.tb_frame)",
    ),
    (
        "generator frame",
        FORGE + "def g():\n    yield\ngen = g()\nnext(gen)\nforge(gen.gi_frame)\n",
        "frame introspection (.gi_frame)",
    ),
    (
        "running generator's own frame",
        FORGE + "def g():\n    forge(me.gi_frame)\n    yield\nme = g()\n"
        "def add(a, b):\n    next(me, None)\n    return 0\n",
        "frame introspection (.gi_frame)",
    ),
    (
        "coroutine frame",
        FORGE + "async def c():\n    pass\nco = c()\nforge(co.cr_frame)\n",
        "frame introspection (.cr_frame)",
    ),
    (
        "async generator frame",
        FORGE + "async def a():\n    yield\nforge(a().ag_frame)\n",
        "frame introspection (.ag_frame)",
    ),
    (
        "other threads' frames",
        FORGE + "import sys\nfor f in sys._current_frames().values():\n    forge(f)\n",
        "frame introspection (sys._current_frames)",
    ),
    ("current exceptions", "import sys\nsys._current_exceptions()\n", "frame introspection (sys._current_exceptions)"),
    ("gc.get_objects", "import gc\nfor o in gc.get_objects():\n    pass\n", "object graph walk (gc.get_objects)"),
    ("gc.get_referrers", "import gc\ngc.get_referrers(gc)\n", "object graph walk (gc.get_referrers)"),
    ("gc.get_referents", "import gc, sys\ngc.get_referents(sys.modules)\n", "object graph walk (gc.get_referents)"),
    ("gc DEBUG_SAVEALL garbage", "import gc\ngc.set_debug(gc.DEBUG_SAVEALL)\n", "gc.set_debug"),
    (
        "sys.settrace",
        FORGE + "import sys\nsys.settrace(lambda f, e, a: forge(f))\n",
        "trace, profile or audit hook (sys.settrace)",
    ),
    (
        "threading.settrace in a new thread",
        FORGE + "import threading\nthreading.settrace(lambda f, e, a: forge(f))\n"
        "t = threading.Thread(target=lambda: None)\nt.start()\nt.join()\n",
        "trace, profile or audit hook (sys.settrace)",
    ),
    (
        "sys.setprofile",
        "import sys\nsys.setprofile(lambda f, e, a: None)\n",
        "trace, profile or audit hook (sys.setprofile)",
    ),
    (
        "sys.addaudithook",
        "import sys\nsys.addaudithook(lambda e, a: None)\n",
        "trace, profile or audit hook (sys.addaudithook)",
    ),
    (
        "inspect.currentframe",
        FORGE + "import inspect\nforge(inspect.currentframe())\n",
        "frame introspection (sys._getframe)",
    ),
    ("inspect.stack", "import inspect\ninspect.stack()\n", "frame introspection (sys._getframe)"),
    (
        "logging's frame helper",
        FORGE + "import logging\nforge(logging.currentframe())\n",
        "frame introspection (sys._getframe)",
    ),
    ("traceback.extract_stack", "import traceback\ntraceback.extract_stack()\n", "frame introspection (sys._getframe)"),
    ("ctypes re-imported", "import sys\ndel sys.modules['ctypes']\nimport ctypes\n", "importing ctypes"),
    (
        "ctypes left over from setup",
        "cdll = [c for c in object.__subclasses__() if c.__name__ == 'CDLL']\ncdll[0](None).getpid()\n",
        "ctypes",
    ),
    ("/proc/self/mem", "data = open('/proc/self/mem', 'rb')\n", "reading /proc"),
    (
        "/proc/self/mem through a dir_fd",
        "import os\nroot = os.open('/', os.O_RDONLY)\nos.open('proc/self/mem', os.O_RDONLY, dir_fd=root)\n",
        "opening a directory",
    ),
    ("/dev/fd alias of /proc/self/fd", "open('/dev/fd/0', 'rb')\n", "reading /proc"),
    (
        "listing /proc/self/fd",
        "import os\nfor fd in os.listdir('/proc/self/fd'):\n    os.write(int(fd), b'x passed tests\\n')\n",
        "reading /proc",
    ),
    ("the parent's memory", "import os\nopen(f'/proc/{os.getppid()}/mem', 'rb')\n", "reading /proc"),
    ("a device node", "open('/dev/ptmx', 'rb')\n", "opening the device"),
    ("a symlink to /proc", "import posix\nposix.symlink('/proc/self/mem', 'm')\n", "disabled"),
    (
        "a signal handler",
        FORGE + "import signal\nsignal.signal(signal.SIGALRM, lambda s, f: forge(f))\n"
        "signal.setitimer(signal.ITIMER_REAL, 0.001, 0.001)\n",
        "installing a signal handler",
    ),
    (
        "the C-level signal function",
        "import _signal\n_signal.signal(14, lambda s, f: None)\n",
        "installing a signal handler",
    ),
    (
        "a reloaded _signal",
        "import _signal, importlib\nimportlib.reload(_signal)\n_signal.signal(14, print)\n",
        "installing a signal handler",
    ),
    (
        "a re-created built-in module",
        "import _imp, importlib.util\n_imp.create_builtin(importlib.util.find_spec('_signal'))\n",
        "re-creating a built-in module",
    ),
    ("a re-imported built-in module", "import sys\ndel sys.modules['_signal']\nimport _signal\n", "importing _signal"),
    ("raising the pass event", "import sys\nsys.audit('xdlm.sandbox.passed')\n", "a forged report"),
    (
        "raising the report event",
        "import sys\nsys.audit('xdlm.sandbox.report', 'passed', 'tests', '')\n",
        "a forged report",
    ),
    (
        "a second runner",
        "import sys\nsys.modules['__main__']._run({'program': '', 'tests': '', 'guards': False,"
        " 'pass_token': 'x' * 32, 'report_token': 'y' * 32, 'report_fd': 2, 'workdir': '.', 'blocked_modules': []})\n",
        "frame introspection (sys._getframe)",
    ),
    (
        "a vault of its own",
        "import sys, os\nv = sys.modules['__main__']._vault(('0' * 32,) * 2, 2, None, 0, 0, os.write, os._exit)\n"
        "next(v)\nv.send(('hook', 'passed', 'tests', ''))\n",
        "before the tests finished",
    ),
    (
        "stealing the failure report's token",
        "import os, stat, threading\n"
        "fd = [f for f in range(3, 64) if _ok(f)][0]\nkeep = os.dup(fd)\nr, w = os.pipe()\nos.dup2(w, fd)\n"
        "def steal():\n    token = os.read(r, 4096).split()[0]\n    os.write(keep, token + b' passed tests \\n')\n"
        "threading.Thread(target=steal).start()\n",
        "before the tests finished",
    ),
    (
        "/proc through a path object",
        "class P:\n    def __fspath__(self):\n        return '/proc/self/mem'\nopen(P(), 'rb')\n",
        "reading /proc",
    ),
    (
        "/proc as bytes, relative",
        "import os\nos.open(b'../../../../../../../../proc/self/mem', os.O_RDONLY)\n",
        "reading /proc",
    ),
    (
        "fake report lines on every fd",
        "import os\nfor fd in range(256):\n    try:\n"
        "        os.write(fd, b'0123456789abcdef0123456789abcdef passed tests \\npassed\\n')\n    except OSError:\n"
        "        pass\n",
        "AssertionError",
    ),
    (
        "replacing AssertionError",
        "import builtins\nbuiltins.AssertionError = ZeroDivisionError\n",
        "changed the builtins module",
    ),
    ("replacing exec", "import builtins\nbuiltins.exec = lambda *a, **k: None\n", "changed the builtins module"),
    (
        "shadowing a builtin the tests use",
        "import builtins\nbuiltins.len = lambda x: 3\n",
        "changed the builtins module",
    ),
    (
        "replacing the exits and sys.audit",
        "import os, sys\nos._exit = lambda code: None\nsys.exit = lambda *a: None\nsys.audit = lambda *a: None\n",
        "AssertionError",
    ),
    ("its own __builtins__", "__builtins__ = {'AssertionError': ZeroDivisionError}\n", "its own __builtins__"),
    ("atexit", "import atexit, os\natexit.register(os._exit, 0)\n", "AssertionError"),
    (
        "SystemExit from __del__",
        "class D:\n    def __del__(self):\n        raise SystemExit(0)\ndef add(a, b):\n    D()\n    return 0\n",
        "AssertionError",
    ),
    (
        "KeyboardInterrupt from __del__ during the failure",
        "class D:\n    def __del__(self):\n        raise KeyboardInterrupt\n"
        "keep = []\ndef add(a, b):\n    d = D()\n    d.me = d\n    return 0\n",
        "AssertionError",
    ),
    (
        "a thread spamming fake passes",
        "import os, threading, time\ndef spam():\n    for _ in range(20):\n"
        "        for fd in range(3, 16):\n            try:\n                os.write(fd, b'passed tests\\n')\n"
        "            except OSError:\n                pass\nthreading.Thread(target=spam, daemon=True).start()\n"
        "def add(a, b):\n    time.sleep(0.3)\n    return 0\n",
        "AssertionError",
    ),
    (
        "a thread that outlives the tests",
        "import os, threading, time\nthreading.Thread(target=lambda: (time.sleep(0.5), os._exit(0))).start()\n",
        "AssertionError",
    ),
    (
        "interrupt_main from a thread",
        # join: the interrupt is pending before the program goes on
        "import _thread, threading, time\nt = threading.Thread(target=_thread.interrupt_main)\nt.start()\nt.join()\n"
        "time.sleep(0.1)\n",
        "KeyboardInterrupt",
    ),
    (
        "forking",
        "import os\nif os.fork() == 0:\n    os.write(3, b'passed tests\\n')\n    os._exit(0)\n",
        "PermissionError",
    ),
    ("subprocess's own fork_exec", "import subprocess\nsubprocess._fork_exec(*[None] * 23)\n", "PermissionError"),
    ("exec of a fresh interpreter", "import os\nos.execv('/usr/bin/env', ['env'])\n", "PermissionError"),
]


@pytest.mark.parametrize("program, detail", [f[1:] for f in FORGERIES], ids=[f[0] for f in FORGERIES])
def test_forgery_is_not_a_pass_at_run_time(program, detail):
    """The old in-process forgeries: the verdict is no longer in the program's process, so each
    finds nothing to forge (``detail`` is what the old audit hook said; the run is just not a pass)."""
    program = (OK_FD if "_ok(" in program else "") + program + ("" if "def add" in program else WRONG)
    result = execute(program, TESTS, timeout=10, _screen=False)
    assert result.status != "passed", result  # a thread stealing the judge's requests: a timeout


def test_a_parent_that_ignores_sigint_gives_the_same_verdict():
    """An evaluation started in the background (`cmd &` in a script) ignores SIGINT and its
    children inherit that; the runner restores Python's handler, so the interrupt still ends the
    program (before the fix: 'AssertionError (in the tests)')."""
    program = {f[0]: f[1] for f in FORGERIES}["interrupt_main from a thread"] + WRONG
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        result = execute(program, TESTS, timeout=10, _screen=False)
    finally:
        signal.signal(signal.SIGINT, old)
    assert result.status == "error" and "KeyboardInterrupt" in result.detail, result


@pytest.mark.parametrize("program", [f[1] for f in FORGERIES], ids=[f[0] for f in FORGERIES])
def test_forgery_is_not_a_pass_as_the_harness_runs_it(program):
    program = (OK_FD if "_ok(" in program else "") + program + ("" if "def add" in program else WRONG)
    result = execute(program, TESTS, timeout=10)
    assert result.status != "passed", result


def test_the_tests_code_is_safe_when_a_program_function_is_called_from_the_tests():
    """HumanEval style: the tests define `check` in the program's namespace and call it."""
    tests = "def check(candidate):\n    assert candidate(1, 2) == 3\ncheck(add)\n"
    program = "def add(a, b):\n    return [c for c in check.__code__.co_consts if isinstance(c, int)][-1]\n"
    result = execute(program, tests, timeout=10, _screen=False)  # the tests are not in its process
    assert result.status == "error" and "NameError: name 'check' is not defined" in result.detail, result
    assert execute(program, tests, timeout=10).detail.startswith("blocked: code introspection")


def test_static_screen_names_the_construct():
    assert screen("import sys\nf = sys._getframe(0)\n") == "frame introspection (`_getframe` on line 2)"
    result = execute("import gc\n" + WRONG, TESTS)
    assert result.status == "error" and result.duration == 0.0, result
    assert result.detail == "blocked: object graph walk (gc) (`gc` on line 1) (static screen; the program did not run)"
    # Words in prose or in unrelated names are not constructs.
    assert (
        screen("def f(gc_content, signal_level):\n    '''inspect the traceback of a signal'''\n    return 1\n") is None
    )


@pytest.mark.parametrize(
    "always_equal",
    [
        "class A:\n    def __eq__(self, other):\n        return True\n",
        "class A:\n    __eq__ = lambda self, other: True\n",
    ],
)
def test_always_equal_objects(always_equal):
    """Gaming the tests' own comparison: the screen catches the plain forms; at run time the object
    stays in the jail and the judge never asks it to decide."""
    program = always_equal + "def add(a, b):\n    return A()\n"
    assert execute(program, TESTS, timeout=10).detail.startswith("blocked: an always-equal object")
    result = execute(program, TESTS, timeout=10, _screen=False)
    assert result.status == "wrong_answer" and result.detail == "returned a A (in the tests)", result


def test_legitimate_uses_of_the_allowed_stdlib_frame_readers_pass():
    program = (
        "import collections, enum, typing\nP = collections.namedtuple('P', 'x y')\n"
        "T = typing.TypeVar('T')\nN = typing.NamedTuple('N', [('a', int)])\nE = enum.Enum('E', 'a b')\n"
        "import tempfile\nwith tempfile.TemporaryFile() as f:\n    f.write(b'x')\n"
        "with tempfile.NamedTemporaryFile() as f:\n    f.write(b'x')\n"
        "def add(a, b):\n    return P(a, b).x + N(b).a\n"
    )
    result = execute(program, TESTS, timeout=10)
    assert result.status == "passed", result


@pytest.mark.parametrize(
    "program, detail",
    [
        ("import os\nos.symlink('/proc/self/mem', 'm')\n", "blocked: creating links"),
        ("import os\nos.link('/etc/hostname', 'h')\n", "blocked: creating links"),
        ("import os\nos.chdir('/')\n", "blocked: changing the working directory"),
        ("import os\nos.rename('/tmp', 'moved')\n", "blocked: renaming across the working directory"),
    ],
)
def test_the_hook_and_guards_refuse_links_chdir_and_renames(program, detail):
    """Defence in depth inside the jail (the guards answer first with PermissionError)."""
    result = execute(program + WRONG, TESTS, timeout=10, _screen=False)
    assert result.status == "error" and ("PermissionError" in result.detail or detail in result.detail), result


@pytest.mark.parametrize(
    "program, tests, detail",
    [
        (
            "import math\nmath.isclose = lambda *a, **k: True\n",
            "import math\nassert math.isclose(add(1, 2), 3)\n",
            "patched math.isclose",
        ),
        (
            "class T:\n    def __eq__(self, other):\n        return 1\nimport operator\noperator.eq = lambda a, b: T()\n",
            "import operator\nassert operator.eq(add(1, 2), 3)\n",
            "patched operator.eq",
        ),
    ],
)
def test_rigging_the_tests_names_does_not_help(program, tests, detail):
    """Wrong programs that would pass by changing what the tests' own names mean: the tests'
    modules are the judge's own (``detail`` is what the old tamper check said)."""
    result = execute(program + ("" if "def add" in program else WRONG), tests, timeout=10, _screen=False)
    assert result.status == "wrong_answer", result


@pytest.mark.parametrize(
    "program, tests",
    [
        ("def sorted(x):\n    return [3]\n", "assert sorted([add(1, 2)]) == [3]\n"),
        ("import builtins\nbuiltins.sorted = lambda x: [3]\n", "assert sorted([add(1, 2)]) == [3]\n"),
    ],
)
def test_shadowing_a_builtin_the_tests_use_does_not_help(program, tests):
    """The tests' builtins are the judge's: a program's `def sorted` is not what they call."""
    result = execute(program + ("" if "def add" in program else WRONG), tests, timeout=10, _screen=False)
    assert result.status == "wrong_answer", result


@pytest.mark.parametrize(
    "program, detail",
    [
        ("import os\noriginal(os.remove)(SENTINEL)\n", "(os.remove)"),
        ("original(open)(SENTINEL, 'w')\n", "writing outside the working directory (open)"),
        ("import os\noriginal(os.rename)(SENTINEL, 'here')\n", "renaming across"),
        ("import os\noriginal(os.open)(SENTINEL, os.O_WRONLY | os.O_TRUNC)\n", "writing outside"),
    ],
)
def test_files_stay_safe_when_a_python_guard_is_bypassed(tmp_path, program, detail):
    """The Python guards hand out their originals through __closure__; the audit hook still refuses."""
    sentinel = tmp_path / "sentinel.txt"
    sentinel.write_text("original")
    original = (
        "def original(guard):  # the C function a guard wraps, from its closure\n"
        "    return [c.cell_contents for c in guard.__closure__ if type(c.cell_contents).__name__ ==\n"
        "            'builtin_function_or_method'][0]\n"
    )
    result = execute(f"SENTINEL = {str(sentinel)!r}\n" + original + program + WRONG, TESTS, timeout=10, _screen=False)
    assert result.status == "error" and detail in result.detail, result
    assert sentinel.read_text() == "original" and sorted(p.name for p in tmp_path.iterdir()) == ["sentinel.txt"]


@pytest.mark.parametrize(
    "program, detail",
    [
        (
            "import socket\nsocket.socket.__bases__[0].__bases__[0]().connect(('127.0.0.1', 9))\n",
            "network access (socket.",
        ),
        ("import os\noriginal(os.rmdir)('/tmp')\n", "(os.rmdir)"),
    ],
)
def test_the_machine_stays_safe_when_a_python_guard_is_bypassed(program, detail):
    original = (
        "def original(guard):\n    return [c.cell_contents for c in guard.__closure__ if\n"
        "            type(c.cell_contents).__name__ == 'builtin_function_or_method'][0]\n"
    )
    result = execute(original + program + WRONG, TESTS, timeout=10, _screen=False)
    assert result.status == "error" and detail in result.detail, result
