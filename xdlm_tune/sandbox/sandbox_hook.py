"""The jailed process's audit hook: defence in depth for the machine, never for the verdict.

Loaded by sandbox_runner.py (by file location, standard library only) before the program runs.
The verdict is not in this process (judge.py decides it), so nothing here needs to hold for a
pass to be honest. What the hook still refuses, for the in-process mode where no OS jail exists
and as a second wall inside one: opening /proc (other processes' memory and descriptors),
device nodes, directories (``dir_fd`` tricks); links, renames across and writes outside the
working directory; changing it; every ctypes call; importing the modules that reach libc or
write files from C (``blocked_modules``) or re-creating one the Python guards changed; and, with
the guards on, processes, signals, rlimits and sockets. A refused action ends the run at once
with a ``blocked`` message to the judge (an error, never a pass). CPython's audit hooks are not
a security boundary (its documentation says so): the OS jail (jail.py) is.
"""

from __future__ import annotations

import os
import sys

BLOCK_EVENT = "xdlm.sandbox.blocked"  # raised by the Python-level guards (sandbox_guards)
BLOCKED_EXIT = 97
# fmt: off
_WRITE_EVENTS = frozenset({"os.remove", "os.rmdir", "os.mkdir", "os.truncate", "os.utime", "os.chmod",
                           "os.chown", "os.chflags", "os.lchflags", "os.setxattr", "os.removexattr"})
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
_PROCESS_EVENTS = frozenset({"os.exec", "os.fork", "os.forkpty", "os.posix_spawn", "os.spawn",
                             "os.system", "subprocess.Popen", "pty.spawn", "os.startfile", "os.kill",
                             "os.killpg", "resource.setrlimit", "resource.prlimit"})
# Readable device nodes; any other (e.g. /dev/mem, or one made with mknod) is blocked.
_DEVICES_OK = frozenset({"/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom"})
_WATCHED = frozenset({"import", "open", "os.listdir", "os.scandir", "os.symlink", "os.link", "os.rename",
                      "os.chdir", BLOCK_EVENT}) | _PROCESS_EVENTS | _WRITE_EVENTS
# fmt: on


