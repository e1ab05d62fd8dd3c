"""Python-level guards of the sandbox (layer 5), installed by sandbox_runner before the program runs.

Creating processes, sending signals, changing privileges, permissions or the working directory
raise PermissionError; files may be written, created, renamed or removed only inside the
working directory; ctypes and the modules that write files from C (sqlite3, dbm, readline,
POSIX shared memory) cannot be imported. These replace Python functions, so they stop careless
and accidental damage; code written to get around them can reach some originals (e.g. through
a wrapper's ``__closure__``). What must hold even then is enforced by the kernel (jail.py)
or by the audit hook (sandbox_hook.py). None of this protects the verdict, which is not in this
process at all (judge.py): these are defence in depth for the machine.

Three guards keep no reference to the function they replace and end the run as blocked
(through the hook's BLOCK_EVENT) instead of raising (they were the verdict's guards when the
verdict lived here; kept as defence in depth): installing a
Python signal handler (a handler receives the interrupted frame without any audited call),
``gc.set_debug`` (DEBUG_SAVEALL hands out garbage frames), and re-creating a built-in module
(which would bring the replaced originals back; every built-in module is imported first, so
none is left to create).
"""

from __future__ import annotations

import os
import shutil
import signal
import sys

BLOCK_EVENT = "xdlm.sandbox.blocked"  # same as sandbox_runner.BLOCK_EVENT


def install(workdir: str, blocked_modules: list[str]) -> None:
    """Replace dangerous functions with ones that raise PermissionError (see the module doc)."""
    _guard_verdict()
    _guard_files(os.path.realpath(workdir))
    _guard_processes_and_network()
    # Modules that reach libc or write files from C code, past these guards, cannot be imported.
    for name in blocked_modules:
        sys.modules[name] = None  # type: ignore[assignment]


def deny(name: str):
    def denied(*args, **kwargs):
        raise PermissionError(f"{name} is disabled in the sandbox")

    return denied


def _block(what: str):
    audit = sys.audit

    def blocked(*args, **kwargs):
        audit(BLOCK_EVENT, what)  # ends the run (the runner's hook); if it returns, refuse anyway
        raise PermissionError(f"{what} is disabled in the sandbox")

    return blocked


def _guard_verdict() -> None:
    import _imp
    import _signal
    import gc

    for name in sys.builtin_module_names:  # all of them now, so none is left to (re-)create
        if name not in sys.modules:
            __import__(name)
    original = _imp.create_builtin
    _imp.create_builtin = _block("re-creating a built-in module")
    _only_reference("_imp.create_builtin", original)
    # No original is kept anywhere (a wrapper's closure would hand it out).
    dfl, ign, blocked_handler, _type = signal.SIG_DFL, signal.SIG_IGN, _block("installing a signal handler"), type

    def guarded_signal(signalnum, handler):
        if handler is dfl or handler is ign or (_type(handler) is int and handler in (0, 1)):
            raise PermissionError("changing signal dispositions is disabled in the sandbox")
        blocked_handler()

    original = _signal.signal
    signal.signal = _signal.signal = guarded_signal
    _only_reference("_signal.signal", original)
    original = gc.set_debug
    gc.set_debug = _block("gc.set_debug")
    _only_reference("gc.set_debug", original)


def _guard_files(root: str) -> None:
    import _io
    import builtins
    import io
    import posix

    real_open, real_os_open = builtins.open, os.open

    def inside(path) -> bool:
        try:
            resolved = os.path.realpath(os.fsdecode(os.fspath(path)))
        except (TypeError, ValueError):
            return False
        return resolved == root or resolved.startswith(root + os.sep)

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
    replacements = {"open": guarded_os_open}
    for name, npaths in [
        ("remove", 1),
        ("unlink", 1),
        ("rmdir", 1),
        ("mkdir", 1),
        ("rename", 2),
        ("replace", 2),
        ("truncate", 1),
        ("utime", 1),
        ("mkfifo", 1),
    ]:
        replacements[name] = confined(f"os.{name}", getattr(os, name), npaths)
    for name in [
        # permissions, links, device nodes, the working directory (putenv stays: numpy calls it
        # on import, and with process creation disabled the environment only affects this process)
        "chmod",
        "fchmod",
        "lchmod",
        "chown",
        "fchown",
        "lchown",
        "chflags",
        "lchflags",
        "mknod",
        "link",
        "symlink",
        "chdir",
        "fchdir",
        "chroot",
        "setxattr",
        "removexattr",
    ]:
        replacements[name] = deny(f"os.{name}")
    _patch_os(posix, replacements)
    shutil.rmtree, shutil.move, shutil.chown = deny("shutil.rmtree"), deny("shutil.move"), deny("shutil.chown")


def _guard_processes_and_network() -> None:
    import _posixsubprocess
    import _socket
    import posix
    import resource
    import socket
    import subprocess

    replacements = {}
    for name in [
        # processes and programs
        "system",
        "popen",
        "fork",
        "forkpty",
        "posix_spawn",
        "posix_spawnp",
        "execl",
        "execle",
        "execlp",
        "execlpe",
        "execv",
        "execve",
        "execvp",
        "execvpe",
        "spawnl",
        "spawnle",
        "spawnlp",
        "spawnlpe",
        "spawnv",
        "spawnve",
        "spawnvp",
        "spawnvpe",
        # other processes, privileges, sessions, namespaces (setns: back to the host network)
        "kill",
        "killpg",
        "setpriority",
        "sched_setaffinity",
        "sched_setscheduler",
        "sched_setparam",
        "setuid",
        "setgid",
        "seteuid",
        "setegid",
        "setreuid",
        "setregid",
        "setresuid",
        "setresgid",
        "setgroups",
        "initgroups",
        "setsid",
        "setpgid",
        "setpgrp",
        "unshare",
        "setns",
    ]:
        replacements[name] = deny(f"os.{name}")
    _patch_os(posix, replacements)
    # Root may raise its own hard limits, and prlimit reaches other processes.
    resource.setrlimit, resource.prlimit = deny("resource.setrlimit"), deny("resource.prlimit")
    signal.pidfd_send_signal = deny("signal.pidfd_send_signal")
    # fork_exec (fork + exec of any program, with no audit event) must be gone, not just renamed:
    # subprocess keeps its own reference, and any other one left would hand it back.
    original = _posixsubprocess.fork_exec
    _posixsubprocess.fork_exec = subprocess._fork_exec = deny("_posixsubprocess.fork_exec")
    _only_reference("_posixsubprocess.fork_exec", original)
    del original

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
    for name in [
        "socketpair",
        "fromfd",
        "create_connection",
        "create_server",
        "getaddrinfo",
        "gethostbyname",
        "gethostbyname_ex",
        "gethostbyaddr",
        "getnameinfo",
    ]:
        for module in (socket, _socket):
            if hasattr(module, name):
                setattr(module, name, deny(f"socket.{name}"))


def _only_reference(name: str, original) -> None:
    """Fail the setup (never the program) if anything but the caller still holds ``original``."""
    held = sys.getrefcount(original) - 3  # this argument, the caller's variable, getrefcount's own
    if held:
        raise RuntimeError(f"sandbox setup: {held} other reference(s) to {name} remain")


def _patch_os(posix, replacements: dict) -> None:
    for name, replacement in replacements.items():
        for module in (os, posix):  # os re-exports posix: patch both names
            if hasattr(module, name):
                setattr(module, name, replacement)
