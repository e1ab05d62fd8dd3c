"""Run untrusted generated code against its tests in a separate, limited process (parent side).

This file, screen.py, sandbox_runner.py, sandbox_limits.py and sandbox_guards.py are the
evaluator's security boundary; all five import only the standard library (never torch).
``execute`` screens the program (screen.py), starts sandbox_runner.py in a fresh
``python -I -B -S`` and decides the status from the child's authenticated report, its exit and
the clock.

Layers, outermost first:

1. Process: the child starts in its own session; the parent enforces a wall-clock timeout, then
   SIGKILLs the session's process group and sweeps /proc for anything left (same session or
   process group, or a per-run marker in its environment), repeating until nothing is left.
   RLIMIT_NPROC does not bind for root, so this sweep is what guarantees that nothing outlives
   the run.
2. Limits set in the child before the program runs (sandbox_limits.py): address space and data (``memory_mb``), CPU
   seconds, file size, no core files, process count (binds only for non-root users).
3. A fresh temporary working directory (also HOME and TMPDIR), removed afterwards.
4. Network: a new, empty network namespace when the kernel allows it (root, or unprivileged user
   namespaces); sockets and DNS are also disabled in Python.
5. Python-level guards (sandbox_guards.py): processes, signals, privileges, sockets, writes
   outside the working directory raise PermissionError. Their originals can be taken from
   their closures, so the audit hook (6) refuses the same for everything CPython audits.
6. The verdict (sandbox_runner.py): a static screen here, then an audit hook in the child that
   denies frame, gc, hook, ctypes and /proc introspection and guards the only holder of the
   report tokens. A blocked program is an ``error`` with detail ``blocked: <what>``.

A run counts as passed only if the child's report carries the run's random pass token; the
runner can send that only from its pass line, reached after the program and every test ran
to the end. Exiting early in any way (``sys.exit(0)``, ``os._exit(0)``, a signal) is an error.
"""

from __future__ import annotations

import marshal
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Callable, NamedTuple, Sequence

from .screen import screen

# MBPP task 123 takes ~5 s alone; 20 s leaves room for a loaded two-core machine.
DEFAULT_TIMEOUT = 20.0
DEFAULT_MEMORY_MB = 2048
MAX_FILE_MB = 64  # largest file the program (or its stderr) may write
MAX_PROCS = 256  # RLIMIT_NPROC; counts all tasks of the user and does not bind for root
STATUSES = ("passed", "wrong_answer", "error", "timeout")

_MARKER_ENV = "XDLM_SANDBOX_RUN"
_STDERR_TAIL = 2000
_RUNNER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sandbox_runner.py")
# Imported by nobody: they reach libc, write files from C code, or expose interpreter internals.
_BLOCKED_MODULES = (
    "ctypes",
    "_ctypes",
    "sqlite3",
    "_sqlite3",
    "dbm.gnu",
    "_gdbm",
    "dbm.ndbm",
    "_dbm",
    "readline",
    "_posixshmem",
    "_testcapi",
    "_testinternalcapi",
    "_testbuffer",
    "_testmultiphase",
    "_xxsubinterpreters",
    "_xxtestfuzz",
)


class ExecResult(NamedTuple):
    """Outcome of one run: ``status`` is one of STATUSES; ``detail`` says why it was not passed."""

    status: str
    detail: str = ""
    duration: float = 0.0
    returncode: int | None = None
    stderr: str = ""

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    def to_dict(self) -> dict:
        return self._asdict()


