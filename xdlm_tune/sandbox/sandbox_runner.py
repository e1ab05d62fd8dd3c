"""The sandbox's child side: confine this process, run program and tests, report the verdict.

`execute.py` (the parent) starts this file as a script with a fresh ``python -I -B -S``, feeds
it the job on stdin and reads the verdict from a pipe. Standard library only.

Why the program cannot forge "passed":

- The report pipe is authenticated by a random per-run token that lives in one place only: the
  locals of a suspended generator (the *vault*), referenced only by an audit hook. Audit hooks
  cannot be listed or removed from Python; a generator's locals are reachable only through its
  frame (``gi_frame``, denied); the job data that carried the token is cleared before the
  program runs. The runner's own frame holds nothing secret.
- The vault writes a report only while the runner's frame (captured before the program ran) is
  on its own report line. The pass line comes right after ``exec`` of the tests returned
  normally, so "passed" cannot be reported from anywhere else: a program that raises the report
  event itself is blocked.
- Everything CPython audits that leads to another frame's locals or to raw memory is denied:
  ``sys._getframe`` (except from three stdlib functions that only read a module name),
  ``sys._current_frames``, ``tb_frame``/``gi_frame``/``cr_frame``/``ag_frame``, gc object walks,
  trace/profile/audit hooks, every ctypes call, opening /proc (e.g. /proc/self/mem), device
  nodes or directories (the last closes ``dir_fd`` tricks), links, and leaving the working
  directory. Reading the tests' code objects (``check.__code__``) is denied too. With the
  guards on, so are writes outside the working directory, processes, signals, rlimits and
  sockets: what sandbox_guards refuses in Python, for when a guard's original is reached.
- While the hook runs, the garbage collector is paused, so no finalizer or gc callback of the
  program runs inside it; Python signal handlers (which receive a frame unaudited) cannot be
  installed (sandbox_guards). The hook touches an argument only after checking its exact type.

A blocked action ends the run at once with an authenticated ``blocked <what>`` report, even if
the program would catch the exception. The parent also screens the source before it runs
(screen.py). Residual risks are listed in the README's sandbox section.
"""

from __future__ import annotations

import marshal
import os
import signal
import sys

PASS_EVENT = "xdlm.sandbox.passed"  # raised only by the runner's pass line
REPORT_EVENT = "xdlm.sandbox.report"  # raised only by the runner's failure line
BLOCK_EVENT = "xdlm.sandbox.blocked"  # raised by the Python-level guards
BLOCKED_EXIT = 97
_FRAME_ATTRS = frozenset({"tb_frame", "gi_frame", "cr_frame", "ag_frame"})
_CODE_ATTRS = frozenset({"__code__", "gi_code", "cr_code", "ag_code"})
# Tables: one event per line would double their length.
# fmt: off
_HOOK_EVENTS = frozenset({"sys.settrace", "sys.setprofile", "sys.addaudithook",
                          "sys.monitoring.register_callback", "sys.monitoring.set_events"})
_GC_EVENTS = frozenset({"gc.get_objects", "gc.get_referrers", "gc.get_referents"})
# Changes to one path (args[0]), allowed inside the working directory only. Descriptors (ints)
# are refused for those that work on read-only descriptors (chmod, chown, utime).
_WRITE_EVENTS = frozenset({"os.remove", "os.rmdir", "os.mkdir", "os.truncate", "os.utime", "os.chmod",
                           "os.chown", "os.chflags", "os.lchflags", "os.setxattr", "os.removexattr"})
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
_PROCESS_EVENTS = frozenset({"os.exec", "os.fork", "os.forkpty", "os.posix_spawn", "os.spawn",
                             "os.system", "subprocess.Popen", "pty.spawn", "os.startfile", "os.kill",
                             "os.killpg", "resource.setrlimit", "resource.prlimit"})
