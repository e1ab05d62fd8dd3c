"""Run untrusted generated code against its tests in a separate, limited process.

This file is the evaluator's security boundary. It imports only the standard library (never
torch) and holds both sides: `execute` (the parent) and `_child_main` (what runs in the
sandbox; the child is this same file run as a script by a fresh `python -I -B -S`).

Layers, outermost first:

1. Process: the child starts in its own session; the parent enforces a wall-clock timeout, then
   SIGKILLs the session's process group and sweeps /proc for anything left (same session or
   process group, or a per-run marker in its environment), repeating until nothing is left.
   RLIMIT_NPROC does not bind for root, so this sweep is what guarantees that nothing outlives
   the run.
2. Limits set in the child before the program runs: address space and data (``memory_mb``), CPU
   seconds, file size, no core files, process count (binds only for non-root users).
3. A fresh temporary working directory (also HOME and TMPDIR), removed afterwards.
4. Network: a new, empty network namespace when the kernel allows it (root, or unprivileged user
   namespaces); sockets and DNS are also disabled in Python.
5. Python-level guards installed before the program runs: creating processes, sending signals,
   changing privileges, permissions or the working directory raise PermissionError; files may be
   written, created, renamed or removed only inside the working directory; ctypes and the
   modules that write files from C (sqlite3, dbm, readline, POSIX shared memory) cannot be
   imported. These stop careless and accidental damage, not a deliberate attacker (it can reach
   the original functions through introspection); layers 1-4 are enforced by the kernel.

A run counts as passed only if the child itself reports, on a private pipe and with a random
per-run token, that the program and every test ran to the end; exiting early in any way
(``sys.exit(0)``, ``os._exit(0)``, a signal) is an error.
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

# MBPP task 123 takes ~5 s alone; 20 s leaves room for a loaded two-core machine.
DEFAULT_TIMEOUT = 20.0
DEFAULT_MEMORY_MB = 2048
MAX_FILE_MB = 64  # largest file the program (or its stderr) may write
MAX_PROCS = 256  # RLIMIT_NPROC; counts all tasks of the user and does not bind for root
STATUSES = ("passed", "wrong_answer", "error", "timeout")

_MARKER_ENV = "XDLM_SANDBOX_RUN"
_STDERR_TAIL = 2000
# ctypes reaches any libc function; the others write files (or shared memory) from C code.
_BLOCKED_MODULES = ("ctypes", "_ctypes", "sqlite3", "_sqlite3", "dbm.gnu", "_gdbm", "dbm.ndbm", "_dbm",
                    "readline", "_posixshmem")
_CLONE_NEWUSER = 0x10000000
_CLONE_NEWNET = 0x40000000


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
) -> ExecResult:
    """Run ``program`` then ``test_code`` in one namespace, in a sandboxed child process.

    AssertionError -> ``wrong_answer``; any other exception, an early exit, a signal or running
    out of memory -> ``error``; no result within ``timeout`` wall-clock seconds -> ``timeout``.
    ``_guards=False`` turns off the Python-level guards (layer 5); tests use it to check the
    kernel-level layers alone.
    """
    if timeout <= 0:
        raise ValueError(f"timeout must be positive, got {timeout}")
    if memory_mb < 64:
        raise ValueError(f"memory_mb must be at least 64 (the interpreter needs it), got {memory_mb}")
    token, marker = os.urandom(16).hex(), os.urandom(16).hex()
    workdir = tempfile.mkdtemp(prefix="xdlm-exec-")
    job = {
        "program": program,
        "tests": test_code,
        "token": token,
        "workdir": workdir,
        "memory_mb": int(memory_mb),
        "cpu_seconds": int(timeout) + 1,
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
                [sys.executable, "-I", "-B", "-S", os.path.abspath(__file__)],
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
            report = _read_report(report_r, token)
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


def _read_report(fd: int, token: str) -> tuple[str, str, str] | None:
    """The child's report line ``<token> <kind> <phase> <message>``, or None if it never came."""
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
    for line in data.decode("utf-8", "replace").splitlines():
        parts = line.split(" ", 3)
        if len(parts) >= 3 and parts[0] == token:
            return parts[1], parts[2], parts[3] if len(parts) > 3 else ""
    return None


def _classify(
    report: tuple[str, str, str] | None, finished: bool, returncode: int, timeout: float
) -> tuple[str, str]:
    """Map the child's report and exit to (status, detail); only a reported pass is a pass."""
    if report is not None and report[0] == "passed":
        return "passed", ""
    if not finished or returncode == -signal.SIGXCPU:
        return "timeout", f"no result within {timeout:g} s"
    if report is not None:
        kind, phase, message = report
        return ("wrong_answer" if kind == "assertion" else "error"), f"{message} (in the {phase})"
    if returncode < 0:
        name = signal.Signals(-returncode).name if -returncode in signal.valid_signals() else str(-returncode)
        return "error", f"killed by signal {name} before the tests finished"
    return "error", f"exited with code {returncode} before the tests finished"


