"""Plain data across the jail's boundary: the encoding both sides use, and message framing.

Standard library only; loaded by file location in both children (``python -I -B -S``).
A value is *plain* when it is None, a bool, int, float, complex, str or bytes of exactly that
type, or a list, tuple, dict, set or frozenset of plain values (nested, no cycles). Plain values
cross as JSON of tagged lists; everything else crosses as a reference (``ref``) that the other
side resolves (``resolve``): the trusted side (judge.py) turns the jail's references into opaque
remote handles, never into objects with methods the program wrote. Decoding builds only values of
those exact built-in types, so nothing the jailed process sends can carry an ``__eq__`` of its own.
"""

from __future__ import annotations

import json
import os

MAX_MESSAGE = 64 << 20  # bytes; a longer message from the jail is malformed
MAX_DEPTH = 64  # nesting of plain containers; deeper (or cyclic) is not plain

_SEQUENCES = {list: "l", tuple: "t", set: "S", frozenset: "F"}
_BUILD = {"l": list, "t": tuple, "S": set, "F": frozenset}


class NotPlain(Exception):
    """Raised while encoding: the value (or something inside it) is not plain data."""


class Malformed(Exception):
    """Raised while decoding: the message is not what this protocol sends."""


# Sent as the plain type they extend (the jail's side only: a Counter as a dict, a namedtuple as a
# tuple, np.float64 as a float). The jail could send any plain value anyway, so this gives it
# nothing; what the judge gets is still of the exact built-in type.
_LOOSE = ((bool, bool), (int, int.__int__), (float, float.__float__), (complex, complex), (str, str.__str__),
          (bytes, bytes), (list, list), (tuple, tuple), (dict, dict), (set, set), (frozenset, frozenset))  # fmt: skip


def encode(value, ref=None, nested: bool = False, depth: int = 0, loose: bool = False):
    """``value`` as JSON-ready tagged lists; a non-plain value becomes ``ref(value)`` (or NotPlain).

    ``nested``: a non-plain item inside a container is a reference too (the trusted side sends a
    list of handles); otherwise the whole value is (the jail's answers: all plain, or opaque).
    ``loose``: a subclass of a plain type is sent as that type (see ``_LOOSE``).
    """
    kind = type(value)
    try:
        if value is None:
            return None
        if kind is bool:
            return ["b", value]
        if kind is int:
            return ["i", format(value, "x")]  # hex: no digit limit, exact
        if kind is float:
            return ["f", value.hex()]
        if kind is complex:
            return ["c", value.real.hex(), value.imag.hex()]
        if kind is str:
            return ["s", value]
        if kind is bytes:
            return ["y", value.hex()]
        if depth >= MAX_DEPTH:
            raise NotPlain("nested too deeply (or cyclic)")
        if kind in _SEQUENCES:
            inner = ref if nested else None
            return [_SEQUENCES[kind], [encode(v, inner, nested, depth + 1, loose) for v in value]]
        if kind is dict:
            inner = ref if nested else None
            items = value.items()
            pairs = [
                [encode(k, inner, nested, depth + 1, loose), encode(v, inner, nested, depth + 1, loose)]
                for k, v in items
            ]
            return ["d", pairs]
        if loose:
            for base, convert in _LOOSE:
                if isinstance(value, base):
                    plain = convert(value)
                    if type(plain) is base:
                        return encode(plain, None, nested, depth + 1, loose)
        raise NotPlain(kind.__name__)
    except NotPlain:
        if ref is None:
            raise
        return ref(value)


def decode(data, resolve=None, depth: int = 0):
    """The value ``encode`` made; a reference tag (not one of the plain ones) goes to ``resolve``."""
    if data is None:
        return None
    if type(data) is not list or not data or type(data[0]) is not str or depth > MAX_DEPTH:
        raise Malformed("not a tagged value")
    tag, args = data[0], data[1:]
    try:
        if tag == "b" and len(args) == 1 and type(args[0]) is bool:
            return args[0]
        if tag == "i" and len(args) == 1 and type(args[0]) is str:
            return int(args[0], 16)
        if tag == "f" and len(args) == 1 and type(args[0]) is str:
            return float.fromhex(args[0])
        if tag == "c" and len(args) == 2 and type(args[0]) is str and type(args[1]) is str:
            return complex(float.fromhex(args[0]), float.fromhex(args[1]))
        if tag == "s" and len(args) == 1 and type(args[0]) is str:
            return args[0]
        if tag == "y" and len(args) == 1 and type(args[0]) is str:
            return bytes.fromhex(args[0])
        if tag in _BUILD and len(args) == 1 and type(args[0]) is list:
            return _BUILD[tag](decode(v, resolve, depth + 1) for v in args[0])
        if tag == "d" and len(args) == 1 and type(args[0]) is list:
            pairs = args[0]
            if any(type(p) is not list or len(p) != 2 for p in pairs):
                raise Malformed("a dict item is not a pair")
            return {decode(k, resolve, depth + 1): decode(v, resolve, depth + 1) for k, v in pairs}
    except (ValueError, TypeError, OverflowError, RecursionError) as exc:  # bad hex, unhashable key
        raise Malformed(f"bad {tag!r} value: {type(exc).__name__}") from None
    if resolve is not None:
        return resolve(tag, args)
    raise Malformed(f"unknown tag {tag[:20]!r}")


def send(fd: int, message: list) -> None:
    """Write one message (a JSON list) with its 4-byte length."""
    data = json.dumps(message, separators=(",", ":")).encode()
    data = len(data).to_bytes(4, "big") + data
    while data:
        data = data[os.write(fd, data) :]


def receive(fd: int) -> list | None:
    """Read one message; None at end of file (the other side is gone)."""
    head = _read_exact(fd, 4)
    if head is None:
        return None
    size = int.from_bytes(head, "big")
    if size > MAX_MESSAGE:
        raise Malformed(f"a message of {size} bytes")
    body = _read_exact(fd, size)
    if body is None:
        return None
    try:
        message = json.loads(body)
    except (ValueError, RecursionError):
        raise Malformed("not JSON") from None
    if type(message) is not list or not message or type(message[0]) is not str:
        raise Malformed("not a message")
    return message


def _read_exact(fd: int, size: int) -> bytes | None:
    chunks, left = [], size
    while left:
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)
