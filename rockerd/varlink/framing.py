"""Varlink message framing: NUL-separated JSON objects on a byte stream.

Pure code (no sockets, no asyncio) so that it can be fuzzed on its own.  Every
fault raises :class:`FramingError`; nothing else escapes for any input bytes.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

__all__ = ["CallMessage", "FrameReader", "FramingError", "decode_json", "encode_message", "parse_call"]


class FramingError(Exception):
    """A stream or message that breaks the varlink wire format.

    ``reason`` is meant for humans (logs and the error reply); it starts with
    the part of the message that was wrong ("message", "method", ...).
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class CallMessage:
    """A syntactically valid varlink call; routing is the server's business."""

    method: str
    parameters: dict[str, Any] = field(default_factory=dict)
    oneway: bool = False
    more: bool = False
    upgrade: bool = False


class FrameReader:
    """Splits a byte stream on NUL, never holding more than ``max_message + 1`` bytes.

    The caller feeds bytes and pops frames.  It should only feed when
    :meth:`next_frame` returned ``None`` and at most :meth:`room` bytes, which
    keeps the buffer bounded; :meth:`feed` enforces the limit regardless.
    """

    def __init__(self, max_message: int) -> None:
        if max_message < 1:
            raise ValueError("max_message must be positive")
        self.max_message = max_message
        self._buf = bytearray()
        # Bytes at the start of _buf known to contain no NUL (avoids rescanning).
        self._scanned = 0

    @property
    def buffered(self) -> int:
        """Bytes held, complete frames included."""
        return len(self._buf)

    def room(self) -> int:
        """How many bytes may be read before a message must have ended (always >= 1 while partial)."""
        return max(0, self.max_message + 1 - len(self._buf))

    def feed(self, data: bytes) -> None:
        """Append received bytes; raise once an unterminated message is over the limit."""
        if not data:
            return
        self._buf += data
        self._check_tail()

    def _check_tail(self) -> None:
        # A frame (everything before a NUL) must be <= max_message; so must an
        # unterminated tail.  Checking every frame here means an overlong
        # message is refused even if its NUL arrived in the same chunk.
        start = 0
        pos = self._scanned
        while True:
            nul = self._buf.find(0, pos)
            if nul < 0:
                if len(self._buf) - start > self.max_message:
                    self._fail_size()
                self._scanned = len(self._buf) if start == 0 else self._scanned
                return
            if nul - start > self.max_message:
                self._fail_size()
            start = pos = nul + 1

    def _fail_size(self) -> None:
        self._buf = bytearray()  # drop it now: we never want to hold that memory longer
        self._scanned = 0
        raise FramingError(f"message: longer than the maximum of {self.max_message} bytes")

    def next_frame(self) -> bytes | None:
        """Pop the next complete frame (without its NUL), or ``None`` if none is complete."""
        nul = self._buf.find(0)
        if nul < 0:
            self._scanned = len(self._buf)
            return None
        frame = bytes(self._buf[:nul])
        del self._buf[: nul + 1]
        self._scanned = 0
        return frame

    def has_partial(self) -> bool:
        """True if bytes of an unterminated message are buffered (EOF now = truncated message)."""
        return bool(self._buf) and self._buf.find(0) < 0


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _parse_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:20]!r} is out of range")
    return value


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise ValueError("duplicate key in object")
    return obj


_DECODER = json.JSONDecoder(
    parse_float=_parse_float,
    parse_constant=_reject_constant,
    object_pairs_hook=_no_duplicate_keys,
    strict=True,
)

# A \u escape in the surrogate range; a cheap pre-filter before walking the tree.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def _has_lone_surrogate(value: Any) -> bool:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


MAX_DEPTH = 256  # a fixed limit, so a message is accepted or refused whatever the caller's stack depth


def _depth(text: str) -> int:
    """Deepest nesting of arrays/objects outside strings; run only when a frame has many brackets."""
    depth = deepest = 0
    in_str = escaped = False
    for ch in text:
        if in_str:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_str = False
        elif ch == '"':
            in_str = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    return deepest


def decode_json(frame: bytes) -> Any:
    """Strict UTF-8 and JSON: no NaN/Infinity, no duplicate keys, no lone surrogates."""
    if not frame:
        raise FramingError("message: empty (a lone NUL)")
    try:
        text = frame.decode("utf-8", errors="strict")
    except UnicodeDecodeError as exc:
        raise FramingError(f"message: invalid UTF-8 at byte {exc.start}") from None
    if frame.count(b"[") + frame.count(b"{") > MAX_DEPTH and _depth(text) > MAX_DEPTH:
        raise FramingError(f"message: JSON nested deeper than {MAX_DEPTH} levels")
    try:
        value = _DECODER.decode(text)
    except RecursionError:  # a backstop: MAX_DEPTH keeps the decoder well inside the recursion limit
        raise FramingError("message: JSON nested too deeply") from None
    except ValueError as exc:  # includes JSONDecodeError and int digit limits
        raise FramingError(f"message: invalid JSON ({_short(str(exc))})") from None
    if _SURROGATE_ESCAPE.search(frame) and _has_lone_surrogate(value):
        raise FramingError("message: JSON string with a lone UTF-16 surrogate")
    return value


def _short(text: str, limit: int = 120) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _flag(msg: dict[str, Any], name: str) -> bool:
    value = msg.get(name)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise FramingError(f"{name}: must be a boolean")
    return value


def parse_call(frame: bytes) -> CallMessage:
    """Decode one frame into a call, checking only what the wire format demands.

    Unknown top-level keys are ignored (forward compatibility, as the spec asks);
    ``parameters`` may be missing or null, meaning ``{}`` (systemd accepts null too).
    """
    msg = decode_json(frame)
    if not isinstance(msg, dict):
        raise FramingError(f"message: must be a JSON object, not {_json_type(msg)}")
    method = msg.get("method")
    if not isinstance(method, str):
        raise FramingError("method: missing" if method is None else "method: must be a string")
    if not method:
        raise FramingError("method: empty")
    params = msg.get("parameters")
    if params is None:
        params = {}
    elif not isinstance(params, dict):
        raise FramingError(f"parameters: must be an object, not {_json_type(params)}")
    return CallMessage(
        method=method,
        parameters=params,
        oneway=_flag(msg, "oneway"),
        more=_flag(msg, "more"),
        upgrade=_flag(msg, "upgrade"),
    )


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return "null"


def encode_message(message: dict[str, Any]) -> bytes:
    """Serialize one outgoing message, NUL included; raises ValueError/TypeError if it cannot be."""
    text = json.dumps(message, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    data = text.encode("utf-8")  # UnicodeEncodeError (a ValueError) on lone surrogates
    if b"\0" in data:  # impossible with json.dumps, but the framing would break silently
        raise ValueError("NUL in encoded message")
    return data + b"\0"
