"""Run untrusted generated code against its tests (the parent side): jail, judge, verdict.

The sandbox package's files import only the standard library (never torch). ``execute``
screens the program (screen.py), then starts two processes and decides the status from what
the trusted one reports, the exits and the clock:

- the *jailed* process (sandbox_runner.py, inside the OS jail of jail.py: bubblewrap, else
  namespaces, else none) runs the program and holds nothing of the tests;
- the *judge* (judge.py, outside the jail) runs the tests, with each of the program's names
  a proxy that calls into the jailed process and gets plain data back (wire.py); it decides
  every assertion and reports the verdict on a pipe only it holds, with a per-run token.

Layers, outermost first: the jail (a uid that is not the evaluator's when it runs as root, PID,
network, mount and IPC namespaces); a wall-clock timeout, then SIGKILL of both process groups
and a sweep of /proc for anything left (a per-run marker in the environment); rlimits (address
space and data ``memory_mb``, CPU seconds, file size, no core files, process count) in both
children; a fresh working directory (also HOME and TMPDIR), removed afterwards; in the jailed
process, the Python-level guards (sandbox_guards.py) and an audit hook (sandbox_hook.py) as
defence in depth. ``ExecResult.jail`` records the jail that ran; ``path`` whether the tests
used only plain values ("plain") or the program's own objects or callbacks ("objects").
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

from . import jail as jails
from .screen import screen

# MBPP task 123 takes ~5 s alone; 20 s leaves room for a loaded two-core machine.
DEFAULT_TIMEOUT = 20.0
DEFAULT_MEMORY_MB = 2048
MAX_FILE_MB = 64  # largest file the program (or its stderr) may write
MAX_PROCS = 256  # RLIMIT_NPROC; counts all tasks of the user and does not bind for root
STATUSES = ("passed", "wrong_answer", "error", "timeout")

_MARKER_ENV = "XDLM_SANDBOX_RUN"
_STDERR_TAIL = 2000
_HERE = os.path.dirname(os.path.abspath(__file__))
_RUNNER, _JUDGE = os.path.join(_HERE, "sandbox_runner.py"), os.path.join(_HERE, "judge.py")
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
    jail: str = ""  # "bwrap" | "namespaces" | "in-process" (empty: the program never ran)
    path: str = ""  # "plain" | "objects": what crossed between the tests and the program

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
    _jail: str | None = None,
) -> ExecResult:
    """Run ``program`` in the jail, then ``test_code`` in the judge against it.

    AssertionError -> ``wrong_answer``, as is a program object the tests compare (detail
    "returned a <type>"); any other exception, an early exit, a signal, running out of memory or
    a blocked action (detail ``blocked: ...``) -> ``error``; no result within ``timeout``
    wall-clock seconds -> ``timeout``. Test-only switches: ``_guards=False`` turns off the
    Python-level guards and the audit hook (the OS jail alone); ``_screen=False`` skips the static screen; ``_jail`` forces a jail mode
    (default: the best this machine gives, ``jail.mode()``).
    """
    if timeout <= 0:
        raise ValueError(f"timeout must be positive, got {timeout}")
    if memory_mb < 64:
        raise ValueError(f"memory_mb must be at least 64 (the interpreter needs it), got {memory_mb}")
    if _screen:
        found = screen(program)
        if found is not None:
            return ExecResult("error", f"blocked: {found} (static screen; the program did not run)")
    jail = _jail or jails.mode()
    token, marker = os.urandom(16).hex(), os.urandom(16).hex()
    workdir = tempfile.mkdtemp(prefix="xdlm-exec-")
    jails.prepare_workdir(workdir)
    limits = {
        "memory_mb": int(memory_mb),
        "cpu_seconds": int(timeout) + 1,
        "max_file_mb": MAX_FILE_MB,
        "max_procs": MAX_PROCS,
        # Third-party packages stay importable although the children skip `site` (-S).
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
    request_r, request_w = os.pipe()  # judge -> program
    reply_r, reply_w = os.pipe()  # program -> judge
    report_r, report_w = os.pipe()  # judge -> here; the program never holds either end
    runner_job = {
        **limits,
        "program": program,
        "workdir": workdir,
        "jail": jail,
        "drop_to": list(jails.nobody() or ()) if jail == "bwrap" else None,  # the other modes drop on start
        "guards": _guards,
        "blocked_modules": list(_BLOCKED_MODULES),
        "request_fd": request_r,
        "reply_fd": reply_w,
    }
    judge_job = {
        **limits,
        "tests": test_code,
        "token": token,
        "request_fd": request_w,
        "reply_fd": reply_r,
        "report_fd": report_w,
    }
    procs: list[subprocess.Popen] = []
    start = time.monotonic()
    try:
        with (
            tempfile.TemporaryFile() as runner_in,
            tempfile.TemporaryFile() as judge_in,
            tempfile.TemporaryFile() as err,
        ):
            runner_in.write(marshal.dumps(runner_job))  # plain str/int/bool/list data
            judge_in.write(marshal.dumps(judge_job))
            runner_in.seek(0)
            judge_in.seek(0)
            argv, fds, user = jails.command(jail, [sys.executable, "-I", "-B", "-S", _RUNNER], workdir)
            try:
                common = dict(stdout=subprocess.DEVNULL, stderr=err, cwd=workdir, env=env, start_new_session=True)
                procs.append(
                    subprocess.Popen(argv, stdin=runner_in, pass_fds=(request_r, reply_w, *fds), **common, **user)
                )
                # The judge neither works in nor keeps temporary files in the program's directory.
                common.update(cwd="/", env={k: v for k, v in env.items() if k not in ("HOME", "TMPDIR")})
                procs.append(
                    subprocess.Popen(
                        [sys.executable, "-I", "-B", "-S", _JUDGE],
                        stdin=judge_in,
                        pass_fds=(request_w, reply_r, report_w),
                        **common,
                    )
                )
            finally:
                for fd in (*fds, request_r, reply_w, request_w, reply_r, report_w):
                    os.close(fd)
                report_w = -1
            runner, judge = procs
            finished = _wait_exit(judge, timeout)
            duration = time.monotonic() - start
            for proc in procs:  # with a pidfd the child is not reaped yet: its pid cannot be reused
                _kill_all(proc.pid, marker)
            returncode = runner.wait()
            judge.wait()
            report = _read_report(report_r, token)
            err.seek(max(0, err.seek(0, os.SEEK_END) - _STDERR_TAIL))
            stderr = err.read().decode("utf-8", "replace")
    finally:
        for proc in procs:
            if proc.poll() is None:
                _kill_all(proc.pid, marker)
                proc.wait()
        os.close(report_r)
        if report_w >= 0:
            os.close(report_w)
        shutil.rmtree(workdir, ignore_errors=True)
    status, detail, path = _classify(report, finished, returncode, timeout)
    return ExecResult(status, detail, round(duration, 4), returncode, stderr, jail, path)


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


def _read_report(fd: int, token: str) -> tuple[str, str, str] | None:
    """The judge's ``(status, path, detail)``, or None if it never came (or lacks the token)."""
    os.set_blocking(fd, False)  # a survivor could hold the pipe open: never wait on it
    data = b""
    while len(data) < 1 << 16:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            break
        if not chunk:
            break
        data += chunk
    parts = data.decode("utf-8", "replace").rstrip("\n").split("\x1f")
    if len(parts) == 4 and parts[0] == token and parts[1] in (*STATUSES, "gone"):
        return parts[1], parts[2], parts[3]
    return None


def _classify(report, finished: bool, returncode: int, timeout: float) -> tuple[str, str, str]:
    """(status, detail, path) from the judge's report and the jailed process's exit."""
    if not finished or returncode in (-signal.SIGXCPU, 128 + signal.SIGXCPU):
        return "timeout", f"no result within {timeout:g} s", report[1] if report else ""
    if report is None:
        return "error", "the judge gave no verdict", ""
    status, path, detail = report
    if status != "gone":
        return status, detail, path
    # The program's process died mid-run: name the signal (bwrap reports it as 128 + signal).
    signum = -returncode if returncode < 0 else returncode - 128 if returncode > 128 else 0
    if signum and signum in signal.valid_signals():
        return "error", f"killed by signal {signal.Signals(signum).name} before the tests finished", path
    return "error", f"exited with code {returncode} before the tests finished", path