def execute(
    program: str,
    test_code: str,
    timeout: float = DEFAULT_TIMEOUT,
    memory_mb: int = DEFAULT_MEMORY_MB,
    *,
    _guards: bool = True,
    _screen: bool = True,
) -> ExecResult:
    """Run ``program`` then ``test_code`` in one namespace, in a sandboxed child process.

    AssertionError -> ``wrong_answer``; any other exception, an early exit, a signal, running
    out of memory or a blocked introspection (detail ``blocked: ...``) -> ``error``; no result
    within ``timeout`` wall-clock seconds -> ``timeout``. Test-only switches: ``_guards=False``
    turns off the Python-level guards and the audit hook's process rules (to check the
    kernel-level layers alone); ``_screen=False`` skips the static screen (to check the hook).
    """
    if timeout <= 0:
        raise ValueError(f"timeout must be positive, got {timeout}")
    if memory_mb < 64:
        raise ValueError(f"memory_mb must be at least 64 (the interpreter needs it), got {memory_mb}")
    if _screen:
        found = screen(program)
        if found is not None:
            return ExecResult("error", f"blocked: {found} (static screen; the program did not run)")
    # Two tokens: one only ever written on a genuine pass, one for every other report.
    tokens, marker = (os.urandom(16).hex(), os.urandom(16).hex()), os.urandom(16).hex()
    workdir = tempfile.mkdtemp(prefix="xdlm-exec-")
    job = {
        "program": program,
        "tests": test_code,
        "pass_token": tokens[0],
        "report_token": tokens[1],
        "workdir": workdir,
        "memory_mb": int(memory_mb),
        "cpu_seconds": int(timeout) + 1,
        "max_file_mb": MAX_FILE_MB,
        "max_procs": MAX_PROCS,
        "blocked_modules": list(_BLOCKED_MODULES),
        "guards": _guards,
        # Third-party packages stay importable although the child skips `site` (-S) to start faster.
        "site_packages": [p for p in sys.path if os.path.basename(p) in ("site-packages", "dist-packages")],
    }
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": workdir,
        "TMPDIR": workdir,
        "LANG": "C.UTF-8",
        # Numeric libraries would otherwise start one thread per core, each with its own stack.
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        _MARKER_ENV: marker,
    }
    report_r, report_w = os.pipe()
    job["report_fd"] = report_w
    start = time.monotonic()
    try:
        # The job goes in through a file rather than a pipe: writing it can never block.
        with tempfile.TemporaryFile() as job_file, tempfile.TemporaryFile() as err:
            job_file.write(marshal.dumps(job))  # plain str/int/bool/list data
            job_file.seek(0)
            proc = subprocess.Popen(
                [sys.executable, "-I", "-B", "-S", _RUNNER],
                stdin=job_file,
                stdout=subprocess.DEVNULL,
                stderr=err,
                cwd=workdir,
                env=env,
                pass_fds=(report_w,),
                start_new_session=True,
            )
            os.close(report_w)
            report_w = -1
            finished = _wait_exit(proc, timeout)
            duration = time.monotonic() - start
            # With a pidfd the child is not reaped yet (only waited for), so its pid, which is
            # also its process group and session id, cannot be reused while we kill what it left.
            _kill_all(proc.pid, marker)
            returncode = proc.wait()
            report = _read_report(report_r, tokens)
            err.seek(max(0, err.seek(0, os.SEEK_END) - _STDERR_TAIL))
            stderr = err.read().decode("utf-8", "replace")
    finally:
        os.close(report_r)
        if report_w >= 0:
            os.close(report_w)
        shutil.rmtree(workdir, ignore_errors=True)
    status, detail = _classify(report, finished, returncode, timeout)
    return ExecResult(status, detail, round(duration, 4), returncode, stderr)


def execute_many(
    jobs: Sequence[tuple[str, str]],
    workers: int | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    memory_mb: int = DEFAULT_MEMORY_MB,
    on_result: Callable[[int, ExecResult], None] | None = None,
) -> list[ExecResult]:
    """Run ``(program, test_code)`` jobs in parallel; results come back in the order of ``jobs``.

    ``workers`` defaults to the number of usable cores (more would make timeouts unfair).
    ``on_result(index, result)`` is called as each job finishes (e.g. to advance a progress bar).
    """
    from concurrent.futures import ThreadPoolExecutor  # here: the sandboxed child loads this file too

    if workers is None:
        workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    results: list[ExecResult | None] = [None] * len(jobs)

    def run(index: int) -> None:
        program, test_code = jobs[index]
        results[index] = execute(program, test_code, timeout=timeout, memory_mb=memory_mb)
        if on_result is not None:
            on_result(index, results[index])

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for future in [pool.submit(run, i) for i in range(len(jobs))]:
            future.result()  # re-raise any error of the harness itself
    return results  # type: ignore[return-value]


