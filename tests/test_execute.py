"""The sandboxed executor: outcomes, limits, and that hostile programs fail without harm.

Everything a test program starts is bounded (a fixed number of children that sleep), so a
sandbox bug cannot flood the shared machine.
"""

from __future__ import annotations

import ast
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from xdlm_tune.sandbox import STATUSES, ExecResult, execute, execute_many

SANDBOX = Path(__file__).resolve().parents[1] / "xdlm_tune" / "sandbox"
# The security boundary: the parent, the screen, and what the child runs.
BOUNDARY = sorted(SANDBOX.glob("*.py"))


def _alive(pid: int) -> bool:
    """Is ``pid`` a live process (not gone, not a zombie)?"""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in "ZX"


# ------------------------------------------------------------------------ the module itself


@pytest.mark.parametrize("path", BOUNDARY, ids=lambda p: p.name)
def test_execute_imports_only_the_standard_library(path):
    tree = ast.parse(path.read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            imported.add(node.module.split(".")[0])
    # The children import their siblings by file location (python -I -S, not as a package).
    assert imported - {p.stem for p in BOUNDARY} <= set(sys.stdlib_module_names), imported - set(
        sys.stdlib_module_names
    )
    assert len(path.read_text().splitlines()) <= 420, "keep each file of the boundary readable in one sitting"
    # And the public import path pulls in no torch (the test process has it already: ask a fresh one).
    code = "import sys; from xdlm_tune.sandbox import execute; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


# ------------------------------------------------------------------------------- outcomes


@pytest.mark.parametrize(
    "program, tests, status, detail",
    [
        ("def add(a, b):\n    return a + b\n", "assert add(2, 3) == 5\n", "passed", ""),
        ("def add(a, b):\n    return a * b\n", "assert add(2, 3) == 5\n", "wrong_answer", "AssertionError"),
        ("def add(a, b):\n    return a + c\n", "assert add(2, 3) == 5\n", "error", "NameError"),
        ("def add(a, b)\n    return a + b\n", "assert add(2, 3) == 5\n", "error", "SyntaxError"),
        ("raise ValueError('bad')\n", "assert True\n", "error", "ValueError: bad"),
        ("assert 1 == 2, 'in the program'\n", "assert True\n", "wrong_answer", "in the program"),
        (
            "import sys\nsys.setrecursionlimit(100)\ndef f(n):\n    return f(n + 1)\n",
            "f(0)\n",
            "error",
            "RecursionError",
        ),
        ("print('x' * 10_000_000)\n", "assert True\n", "passed", ""),  # stdout is discarded
        # State across calls lives in the program's process; the tests see it through its functions.
        (
            "import os\nos.environ['A'] = '1'\ndef get():\n    return os.environ['A']\n",
            "assert get() == '1'\n",
            "passed",
            "",
        ),
        ("if __name__ == '__main__':\n    raise SystemExit(3)\n", "assert True\n", "passed", ""),
        # The program's module is importable by name: pickle and dataclasses work.
        (
            "import dataclasses, pickle\n@dataclasses.dataclass\nclass P:\n    x: int\n"
            "def same(p):\n    return pickle.loads(pickle.dumps(p)) == p\n",
            "assert same(P(1))\n",
            "passed",
            "",
        ),
        # numpy scalars cross as numbers; the tests' own numpy is the judge's.
        ("import numpy\ndef s():\n    return numpy.arange(4).sum()\n", "assert s() == 6\n", "passed", ""),
        ("import numpy\n", "assert numpy.arange(4).sum() == 6\n", "passed", ""),
    ],
)
def test_outcomes(program, tests, status, detail):
    result = execute(program, tests, timeout=10)
    assert isinstance(result, ExecResult) and result.status in STATUSES
    assert result.status == status, result
    assert detail in result.detail
    assert result.passed == (status == "passed")


@pytest.mark.parametrize(
    "exit_code",
    [
        "import sys\nsys.exit(0)\n",
        "exit()\n",
        "quit(0)\n",
        "raise SystemExit\n",
        "import os\nos._exit(0)\n",
        "import os, signal\nos.abort()\n",
        "raise KeyboardInterrupt\n",
        # Writing fake success lines to every fd it has, then leaving quietly, is no pass either.
        "import os\nfor fd in range(64):\n    try:\n        os.write(fd, b'passed tests\\n')\n"
        "    except OSError:\n        pass\nos._exit(0)\n",
    ],
)
def test_exiting_before_the_tests_is_not_a_pass(exit_code):
    result = execute("def f():\n    return 1\n" + exit_code, "assert f() == 1\n", timeout=10, _screen=False)
    assert result.status == "error", result


def test_exit_inside_the_tests_is_not_a_pass():
    result = execute("import sys\n", "assert True\nsys.exit(0)\nassert False\n", timeout=10)
    assert result.status == "error", result


def test_infinite_loop_times_out():
    start = time.monotonic()
    result = execute("while True:\n    pass\n", "assert True\n", timeout=1)
    assert result.status == "timeout", result
    assert time.monotonic() - start < 5


def test_sleeping_program_times_out():
    result = execute("import time\ntime.sleep(100)\n", "assert True\n", timeout=1)
    assert result.status == "timeout", result


def test_memory_hog_fails_quickly():
    start = time.monotonic()
    result = execute("x = bytearray(4 * 1024 ** 3)\n", "assert len(x) > 0\n", timeout=10)
    assert result.status == "error" and "MemoryError" in result.detail, result
    assert time.monotonic() - start < 5
    # A hog that grows step by step hits the same wall.
    grow = "chunks = []\nwhile True:\n    chunks.append(bytearray(16 * 1024 * 1024))\n"
    result = execute(grow, "assert True\n", timeout=10, memory_mb=256)
    assert result.status == "error", result


def test_huge_file_fails():
    result = execute("open('big', 'wb').write(b'x' * (80 * 1024 * 1024))\n", "assert True\n", timeout=10)
    assert result.status == "error", result


def test_bad_arguments():
    with pytest.raises(ValueError, match="timeout"):
        execute("", "", timeout=0)
    with pytest.raises(ValueError, match="memory_mb"):
        execute("", "", memory_mb=1)


# -------------------------------------------------------------------- processes and signals


@pytest.mark.parametrize(
    "spawn",
    [
        "import os\nfor _ in range(50):\n    if os.fork() == 0:\n        time.sleep(30)\n        os._exit(0)\n",
        "import subprocess\nfor _ in range(50):\n    subprocess.Popen(['sleep', '30'])\n",
        "import multiprocessing\nfor _ in range(50):\n    multiprocessing.Process(target=time.sleep, args=(30,)).start()\n",
        "import os\nos.system('sleep 30 &')\n",
        "import os\nos.posix_spawn('/bin/sleep', ['sleep', '30'], {})\n",
        "import pty\npty.fork()\n",
        "import ctypes\nctypes.CDLL(None).fork()\n",
    ],
)
def test_spawning_processes_fails(spawn):
    result = execute("import time\n" + spawn, "assert True\n", timeout=10, _screen=False)  # the runtime guards
    assert result.status == "error", result


@pytest.mark.parametrize(
    "escape",
    [
        "import resource\nresource.setrlimit(resource.RLIMIT_AS, (-1, -1))\n",  # root could raise it
        "import resource\nresource.prlimit(0, resource.RLIMIT_CPU, (-1, -1))\n",
        "import os\nos.setpriority(os.PRIO_PROCESS, 0, 5)\n",
        "from multiprocessing import shared_memory\nshared_memory.SharedMemory(create=True, size=16)\n",
        "import os\nos.setsid()\n",
    ],
)
def test_limits_and_isolation_cannot_be_undone(escape):
    result = execute(escape, "assert True\n", timeout=10)
    assert result.status == "error", result


def test_signalling_the_evaluator_fails():
    program = "import os, signal\nos.kill(os.getppid(), signal.SIGTERM)\n"
    result = execute(program, "assert True\n", timeout=10, _screen=False)
    assert result.status == "error" and "disabled" in result.detail, result


# With the Python-level guards and the hook off (a test-only switch), the OS layers alone must
# still clean up: 50 forked children, half of which leave the session (setsid) and fork again.
# Each becomes `sleep 60` with the run's nonce as its argv[0], which is what the host looks for.
FORKER = """
import os, time
ready_r, ready_w = os.pipe()
for i in range(50):
    if os.fork() == 0:
        if i % 2:
            os.setsid()
            if os.fork():
                os._exit(0)
        os.write(ready_w, b'x')
        os.execv('/bin/sleep', [{nonce!r}, '60'])
got = 0
while got < 50:
    got += len(os.read(ready_r, 50))
def started():
    return got
"""


def _named(nonce: str) -> list[int]:
    """Live host processes whose argv[0] is ``nonce``."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if (
                entry.name.isdigit()
                and (entry / "cmdline").read_bytes().split(b"\0")[0] == nonce.encode()
                and _alive(int(entry.name))
            ):
                found.append(int(entry.name))
        except OSError:
            pass
    return found


@pytest.mark.parametrize("jail", ["default", "in-process"])
@pytest.mark.parametrize("then, status", [("time.sleep(60)\n", "timeout"), ("", "passed")])
def test_nothing_the_program_started_survives(then, status, jail):
    nonce = "xdlm" + os.urandom(5).hex()
    program = FORKER.format(nonce=nonce) + then
    tests = "assert started() == 50\n"
    result = execute(program, tests, timeout=4, _guards=False, _screen=False, _jail=None if jail == "default" else jail)
    assert result.status == status, result
    time.sleep(0.3)  # SIGKILL is delivered asynchronously
    assert _named(nonce) == []


# ------------------------------------------------------------------------------ filesystem


@pytest.mark.parametrize(
    "attack",
    [
        "import os\nos.remove(SENTINEL)\n",
        "import os\nos.unlink(SENTINEL)\n",
        "import pathlib\npathlib.Path(SENTINEL).unlink()\n",
        "open(SENTINEL, 'w').write('owned')\n",
        "open(SENTINEL, 'a').write('owned')\n",
        "open(SENTINEL, 'r+').write('owned')\n",
        "import pathlib\npathlib.Path(SENTINEL).write_text('owned')\n",
        "import io\nio.FileIO(SENTINEL, 'w')\n",
        "import os\nos.open(SENTINEL, os.O_WRONLY | os.O_TRUNC)\n",
        "import os\nos.truncate(SENTINEL, 0)\n",
        "import os\nos.rename(SENTINEL, SENTINEL + '.moved')\n",
        "import os\nos.rename('mine', SENTINEL)\n",
        "import os\nos.chmod(SENTINEL, 0)\n",
        "import shutil\nshutil.rmtree(os.path.dirname(SENTINEL))\n",
        "import shutil\nshutil.move(SENTINEL, '.')\n",
        "import shutil\nshutil.copyfile('mine', SENTINEL)\n",
        "import os\nos.symlink(SENTINEL, 'link')\nopen('link', 'w').write('owned')\n",
        "import os\nos.chdir(os.path.dirname(SENTINEL))\nos.remove('sentinel.txt')\n",
        "import sqlite3\nsqlite3.connect(SENTINEL + '.db').execute('create table t (x)')\n",
        "import dbm\ndbm.open(SENTINEL + '.db', 'c')['k'] = 'v'\n",
    ],
)
def test_files_outside_the_sandbox_are_safe(tmp_path, attack):
    sentinel = tmp_path / "sentinel.txt"
    sentinel.write_text("original")
    before = sentinel.stat()
    program = f"import os\nSENTINEL = {str(sentinel)!r}\nopen('mine', 'w').write('x')\n" + attack
    result = execute(program, "assert True\n", timeout=10)
    assert result.status == "error", result
    assert "PermissionError" in result.detail or "ModuleNotFoundError" in result.detail, result
    assert sentinel.read_text() == "original"
    after = sentinel.stat()
    assert (after.st_mode, after.st_size, after.st_mtime_ns) == (before.st_mode, before.st_size, before.st_mtime_ns)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sentinel.txt"]


def test_working_directory_is_fresh_usable_and_removed():
    program = (
        "import os, sys, tempfile, pathlib\n"
        "assert os.listdir('.') == []\n"
        "pathlib.Path('a.txt').write_text('x')\n"
        "os.makedirs('d/e')\n"
        "os.rename('a.txt', 'd/e/b.txt')\n"
        "with tempfile.NamedTemporaryFile() as f:\n"
        "    f.write(b'y')\n"
        "os.remove('d/e/b.txt')\n"
        "sys.stderr.write('CWD=' + os.getcwd() + '\\n')\n"
    )
    result = execute(program, "assert True\n", timeout=10)
    assert result.status == "passed", result
    workdir = result.stderr.split("CWD=")[1].split()[0]
    assert not os.path.exists(workdir)


# ------------------------------------------------------------------------------- network


@pytest.fixture
def listener():
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.3)
    yield server
    server.close()


def _assert_no_connection(server: socket.socket) -> None:
    with pytest.raises(socket.timeout):
        server.accept()


@pytest.mark.parametrize(
    "connect",
    [
        "import socket\nsocket.create_connection(('127.0.0.1', PORT), timeout=2)\n",
        "import socket\ns = socket.socket()\ns.connect(('127.0.0.1', PORT))\n",
        "import _socket\n_socket.socket().connect(('127.0.0.1', PORT))\n",
        "import urllib.request\nurllib.request.urlopen(f'http://127.0.0.1:{PORT}/', timeout=2)\n",
    ],
)
def test_network_is_blocked(listener, connect):
    port = listener.getsockname()[1]
    result = execute(f"PORT = {port}\n" + connect, "assert True\n", timeout=10)
    assert result.status == "error", result
    _assert_no_connection(listener)


def test_network_namespace_blocks_even_without_python_guards(listener):
    """Where the kernel lets the child unshare its network namespace, that alone blocks it."""
    own_ns = os.readlink("/proc/self/ns/net")
    probe = execute(
        f"import os\nassert os.readlink('/proc/self/ns/net') != {own_ns!r}\n",
        "",
        timeout=10,
        _guards=False,
        _screen=False,
    )
    if probe.status != "passed":
        pytest.skip("this kernel/user cannot create a network namespace; Python guards only")
    port = listener.getsockname()[1]
    program = f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)\n"
    result = execute(program, "assert True\n", timeout=10, _guards=False)
    assert result.status == "error", result
    _assert_no_connection(listener)


# ------------------------------------------------------------------------------ in parallel


def test_execute_many_keeps_order_and_reports_each():
    jobs = [
        ("import time\ntime.sleep(0.3)\nx = 0\n", "assert x == 0\n"),
        ("x = 1\n", "assert x == 2\n"),
        ("x = 2\n", "assert x == 2\n"),
        ("while True:\n    pass\n", ""),
        ("x = y\n", ""),
    ]
    seen = []
    results = execute_many(jobs, workers=2, timeout=2, on_result=lambda i, r: seen.append(i))
    assert [r.status for r in results] == ["passed", "wrong_answer", "passed", "timeout", "error"]
    assert sorted(seen) == list(range(len(jobs)))
    assert execute_many([]) == []