# ------------------------------------------------------------------------------- child side


def _child_main() -> None:
    """Inside the sandbox: read the job, confine this process, run program and tests, report."""
    job = marshal.loads(sys.stdin.buffer.read())
    sys.path.extend(job["site_packages"])
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)  # the program sees an empty stdin
    os.close(null)
    token, report_fd = job["token"], job["report_fd"]
    write, exit_now = os.write, os._exit  # kept: the program may replace them in `os`

    def report(kind: str, phase: str, message: str) -> None:
        line = f"{token} {kind} {phase} {' '.join(message.split())[:1000]}\n"
        write(report_fd, line.encode("utf-8", "replace"))

    _isolate_network()
    _set_limits(job["memory_mb"], job["cpu_seconds"])
    if job["guards"]:
        _install_guards(job["workdir"])
    import types

    # A real module, so that pickle, dataclasses and the like find it; not "__main__", so that
    # `if __name__ == "__main__":` blocks do not run (as in the reference HumanEval harness).
    module = types.ModuleType("__sandbox__")
    sys.modules["__sandbox__"] = module
    phase = "program"
    try:
        program = compile(job["program"], "<program>", "exec")
        tests = compile(job["tests"], "<tests>", "exec")
        exec(program, module.__dict__)
        phase = "tests"
        exec(tests, module.__dict__)
    except BaseException as exc:  # SystemExit and KeyboardInterrupt too: they end the tests early
        kind = "assertion" if isinstance(exc, AssertionError) else "exception"
        try:
            message = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        except BaseException:  # a hostile __str__
            message = type(exc).__name__
        if isinstance(exc, SystemExit):
            message += " (the program exited before its tests finished)"
        report(kind, phase, message)
        exit_now(1)
    report("passed", "tests", "")
    exit_now(0)  # now: atexit handlers or threads the program left must not change the result


