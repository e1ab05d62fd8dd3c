"""The trusted side: run the benchmark's tests here, with the program's names as proxies.

`execute.py` starts this file with a fresh ``python -I -B -S`` (outside the jail, with the
evaluator's rights and the same resource limits) and the job (the tests) on stdin. Standard
library only. The tests are data from the benchmark, not from the model, so they run here; the
program runs in the jail (sandbox_runner.py), and the two talk over two pipes (wire.py).

Every name the program defined becomes, in the tests' namespace, either a plain value it sent,
the real standard-library module of that name (``import math`` in the program gives the tests
this process's own ``math``), or a :class:`Remote` handle. Calling a handle runs the real function
in the jail; what comes back is plain data (exact built-in types, built here) or another handle.
Handles can be called, have attributes read and set, be iterated, indexed, measured (``len``),
printed and tested for truth, and be passed back to the program: that is the path for tests
that need the program's own objects (a class it defines, a generator, state across calls).
Callables of the tests passed to the program (callbacks) run here, on plain data. What a handle
never does is take part in a decision: ``==``, ``<``, ``in``, ``hash`` on one end the run as
``wrong_answer`` "returned a <type>", even if the tests catch the exception. So an object of the
program's with an ``__eq__`` of its own can never make an assertion true, and nothing the
program could read in its own memory (it holds no expected value) helps it pass.

Names that shadow a builtin (``def sorted``) are not taken from the program, unless nothing
else of the program's is used by the tests (then it is the function under test): the tests'
builtins are this process's own. Builtins the tests pass (``int``, ``len``) arrive as the jail's
own builtin of that name, not as callbacks.
"""

from __future__ import annotations

import builtins
import marshal
import os
import signal
import sys

# Standard-library modules the judge would not import for a program's name (side effects).
_NOT_IMPORTED = frozenset(
    {"antigravity", "this", "idlelib", "tkinter", "turtle", "turtledemo", "webbrowser", "test", "lib2to3", "ensurepip"}
)
_ALSO_IMPORTED = frozenset({"numpy"})  # installed with the toolkit; tests may use the program's `np`
_TEXT = 1000


class Opaque(BaseException):
    """A decision was asked of a program object (``==``, ``hash``, ``in``): a wrong answer."""


class ProgramExit(BaseException):
    """The program exited (SystemExit, KeyboardInterrupt) inside a call, or its process is gone."""