# Readable device nodes; any other (e.g. /dev/mem, or one made with mknod) is blocked.
_DEVICES_OK = frozenset({"/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom"})
# fmt: on


def main() -> None:
    """Inside the sandbox: read the job, confine this process, run program and tests, report."""
    job = marshal.loads(_read_all(0))
    # A parent started in the background (`cmd &` in a script, nohup) ignores SIGINT, and the
    # child inherits that: Python then installs no KeyboardInterrupt handler. Restore it, so a
    # program's verdict does not depend on how the evaluation was launched.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)  # the program sees an empty stdin
    os.close(null)
    sys.path.extend(job["site_packages"])
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import sandbox_limits  # the process-level confinement (network namespace, rlimits)

    del sys.path[0]
    sandbox_limits.isolate_network()
    sandbox_limits.set_limits(job)
    _run(job)


def _run(job: dict) -> None:
    """Run the program, then the tests, in one module namespace; report through the vault."""
    import types

    # Bound now: the program may replace any of these names in builtins, sys or os.
    _exec, _compile, _audit, _exit, _str = exec, compile, sys.audit, os._exit, str
    _BaseException, _AssertionError, _SystemExit, _isinstance, _type = (
        BaseException,
        AssertionError,
        SystemExit,
        isinstance,
        type,
    )
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import sandbox_guards  # the Python-level guards (layer 5) and the tamper check

    del sys.path[0]
    if job["guards"]:
        sandbox_guards.install(job["workdir"], job["blocked_modules"])
    # A real module, so that pickle, dataclasses and the like find it; not "__main__", so that
    # `if __name__ == "__main__":` blocks do not run (as in the reference HumanEval harness).
    module = types.ModuleType("__sandbox__")
    sys.modules["__sandbox__"] = module
    phase, kind, message = "program", None, ""
    try:  # compiled before any program code runs
        program = _compile(job["program"], "<program>", "exec")
        tests = _compile(job["tests"], "<tests>", "exec")
    except _BaseException as exc:
        program = tests = exc
    tampered = sandbox_guards.tamper_check(module.__dict__, tests) if _type(tests) is _type(_run.__code__) else None
    _install_hook(job, sys._getframe(0))
    job.clear()  # from here on the token is in the vault only
    try:
        if _isinstance(program, _BaseException) or _isinstance(tests, _BaseException):
            raise program if _isinstance(program, _BaseException) else tests
        _exec(program, module.__dict__)
        message = tampered()
        if not message:
            phase = "tests"
            _exec(tests, module.__dict__)
            message = tampered()
        if message:
            kind = "blocked"
    except _BaseException as exc:  # SystemExit and KeyboardInterrupt too: they end the tests early
        kind = "assertion" if _isinstance(exc, _AssertionError) else "exception"
        try:
            text = _str(exc)
            message = f"{_type(exc).__name__}: {text}" if text else _type(exc).__name__
        except _BaseException:  # a hostile __str__
            message = "an exception whose message cannot be shown"
        if _isinstance(exc, _SystemExit):
            message += " (the program exited before its tests finished)"
        del exc
    if kind is None:
        _audit("xdlm.sandbox.passed")  # the pass line: the vault checks that this frame is here
    _audit("xdlm.sandbox.report", kind, phase, message if _type(message) is _str else "?")  # failure line
    _exit(1)  # not reached (the vault exits), unless the program broke the vault: not a pass


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 1 << 20):
        chunks.append(chunk)
    return b"".join(chunks)


# ------------------------------------------------------------------------ the vault and the hook


def _report_lines(code) -> tuple[int, int]:
    """Source lines of the runner's pass and failure reports (where PASS/REPORT_EVENT are loaded)."""
    from opcode import opmap  # dis would do, at ten times the import time

    lines = {}
    positions = code.co_positions()  # one entry per 2-byte code unit
    for op, arg, (line, *_) in zip(code.co_code[::2], code.co_code[1::2], positions):
        if op == opmap["LOAD_CONST"] and code.co_consts[arg] in (PASS_EVENT, REPORT_EVENT):
            lines[code.co_consts[arg]] = line
    return lines[PASS_EVENT], lines[REPORT_EVENT]