# ----------------------------------------------------------------------------- parent helpers


def _wait_exit(proc: subprocess.Popen, timeout: float) -> bool:
    """Wait until the child exits, without reaping it; False if ``timeout`` passed first."""
    try:
        pidfd = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):  # no pidfd (old kernel): wait and reap
        try:
            proc.wait(timeout)
            return True
        except subprocess.TimeoutExpired:
            return False
    try:
        poller = select.poll()
        poller.register(pidfd, select.POLLIN)
        return bool(poller.poll(timeout * 1000))
    finally:
        os.close(pidfd)


def _kill_all(leader: int, marker: str) -> None:
    """SIGKILL the child's process group, then anything else it started, until nothing is left."""
    try:
        os.killpg(leader, signal.SIGKILL)
    except OSError:
        pass
    needle = f"{_MARKER_ENV}={marker}".encode()
    start_time = _proc_stat(leader)
    since = int(start_time[19]) if start_time else 0
    for _ in range(200):
        left = [pid for pid in _pids() if pid != os.getpid() and _belongs(pid, leader, since, needle)]
        if not left:
            return
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(0.01)


def _pids() -> list[int]:
    try:
        return [int(name) for name in os.listdir("/proc") if name.isdigit()]
    except OSError:  # no /proc: killpg above is all we can do
        return []


def _proc_stat(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (field 3, the state, comes first)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read().decode("ascii", "replace")
    except OSError:
        return None
    return data[data.rindex(")") + 2 :].split()


def _belongs(pid: int, leader: int, since: int, needle: bytes) -> bool:
    """Is ``pid`` a live process of this run: in its session or group, or carrying its marker?"""
    fields = _proc_stat(pid)
    if fields is None or fields[0] in "ZXx":  # gone or already dead (a zombie holds nothing)
        return False
    if int(fields[2]) == leader or int(fields[3]) == leader:  # process group, session
        return True
    if int(fields[19]) < since:  # started before the child: cannot be one of its descendants
        return False
    # A descendant that left the session (setsid) still has the marker in its environment.
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return needle in f.read().split(b"\0")
    except OSError:
        return False


def _read_report(fd: int, tokens: tuple[str, str]) -> tuple[str, str, str] | None:
    """The child's report ``(kind, phase, message)``, or None if it never came.

    A line ``<pass token> passed ...`` is a pass; otherwise the first ``<report token> <kind>
    <phase> <message>`` line. Anything else on the pipe (the program can write to it) is ignored.
    """
    os.set_blocking(fd, False)  # a survivor could hold the pipe open: never wait on it
    data = b""
    while len(data) < 1 << 20:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            break
        if not chunk:
            break
        data += chunk
    report = None
    for line in data.decode("utf-8", "replace").splitlines():
        parts = line.split(" ", 3)
        if len(parts) >= 3 and parts[0] == tokens[0] and parts[1] == "passed":
            return "passed", parts[2], ""
        if report is None and len(parts) >= 3 and parts[0] == tokens[1] and parts[1] != "passed":
            report = parts[1], parts[2], parts[3] if len(parts) > 3 else ""
    return report


def _classify(report: tuple[str, str, str] | None, finished: bool, returncode: int, timeout: float) -> tuple[str, str]:
    """Map the child's report and exit to (status, detail); only a reported pass is a pass."""
    if report is not None and report[0] == "passed":
        return "passed", ""
    if report is not None and report[0] == "blocked":  # the runner stopped it: never a pass
        return "error", f"{report[2]} (in the {report[1]})"
    if not finished or returncode == -signal.SIGXCPU:
        return "timeout", f"no result within {timeout:g} s"
    if report is not None:
        kind, phase, message = report
        return ("wrong_answer" if kind == "assertion" else "error"), f"{message} (in the {phase})"
    if returncode < 0:
        name = signal.Signals(-returncode).name if -returncode in signal.valid_signals() else str(-returncode)
        return "error", f"killed by signal {name} before the tests finished"
    return "error", f"exited with code {returncode} before the tests finished"
