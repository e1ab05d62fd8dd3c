"""The jailed side: run the program, then answer the judge's calls with plain data or handles.

`execute.py` starts this file (inside the OS jail, see jail.py) with a fresh ``python -I -B -S``
and the job (the program, never its tests) on stdin. Standard library only.

This process holds nothing that decides the verdict: no test code, no expected value, no token.
After the program's top level ran, it sends the judge (judge.py) its global names, then serves
requests: call this function, get this attribute, iterate this object. Each answer is a plain
value (wire.py) or, for anything else, a numbered handle to an object that stays here. The
program may rewrite every line of this file at run time: the worst it can do is send wrong
answers, which is what a wrong program does anyway.
"""

from __future__ import annotations

import marshal
import os
import signal
import sys

_TEXT = 1000  # characters of an exception message that cross


def main() -> None:
    """Inside the jail: read the job, confine this process, run the program, serve the judge."""
    job = marshal.loads(_read_all(0))
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import sandbox_limits

    sandbox_limits.drop_privileges(job["drop_to"])  # first: nothing below runs as root
    # A parent started in the background ignores SIGINT and the child inherits that: restore
    # Python's handler, so a program's verdict does not depend on how the evaluation started.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)  # the program sees an empty stdin
    os.close(null)
    sys.path.extend(job["site_packages"])
    import sandbox_guards
    import sandbox_hook
    import wire

    del sys.path[0]
    if job["jail"] == "in-process":  # the jail gives an empty network namespace already
        sandbox_limits.isolate_network()
    sandbox_limits.set_limits(job)
    server = _Server(job["request_fd"], job["reply_fd"], wire)
    if job["guards"]:  # off only in tests of the OS jail alone
        sandbox_guards.install(job["workdir"], job["blocked_modules"])
        sandbox_hook.install(job, server.blocked)
    server.run(job["program"])


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 1 << 20):
        chunks.append(chunk)
    return b"".join(chunks)


class _Server:
    """The program's namespace and the handles the judge holds, served over two pipes."""

    def __init__(self, request_fd: int, reply_fd: int, wire) -> None:
        self.rfd, self.wfd, self.wire = request_fd, reply_fd, wire
        self.handles: dict[int, object] = {}
        self.phase = "program"
        self.send, self.exit = wire.send, os._exit  # bound now: the program may replace os._exit

    def blocked(self, what: str) -> None:
        """The audit hook refused something: tell the judge, end this process."""
        self.send(self.wfd, ["blocked", self.phase, what])
        self.exit(97)

    def out(self, value):
        """``value`` for the judge: plain data, or a handle to it (the whole value)."""

        if type(value).__module__ == "numpy" and getattr(value, "ndim", None) == 0 and hasattr(value, "item"):
            value = value.item()  # a numpy scalar (np.int64, np.bool_) as the number it holds

        def ref(obj):
            self.handles[len(self.handles) + 1] = obj
            return ["h", len(self.handles), type(obj).__name__[:100]]

        return self.wire.encode(value, ref, loose=True)

    def resolve(self, tag: str, args: list):
        """The judge's references: one of our handles, or a callable on the judge's side."""
        if tag == "r" and len(args) == 1 and args[0] in self.handles:
            return self.handles[args[0]]
        if tag == "k" and len(args) == 1 and type(args[0]) is int:
            return self.callback(args[0])
        if tag == "B" and len(args) == 1 and type(args[0]) is str:  # a builtin (int, len): our own
            import builtins

            return getattr(builtins, args[0])
        raise self.wire.Malformed(f"unknown reference {tag!r}")

    def callback(self, cbid: int):
        def trusted_callable(*args, **kwargs):  # runs on the judge's side, with plain data
            self.send(
                self.wfd, ["cb", cbid, [self.out(a) for a in args], [[k, self.out(v)] for k, v in kwargs.items()]]
            )
            reply = self.serve(until_reply=True)
            if reply[0] == "cbok":
                return self.wire.decode(reply[1], self.resolve)
            raise _named_exception(reply[1], reply[2])

        return trusted_callable

    def run(self, source: str) -> None:
        import types

        # A real module, so that pickle, dataclasses and the like find it; not "__main__", so that
        # `if __name__ == "__main__":` blocks do not run (as in the reference HumanEval harness).
        module = types.ModuleType("__sandbox__")
        sys.modules["__sandbox__"] = module
        try:
            exec(compile(source, "<program>", "exec"), module.__dict__)
        except BaseException as exc:  # SystemExit and KeyboardInterrupt too: no tests ran
            kind = (
                "assertion"
                if isinstance(exc, AssertionError)
                else "exception"
                if isinstance(exc, Exception)
                else "exit"
            )
            self.send(self.wfd, ["failed", kind, "program", _describe(exc)])
            self.exit(1)
        names = []
        for name, value in list(module.__dict__.items()):
            if name.startswith("__"):
                continue
            module_name = value.__name__ if type(value) is types.ModuleType else None
            names.append([name, module_name if type(module_name) is str else None, self.out(value)])
        self.phase = "tests"
        self.send(self.wfd, ["ready", names])
        self.serve(until_reply=False)
        self.exit(0)

    def serve(self, until_reply: bool):
        """Answer requests until the judge hangs up, or (inside a callback) until its reply."""
        while True:
            message = self.wire.receive(self.rfd)
            if message is None:
                self.exit(0)  # the judge is done
            if message[0] in ("cbok", "cbraise") and until_reply:
                return message
            seq = message[1]
            try:
                reply = ["ok", seq, self.out(self.perform(message))]
            except BaseException as exc:
                reply = [
                    "raise",
                    seq,
                    type(exc).__name__[:100],
                    _describe(exc, named=False),
                    not isinstance(exc, Exception),
                ]
            self.send(self.wfd, reply)

    def perform(self, message: list):
        kind, _, target, *rest = message
        obj = self.wire.decode(target, self.resolve)
        if kind == "call":
            args = [self.wire.decode(a, self.resolve) for a in rest[0]]
            kwargs = {k: self.wire.decode(v, self.resolve) for k, v in rest[1]}
            return obj(*args, **kwargs)
        if kind == "getattr":
            return getattr(obj, rest[0])
        if kind == "setattr":
            return setattr(obj, rest[0], self.wire.decode(rest[1], self.resolve))
        if kind == "getitem":
            return obj[self.wire.decode(rest[0], self.resolve)]
        unary = {"iter": iter, "next": next, "len": len, "str": str, "repr": repr, "bool": bool}
        return unary[kind](obj)


def _describe(exc: BaseException, named: bool = True) -> str:
    try:
        text = str(exc)
    except BaseException:  # a hostile __str__
        text = "an exception whose message cannot be shown"
    text = " ".join(text.split())[:_TEXT] if type(text) is str else "?"
    if not named:
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _named_exception(name, text) -> BaseException:
    import builtins

    cls = getattr(builtins, name, None) if type(name) is str else None
    if isinstance(cls, type) and issubclass(cls, Exception):
        try:
            return cls(text)
        except Exception:
            pass
    return RuntimeError(f"{name}: {text}")


if __name__ == "__main__":
    main()