def _isolate_network() -> None:
    """Move this process into a new network namespace (only a down loopback), if allowed."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        if libc.unshare(_CLONE_NEWNET) != 0:  # needs root; else try an unprivileged user namespace
            libc.unshare(_CLONE_NEWUSER | _CLONE_NEWNET)
    except Exception:  # no ctypes or no libc: the Python-level socket guards still apply
        pass


def _set_limits(memory_mb: int, cpu_seconds: int) -> None:
    """Resource limits; soft and hard equal (CPU: +1 s hard) so the program cannot raise them."""
    import resource

    memory = memory_mb * 1024 * 1024
    file_size = MAX_FILE_MB * 1024 * 1024
    limits = {
        resource.RLIMIT_AS: (memory, memory),
        resource.RLIMIT_DATA: (memory, memory),
        resource.RLIMIT_CPU: (cpu_seconds, cpu_seconds + 1),  # SIGXCPU first, then SIGKILL
        resource.RLIMIT_FSIZE: (file_size, file_size),
        resource.RLIMIT_CORE: (0, 0),
        resource.RLIMIT_NPROC: (MAX_PROCS, MAX_PROCS),
    }
    for which, (soft, hard) in limits.items():
        old_soft, old_hard = resource.getrlimit(which)
        if old_hard != resource.RLIM_INFINITY:  # a limit can only be lowered
            hard, soft = min(hard, old_hard), min(soft, old_hard)
        resource.setrlimit(which, (soft, hard))


def _install_guards(workdir: str) -> None:
    """Replace dangerous functions with ones that raise PermissionError (see the module doc)."""
    import _io
    import _posixsubprocess
    import _socket
    import builtins
    import io
    import posix
    import resource
    import socket

    root = os.path.realpath(workdir)
    real_open, real_os_open = builtins.open, os.open

    def inside(path) -> bool:
        try:
            resolved = os.path.realpath(os.fsdecode(os.fspath(path)))
        except (TypeError, ValueError):
            return False
        return resolved == root or resolved.startswith(root + os.sep)

    def deny(name: str):
        def denied(*args, **kwargs):
            raise PermissionError(f"{name} is disabled in the sandbox")

        return denied

    def check_path(name: str, path) -> None:
        if isinstance(path, int):  # an fd the process already holds
            return
        if not inside(path):
            raise PermissionError(f"{name}: {path!r} is outside the sandbox directory")

    def confined(name: str, func, npaths: int = 1):
        """``func`` on paths inside the working directory only (no dir_fd tricks)."""

        def wrapper(*args, **kwargs):
            if any(kwargs.get(k) is not None for k in ("dir_fd", "src_dir_fd", "dst_dir_fd")):
                raise PermissionError(f"{name} with dir_fd is disabled in the sandbox")
            for path in args[:npaths]:
                if isinstance(path, int) or not inside(path):
                    raise PermissionError(f"{name}: {path!r} is outside the sandbox directory")
            return func(*args, **kwargs)

        return wrapper

    def guarded_open(file, mode="r", *args, **kwargs):
        if any(c in mode for c in "wax+"):
            check_path("open", file)
        return real_open(file, mode, *args, **kwargs)

    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND

    def guarded_os_open(path, flags, mode=0o777, *, dir_fd=None):
        if flags & write_flags:
            if dir_fd is not None:
                raise PermissionError("os.open for writing with dir_fd is disabled in the sandbox")
            check_path("os.open", path)
        return real_os_open(path, flags, mode, dir_fd=dir_fd)

    class GuardedFileIO(_io.FileIO):
        def __init__(self, file, mode="r", *args, **kwargs):
            if any(c in mode for c in "wax+"):
                check_path("FileIO", file)
            super().__init__(file, mode, *args, **kwargs)

    builtins.open = io.open = _io.open = guarded_open
    io.FileIO = _io.FileIO = GuardedFileIO
    os_replacements = {"open": guarded_os_open}
    for name, npaths in [("remove", 1), ("unlink", 1), ("rmdir", 1), ("mkdir", 1), ("rename", 2),
                         ("replace", 2), ("truncate", 1), ("utime", 1), ("mkfifo", 1), ("mknod", 1)]:
        os_replacements[name] = confined(f"os.{name}", getattr(os, name), npaths)
    for name in [
        # processes and programs
        "system", "popen", "fork", "forkpty", "posix_spawn", "posix_spawnp",
        "execl", "execle", "execlp", "execlpe", "execv", "execve", "execvp", "execvpe",
        "spawnl", "spawnle", "spawnlp", "spawnlpe", "spawnv", "spawnve", "spawnvp", "spawnvpe",
        # other processes, privileges, sessions, namespaces (setns: back to the host network)
        "kill", "killpg", "setpriority", "sched_setaffinity", "sched_setscheduler", "sched_setparam",
        "setuid", "setgid", "seteuid", "setegid", "setreuid", "setregid", "setresuid", "setresgid",
        "setgroups", "initgroups", "setsid", "setpgid", "setpgrp", "unshare", "setns",
        # permissions, links, the working directory (putenv stays: numpy calls it on import,
        # and with process creation disabled the environment only affects this process)
        "chmod", "fchmod", "lchmod", "chown", "fchown", "lchown", "chflags", "lchflags",
        "link", "symlink", "chdir", "fchdir", "chroot", "setxattr", "removexattr",
    ]:
        os_replacements[name] = deny(f"os.{name}")
    for name, replacement in os_replacements.items():
        for module in (os, posix):  # os re-exports posix: patch both names
            if hasattr(module, name):
                setattr(module, name, replacement)

    shutil.rmtree, shutil.move, shutil.chown = deny("shutil.rmtree"), deny("shutil.move"), deny("shutil.chown")
    # Root may raise its own hard limits, and prlimit reaches other processes.
    resource.setrlimit, resource.prlimit = deny("resource.setrlimit"), deny("resource.prlimit")
    signal.pidfd_send_signal = deny("signal.pidfd_send_signal")
    _posixsubprocess.fork_exec = deny("_posixsubprocess.fork_exec")

    class NoPopen(subprocess.Popen):  # a class, so that subclasses elsewhere still import
        def __init__(self, *args, **kwargs):
            raise PermissionError("subprocess is disabled in the sandbox")

    subprocess.Popen = NoPopen
    for name in ["call", "check_call", "check_output", "run", "getoutput", "getstatusoutput"]:
        setattr(subprocess, name, deny(f"subprocess.{name}"))

    class NoSocket(socket.socket):  # a class: ssl and others subclass socket.socket at import
        def __init__(self, *args, **kwargs):
            raise PermissionError("network access is disabled in the sandbox")

    socket.socket = socket.SocketType = _socket.socket = _socket.SocketType = NoSocket
    for name in ["socketpair", "fromfd", "create_connection", "create_server", "getaddrinfo",
                 "gethostbyname", "gethostbyname_ex", "gethostbyaddr", "getnameinfo"]:
        for module in (socket, _socket):
            if hasattr(module, name):
                setattr(module, name, deny(f"socket.{name}"))

    # Modules that reach libc or write files from C, past these guards, cannot be imported.
    for name in _BLOCKED_MODULES:
        sys.modules[name] = None  # type: ignore[assignment]


if __name__ == "__main__":
    _child_main()