def _vault(tokens: tuple, fd: int, runner_frame, pass_line: int, report_line: int, write, exit_):
    """Generator holding the tokens; each ``send((source, kind, phase, message))`` ends the run.

    Two tokens: the pass token is written only on a genuine pass, so a program that manages to
    read a failure report (e.g. a thread, while this writes) learns nothing it could pass with.
    """
    request = yield
    while True:
        source, kind, phase, message = request
        if source == "runner":  # only genuine while the runner's frame is on that report line
            if runner_frame.f_lineno != (pass_line if kind == "passed" else report_line):
                source, kind, phase, message = "hook", "blocked", "tests", "blocked: a forged report"
        if source == "hook":
            kind, phase = "blocked", phase or "program"
        message = " ".join(message.split())[:1000]
        token = tokens[0] if kind == "passed" else tokens[1]
        write(fd, f"{token} {kind} {phase} {message}\n".encode("utf-8", "replace"))
        exit_(0 if kind == "passed" else BLOCKED_EXIT if kind == "blocked" else 1)
        request = yield


def _install_hook(job: dict, runner_frame) -> None:
    """Create the vault and add the audit hook that guards it (see the module doc)."""
    import _stat
    import _thread
    import collections
    import enum
    import gc
    import types
    import typing

    pass_line, report_line = _report_lines(runner_frame.f_code)
    tokens = (job["pass_token"], job["report_token"])
    vault = _vault(tokens, job["report_fd"], runner_frame, pass_line, report_line, os.write, os._exit)
    del tokens
    next(vault)
    root = os.path.realpath(job["workdir"])
    confine = job["guards"]
    proc_dev = os.stat("/proc").st_dev if os.path.isdir("/proc") else -1
    modules = sys.modules
    loaded = frozenset(modules)  # re-creating any of these would undo a guard
    blocked_modules = frozenset(job["blocked_modules"])
    # The only callers allowed sys._getframe: they read the caller's module name and drop the frame.
    getframe_callers = (collections.namedtuple.__code__, typing._caller.__code__, enum.EnumType._create_.__code__)
    getframe_ids = frozenset(id(c) for c in getframe_callers)
    code_attrs = (
        (types.FunctionType, "__code__"),
        (types.GeneratorType, "gi_code"),
        (types.CoroutineType, "cr_code"),
        (types.AsyncGeneratorType, "ag_code"),
    )
    _type, _str, _bytes, _int, _id, _len, _getattr = type, str, bytes, int, id, len, getattr
    _BaseException, _OSError = BaseException, OSError
    _getframe, _lstat, _readlink, _get_ident = sys._getframe, os.lstat, os.readlink, _thread.get_ident
    _isenabled, _disable, _enable = gc.isenabled, gc.disable, gc.enable
    S_ISLNK, S_ISDIR, S_ISCHR, S_ISBLK = _stat.S_ISLNK, _stat.S_ISDIR, _stat.S_ISCHR, _stat.S_ISBLK
    O_TMPFILE = getattr(os, "O_TMPFILE", -1)  # an unnamed file in a directory, not the directory
    # The one audit event the hook's own next look-up raises: (thread, event, attribute or None).
    # One-shot and exact, so a finalizer that runs meanwhile gains nothing it could use.
    expected = [None]
    # A table: one event per line would double its length.
    # fmt: off
    watched = frozenset({"sys._getframe", "sys._current_frames", "sys._current_exceptions",
                         "object.__getattr__", "import", "open", "os.listdir", "os.scandir",
                         "os.symlink", "os.link", "os.rename", "os.chdir", PASS_EVENT, REPORT_EVENT,
                         BLOCK_EVENT}) | _HOOK_EVENTS | _GC_EVENTS | _PROCESS_EVENTS | _WRITE_EVENTS
    # fmt: on

    def realpath(path: str):
        """(``path`` absolute with every symlink resolved, its lstat or None if it does not exist,
        whether the walk passed through /proc), with lstat and readlink only: nothing patchable."""
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
        """Is ``path`` an entry of the working directory tree (or, if ``or_root``, the directory
        itself: open() of a directory with an opener, O_TMPFILE; the real open is audited too)?"""
        if _type(path) is _bytes:
            path = path.decode("utf-8", "surrogateescape")
        if _type(path) is not _str:
            return False
        if or_root and realpath(path)[0] == root:
            return True
        parent, _, name = (path if path.startswith("/") else root + "/" + path).rpartition("/")
        real = realpath(parent or "/")[0]
        return (real == root or real.startswith(root + "/")) and name not in ("", ".", "..")

    def own(event: str, attribute, lookup, *args):
        """``lookup(*args)``, letting through the one audit event it raises itself."""
        expected[0] = (_get_ident(), event, attribute)
        try:
            return lookup(*args)
        finally:
            expected[0] = None

    def caller_code():
        frame = own("sys._getframe", None, _getframe, 4)  # 0 own, 1 here, 2 policy, 3 the hook, 4 caller
        return own("object.__getattr__", "f_code", _getattr, frame, "f_code")

    def tests_code(obj) -> bool:
        """Is ``obj`` a function (or generator, coroutine) compiled from the tests?"""
        for cls, name in code_attrs:  # identity only: nothing of the program's runs here
            if _type(obj) is cls:
                return own("object.__getattr__", name, _getattr, obj, name).co_filename == "<tests>"
        return False

    def policy(event: str, args: tuple):
        """None if ``event`` may go ahead, else what is blocked."""
        if event == "sys._getframe":
            return None if _id(caller_code()) in getframe_ids else "frame introspection (sys._getframe)"
        if event == "object.__getattr__":
            name = args[1] if _len(args) == 2 else None
            if _type(name) is not _str:
                return None
            if name in _FRAME_ATTRS:
                return f"frame introspection (.{name})"
            if name in _CODE_ATTRS and tests_code(args[0]):
                return f"reading the tests' code (.{name})"
            return None
        if event in ("sys._current_frames", "sys._current_exceptions"):
            return f"frame introspection ({event})"
        if event in _GC_EVENTS:
            return f"object graph walk ({event})"
        if event in _HOOK_EVENTS:
            return f"trace, profile or audit hook ({event})"
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
        if _type(event) is not _str or (event not in watched and not event.startswith(("ctypes.", "socket."))):
            return
        mine = expected[0]
        if mine is not None and mine[1] == event and mine[0] == _get_ident():
            if mine[2] is None or (_len(args) == 2 and _type(args[1]) is _str and args[1] == mine[2]):
                expected[0] = None
                return  # the hook's own look-up
        gc_was_on = _isenabled()
        _disable()  # no finalizer or gc callback of the program may run inside the hook
        try:
            if event == PASS_EVENT:
                vault.send(("runner", "passed", "tests", ""))
            if event == REPORT_EVENT:
                kind, phase, message = args if _len(args) == 3 else ("?", "tests", "?")
                if _type(kind) is not _str or _type(phase) is not _str or _type(message) is not _str:
                    kind, phase, message = "?", "tests", "a malformed report"
                vault.send(("runner", kind if kind in ("assertion", "exception", "blocked") else "?", phase, message))
            what = policy(event, args)
        except _BaseException:  # a bug here, or a broken vault: never let it pass silently
            what = "an error inside the sandbox's audit hook"
        if what is not None:
            vault.send(("hook", "blocked", "", f"blocked: {what}"))
        if gc_was_on:
            _enable()

    sys.addaudithook(hook)


if __name__ == "__main__":
    main()