class Judge:
    """One run's side of the protocol, and the facts that decide its verdict."""

    def __init__(self, job: dict, wire) -> None:
        self.wire, self.rfd, self.wfd = wire, job["reply_fd"], job["request_fd"]
        self.seq = 0
        self.callbacks: list = []
        self.opaque: str | None = None  # the type of the first program object decided on
        self.ended: tuple[str, str] | None = None  # (status, detail) the jail forced
        self.objects = False  # did the tests use handles or callbacks (the "objects" path)?

    # ----------------------------------------------------------------------- the protocol

    def resolve(self, tag: str, args: list):
        if tag == "h" and len(args) == 2 and type(args[0]) is int and type(args[1]) is str:
            self.objects = True
            return Remote(self, args[0], args[1][:100])
        raise self.wire.Malformed(f"unknown tag {tag[:20]!r}")

    def encode(self, value):
        def ref(obj):
            if type(obj) is Remote:
                return ["r", object.__getattribute__(obj, "_xdlm_id")]
            name = getattr(obj, "__name__", None)
            if type(name) is str and vars(builtins).get(name) is obj:  # `int`, `len`: the jail's own
                return ["B", name]
            if callable(obj):
                self.objects = True
                self.callbacks.append(obj)
                return ["k", len(self.callbacks) - 1]
            raise TypeError(f"the tests passed a {type(obj).__name__}, which cannot cross into the sandbox")

        return self.wire.encode(value, ref, nested=True)

    def request(self, asked: str, target: Remote, *rest):
        """Send one request about ``target`` and wait for its answer, serving callbacks meanwhile."""
        self.seq += 1
        seq = self.seq
        self.send([asked, seq, ["r", object.__getattribute__(target, "_xdlm_id")], *rest])
        while True:
            message = self.receive()
            kind, args = message[0], message[1:]
            if kind == "ok" and len(args) == 2 and args[0] == seq:
                return self.decode(args[1])
            if kind == "raise" and len(args) == 4 and args[0] == seq and type(args[3]) is bool:
                if asked != "next" and args[1] in ("StopIteration", "StopAsyncIteration"):
                    args[1] = "RuntimeError"  # only iteration may end a loop of the tests (map, zip)
                raise self.exception(*args[1:])
            if kind == "cb" and len(args) == 3 and type(args[0]) is int and 0 <= args[0] < len(self.callbacks):
                self.callback(*args)
                continue
            self.protocol(message)

    def callback(self, cbid: int, args, kwargs) -> None:
        if (
            type(args) is not list
            or type(kwargs) is not list
            or any(type(p) is not list or len(p) != 2 for p in kwargs)
        ):
            self.protocol(["cb"])
        call_args = [self.decode(a) for a in args]
        call_kwargs = {str(k): self.decode(v) for k, v in kwargs}
        try:
            reply = ["cbok", self.encode(self.callbacks[cbid](*call_args, **call_kwargs))]
        except Exception as exc:  # Opaque and ProgramExit go on up: they end the tests
            reply = ["cbraise", type(exc).__name__, _text(exc)]
        self.send(reply)

    def exception(self, name, text, base: bool) -> BaseException:
        """The exception a call raised in the jail, as one of this process's own classes."""
        name, text = (name if type(name) is str else "?")[:100], (text if type(text) is str else "?")[:_TEXT]
        if base:  # SystemExit, KeyboardInterrupt: the program ended its own run
            self.end("error", f"{name}: {text}" if text else name)
            return ProgramExit(name)
        cls = getattr(builtins, name, None)
        if isinstance(cls, type) and issubclass(cls, Exception):
            try:
                return cls(text)
            except Exception:  # a class whose constructor needs more arguments
                pass
        return type(name if name.isidentifier() else "ProgramError", (Exception,), {})(text)

    def decide(self, remote: Remote):
        self.opaque = self.opaque or object.__getattribute__(remote, "_xdlm_type")
        raise Opaque(self.opaque)

    def end(self, status: str, detail: str) -> None:
        if self.ended is None:
            self.ended = (status, detail)

    def protocol(self, message: list):
        if message and message[0] == "blocked" and len(message) == 3 and type(message[2]) is str:
            self.end("error", f"{message[2][:_TEXT]} (in the {message[1] if message[1] == 'program' else 'tests'})")
        else:
            self.end("error", f"the program's process broke the protocol ({str(message[0])[:20]!r})")
        raise ProgramExit("protocol")

    def decode(self, data):
        try:
            return self.wire.decode(data, self.resolve)
        except self.wire.Malformed as exc:
            self.end("error", f"the program's process sent a malformed value ({exc})")
            raise ProgramExit("malformed") from None

    def send(self, message: list) -> None:
        try:
            self.wire.send(self.wfd, message)
        except OSError:  # the jail is gone
            self.gone()

    def receive(self) -> list:
        try:
            message = self.wire.receive(self.rfd)
        except self.wire.Malformed as exc:
            self.end("error", f"the program's process sent a malformed message ({exc})")
            raise ProgramExit("malformed") from None
        if message is None:
            self.gone()
        return message

    def gone(self):
        self.end("gone", "the program's process ended before its tests finished")
        raise ProgramExit("gone")

    # ---------------------------------------------------------------------------- the run

    def run(self, source: str) -> tuple[str, str]:
        """(status, detail) of the whole run; the "gone" status lets the parent name the cause."""
        try:
            tests = compile(source, "<tests>", "exec")
            namespace = self.namespace(tests)
            exec(tests, namespace)
        except BaseException as exc:  # SystemExit in the tests too: they did not finish
            failure = exc
        else:
            failure = None
        if self.ended is not None:
            return self.ended
        if self.opaque is not None:
            return "wrong_answer", f"returned a {self.opaque} (in the tests)"
        if failure is None:
            return "passed", ""
        status = "wrong_answer" if isinstance(failure, AssertionError) else "error"
        message = _text(failure)
        message = f"{type(failure).__name__}: {message}" if message else type(failure).__name__
        if isinstance(failure, SystemExit):
            message += " (the tests exited before they finished)"
        return status, f"{message} (in the tests)"

    def namespace(self, tests_code) -> dict:
        """The tests' globals: the program's names as plain values, real modules or handles."""
        message = self.receive()
        if message[0] == "failed" and len(message) == 4 and all(type(m) is str for m in message[1:]):
            kind, _, text = message[1:]
            status = "wrong_answer" if kind == "assertion" else "error"
            if kind == "exit":
                text += " (the program exited before its tests finished)"
            self.end(status, f"{text[:_TEXT]} (in the program)")
            raise ProgramExit("failed")
        if message[0] != "ready" or len(message) != 2 or type(message[1]) is not list:
            self.protocol(message)
        namespace = {"__builtins__": builtins, "__name__": "__tests__"}
        entries = message[1]
        if any(type(e) is not list or len(e) != 3 or type(e[0]) is not str or not e[0].isidentifier() for e in entries):
            self.protocol(["ready"])
        # A program name that shadows a builtin (`def sorted`) is not what the tests' `sorted`
        # means, unless it is the only thing of the program's the tests use (MBPP 126 asks for
        # a function called `sum`).
        used = set(_names(tests_code))
        shadowing = {e[0] for e in entries if e[0] in vars(builtins)}
        if not any(e[0] in used for e in entries if e[0] not in shadowing):
            shadowing = set()
        for name, module, value in entries:
            if name in shadowing or name not in used:  # the tests can only use names they name
                continue
            real = _stdlib_module(module) if type(module) is str else None
            if real is not None:
                namespace[name] = real
            else:
                namespace[name] = self.decode(value)
        self.objects = False  # the program's own globals are handles; only what the tests use counts
        return namespace