def install(job: dict, report_blocked) -> None:
    """Add the hook; ``report_blocked(what)`` tells the judge and ends this process."""
    import _stat

    root = os.path.realpath(job["workdir"])
    confine = job["guards"]
    proc_dev = os.stat("/proc").st_dev if os.path.isdir("/proc") else -1
    modules = sys.modules
    loaded = frozenset(modules)  # re-creating any of these would undo a guard
    blocked_modules = frozenset(job["blocked_modules"])
    _type, _str, _bytes, _int, _len = type, str, bytes, int, len
    _BaseException, _OSError, _lstat, _readlink = BaseException, OSError, os.lstat, os.readlink
    S_ISLNK, S_ISDIR, S_ISCHR, S_ISBLK = _stat.S_ISLNK, _stat.S_ISDIR, _stat.S_ISCHR, _stat.S_ISBLK
    O_TMPFILE = getattr(os, "O_TMPFILE", -1)  # an unnamed file in a directory, not the directory

    def realpath(path: str):
        """(``path`` absolute with every symlink resolved, its lstat or None, whether the walk
        passed through /proc), with lstat and readlink only: nothing the program can patch."""
        pending = (path if path.startswith("/") else root + "/" + path).split("/")[::-1]
        done, hops, via_proc = "", 0, False
        while pending:
            name = pending.pop()
            if name in ("", "."):
                continue
            if name == "..":
                done = done.rpartition("/")[0]
                continue
            candidate = done + "/" + name
            via_proc = via_proc or candidate == "/proc"
            try:
                st = _lstat(candidate)
            except _OSError:
                return candidate + "/" + "/".join(pending[::-1]), None, via_proc  # does not exist (yet)
            if S_ISLNK(st.st_mode):
                hops += 1
                if hops > 40:
                    return candidate, None, via_proc
                target = _readlink(candidate)
                if target.startswith("/"):
                    done = ""
                pending.extend(target.split("/")[::-1])
            else:
                done = candidate
        done = done or "/"
        return done, _lstat(done), via_proc

    def forbidden_path(path, opening_fd: bool, flags=0):
        if _type(path) is _bytes:
            path = path.decode("utf-8", "surrogateescape")
        elif _type(path) is not _str:
            return "an unusual path object"
        real, st, via_proc = realpath(path)
        if via_proc or real == "/proc" or real.startswith("/proc/") or (st is not None and st.st_dev == proc_dev):
            return "reading /proc (the process's memory and file descriptors)"
        if opening_fd and st is not None:  # os.open: the program gets the descriptor
            if S_ISDIR(st.st_mode) and (_type(flags) is not _int or flags & O_TMPFILE != O_TMPFILE):
                return "opening a directory (dir_fd tricks)"
        if st is not None and (S_ISCHR(st.st_mode) or S_ISBLK(st.st_mode)) and real not in _DEVICES_OK:
            return f"opening the device {real}"
        return None

    def inside(path, or_root: bool = False) -> bool:
        """Is ``path`` an entry of the working directory tree (or, if ``or_root``, the directory)?"""
        if _type(path) is _bytes:
            path = path.decode("utf-8", "surrogateescape")
        if _type(path) is not _str:
            return False
        if or_root and realpath(path)[0] == root:
            return True
        parent, _, name = (path if path.startswith("/") else root + "/" + path).rpartition("/")
        real = realpath(parent or "/")[0]
        return (real == root or real.startswith(root + "/")) and name not in ("", ".", "..")

    def policy(event: str, args: tuple):
        """None if ``event`` may go ahead, else what is blocked."""
        if event.startswith("ctypes."):
            return "ctypes"
        if event == "import":  # raised only for modules not in sys.modules (or set to None there)
            name = args[0] if args else None
            if _type(name) is not _str or not (name in blocked_modules or name in loaded):
                return None
            if modules.get(name, modules) is None:
                return None  # the import fails with ModuleNotFoundError, as guarded
            return f"importing {name} (a blocked module, or re-creating one the guards changed)"
        if event == "open":  # (path, mode, flags); mode is None for os.open
            path, flags = (args[0], args[2]) if _len(args) == 3 else (None, 0)
            if _type(path) is _int:
                return None
            if confine and (_type(flags) is not _int or flags & _WRITE_FLAGS) and not inside(path, True):
                return "writing outside the working directory (open)"
            return forbidden_path(path, args[1] is None, flags)
        if event in ("os.listdir", "os.scandir"):
            return None if args[0] is None or _type(args[0]) is _int else forbidden_path(args[0], False)
        if event in ("os.symlink", "os.link"):
            return "creating links"
        if event == "os.rename":
            return None if inside(args[0]) and inside(args[1]) else "renaming across the working directory"
        if event == "os.chdir":
            return "changing the working directory"
        if event == BLOCK_EVENT:
            return args[0] if args and _type(args[0]) is _str else "?"
        if confine and event in _WRITE_EVENTS:
            path = args[0] if args else None
            if _type(path) is _int and event == "os.truncate":
                return None  # ftruncate needs a descriptor open for writing: opened inside
            return None if inside(path) else f"changing files outside the working directory ({event})"
        if confine and event in _PROCESS_EVENTS:
            return f"processes, signals or limits ({event})"
        if confine and event.startswith("socket."):
            return f"network access ({event})"
        return None

    def hook(event, args):
        if _type(event) is not _str or (event not in _WATCHED and not event.startswith(("ctypes.", "socket."))):
            return
        try:
            what = policy(event, args)
        except _BaseException:  # a bug here, or a hostile argument: never let it through silently
            what = "an error inside the sandbox's audit hook"
        if what is not None:
            report_blocked(f"blocked: {what}")

    sys.addaudithook(hook)