class Remote:
    """A handle to an object that stays in the jail (see the module doc for what it allows)."""

    __slots__ = ("_xdlm_judge", "_xdlm_id", "_xdlm_type")  # names no test reads off its objects

    def __init__(self, judge: Judge, id_: int, type_: str) -> None:
        object.__setattr__(self, "_xdlm_judge", judge)
        object.__setattr__(self, "_xdlm_id", id_)
        object.__setattr__(self, "_xdlm_type", type_)

    def _xdlm_ask(self, kind: str, *rest):
        judge = object.__getattribute__(self, "_xdlm_judge")
        judge.objects = True
        return judge.request(kind, self, *rest)

    def __call__(self, *args, **kwargs):
        judge = object.__getattribute__(self, "_xdlm_judge")
        encoded = [judge.encode(a) for a in args], [[k, judge.encode(v)] for k, v in kwargs.items()]
        return judge.request("call", self, *encoded)

    def __getattr__(self, name: str):
        if name.startswith("__"):  # protocol probes (__length_hint__, __fspath__, ...) stay here
            raise AttributeError(name)
        return self._xdlm_ask("getattr", name)

    def __setattr__(self, name: str, value) -> None:
        self._xdlm_ask("setattr", name, object.__getattribute__(self, "_xdlm_judge").encode(value))

    def __getitem__(self, key):
        return self._xdlm_ask("getitem", object.__getattribute__(self, "_xdlm_judge").encode(key))

    def __iter__(self):
        return self._xdlm_ask("iter")

    def __next__(self):
        return self._xdlm_ask("next")

    def __len__(self) -> int:
        return self._xdlm_ask("len")

    def __str__(self) -> str:
        return self._xdlm_ask("str")

    def __repr__(self) -> str:
        return self._xdlm_ask("repr")

    def __bool__(self) -> bool:
        return self._xdlm_ask("bool")

    def _xdlm_decide(self, *_):
        object.__getattribute__(self, "_xdlm_judge").decide(self)

    __eq__ = __ne__ = __lt__ = __le__ = __gt__ = __ge__ = __hash__ = __contains__ = _xdlm_decide


def _names(code) -> list[str]:
    """Every global or attribute name a code object and the code nested in it use."""
    names = list(code.co_names)
    for const in code.co_consts:
        if type(const) is type(code):
            names += _names(const)
    return names


def _stdlib_module(name: str):
    """This process's own module ``name`` if it is in the standard library (or numpy), else None."""
    top = name.partition(".")[0]
    if (top not in sys.stdlib_module_names and top not in _ALSO_IMPORTED) or top in _NOT_IMPORTED:
        return None
    import importlib

    try:
        return importlib.import_module(name)
    except Exception:
        return None


def _text(exc: BaseException) -> str:
    try:
        text = str(exc)
    except Exception:
        text = "?"
    return " ".join(text.split())[:_TEXT]


def main() -> None:
    job = marshal.loads(_read_all(0))
    signal.signal(signal.SIGINT, signal.default_int_handler)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    sys.path.extend(job["site_packages"])
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import sandbox_limits
    import wire

    del sys.path[0]
    sandbox_limits.set_limits(job)
    sandbox_limits.undumpable()  # a same-uid program (in-process mode) cannot read this process
    judge = Judge(job, wire)
    status, detail = judge.run(job["tests"])
    path = "objects" if judge.objects else "plain"
    line = f"{job['token']}\x1f{status}\x1f{path}\x1f{' '.join(detail.split())}\n"
    os.write(job["report_fd"], line.encode("utf-8", "replace"))
    os._exit(0)


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 1 << 20):
        chunks.append(chunk)
    return b"".join(chunks)


if __name__ == "__main__":
    main()
