"""Blocking varlink client for rockerd: one call, one reply, fds via SCM_RIGHTS.

Stdlib only and no asyncio, so importing the client library stays cheap.  Every
path closes what it opened; fds received with a reply belong to the caller.
"""

from __future__ import annotations

import _socket as socket  # the C module: socket.py's enums and selectors cost every CLI start
import array
import contextlib
import json
import os
import struct
import time
from types import TracebackType

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs every start of the CLI (issue 21); annotations only
    from typing import Any

__all__ = [
    "MAX_REPLY",
    "ConnectFailed",
    "Connection",
    "RecvFailed",
    "RemoteError",
    "SendFailed",
    "WireError",
    "call",
    "default_socket_path",
]

DEFAULT_SOCKET = "/run/rocker/rockerd.sock"
MAX_REPLY = 16 * 1024 * 1024  # a reply larger than this is treated as a broken server
_MAX_FDS = 253  # SCM_MAX_FD: the most one message can carry
_ANC_SPACE = socket.CMSG_SPACE(_MAX_FDS * struct.calcsize("i"))
_CHUNK = 256 * 1024


class WireError(Exception):
    """Base of everything this module raises about the transport or the reply."""


class ConnectFailed(WireError):
    """The socket path is missing, not a socket, refused, or not accessible."""


class SendFailed(WireError):
    """The call could not be written (daemon went away mid-call)."""


class RecvFailed(WireError):
    """No complete, well-formed reply: EOF, malformed data, or timeout."""


class RemoteError(WireError):
    """The daemon answered with a varlink error reply."""

    def __init__(self, name: str, parameters: dict[str, Any]) -> None:
        super().__init__(name, parameters)
        self.name = name
        self.parameters = parameters

    def __str__(self) -> str:
        return f"{self.name} {json.dumps(self.parameters, default=str)}" if self.parameters else self.name


def default_socket_path() -> str:
    """$ROCKER_SOCKET if set and non-empty, else the daemon's standard path."""
    return os.environ.get("ROCKER_SOCKET") or DEFAULT_SOCKET


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


def _encode_call(method: str, parameters: dict[str, Any], oneway: bool) -> bytes:
    # Encoded before anything is sent, so a caller's unserializable argument fails cleanly.
    message: dict[str, Any] = {"method": method, "parameters": parameters}
    if oneway:
        message["oneway"] = True
    return json.dumps(message, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode() + b"\0"


def _decode_reply(frame: bytes) -> tuple[dict[str, Any], str | None]:
    """(parameters, error name or None); RecvFailed on anything that is not a varlink reply."""
    try:
        reply = json.loads(frame.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise RecvFailed(f"malformed reply: {exc}") from None
    if not isinstance(reply, dict):
        raise RecvFailed("malformed reply: not a JSON object")
    params = reply.get("parameters")
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise RecvFailed("malformed reply: parameters is not an object")
    error = reply.get("error")
    if error is not None and not isinstance(error, str):
        raise RecvFailed("malformed reply: error is not a string")
    return params, error


class Connection:
    """One connection for several sequential calls (the daemon answers them in order)."""

    def __init__(self, socket_path: str | None = None, *, timeout: float = 30.0) -> None:
        self.path = socket_path or default_socket_path()
        self.timeout = timeout
        self._buf = bytearray()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            sock.settimeout(timeout)
            sock.connect(self.path)
        except (OSError, ValueError) as exc:  # ValueError: NUL in the path
            sock.close()
            raise ConnectFailed(f"cannot connect to {self.path}: {exc}") from exc
        except BaseException:
            sock.close()
            raise
        self._sock: socket.socket | None = sock

    def __enter__(self) -> Connection:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _live(self) -> socket.socket:
        if self._sock is None:
            raise SendFailed("connection is closed")
        return self._sock

    def call(self, method: str, parameters: dict[str, Any] | None = None) -> tuple[dict[str, Any], list[int]]:
        """Send one call and wait for its reply; the returned fds are the caller's to close.

        After a WireError other than RemoteError the connection is closed: its
        stream position is unknown, so it cannot carry another call.
        """
        data = _encode_call(method, parameters or {}, oneway=False)
        sock = self._live()
        deadline = time.monotonic() + self.timeout
        try:
            self._send(sock, data, deadline)
            frame, fds = self._recv_frame(sock, deadline)
        except BaseException:
            self.close()
            raise
        try:
            params, error = _decode_reply(frame)
        except BaseException:
            _close_all(fds)
            self.close()
            raise
        if error is not None:
            _close_all(fds)
            raise RemoteError(error, params)
        return params, fds

    def send_oneway(self, method: str, parameters: dict[str, Any] | None = None) -> None:
        """Fire-and-forget call: the daemon sends no reply."""
        data = _encode_call(method, parameters or {}, oneway=True)
        sock = self._live()
        try:
            self._send(sock, data, time.monotonic() + self.timeout)
        except BaseException:
            self.close()
            raise

    @staticmethod
    def _send(sock: socket.socket, data: bytes, deadline: float) -> None:
        try:
            sock.settimeout(max(0.001, deadline - time.monotonic()))
            sock.sendall(data, socket.MSG_NOSIGNAL)
        except TimeoutError:
            raise SendFailed("timed out sending the call") from None
        except OSError as exc:
            raise SendFailed(f"sending the call failed: {exc}") from exc

    def _recv_frame(self, sock: socket.socket, deadline: float) -> tuple[bytes, list[int]]:
        """Read up to the next NUL, collecting fds from every chunk (closed again on failure)."""
        fds: list[int] = []
        try:
            while True:
                nul = self._buf.find(0)
                if nul >= 0:
                    frame = bytes(self._buf[:nul])
                    del self._buf[: nul + 1]
                    return frame, fds
                if len(self._buf) > MAX_REPLY:
                    raise RecvFailed(f"reply larger than {MAX_REPLY} bytes")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise RecvFailed("timed out waiting for the reply")
                sock.settimeout(remaining)
                try:
                    data, ancdata, flags, _ = sock.recvmsg(_CHUNK, _ANC_SPACE, socket.MSG_CMSG_CLOEXEC)
                except TimeoutError:
                    raise RecvFailed("timed out waiting for the reply") from None
                except OSError as exc:
                    raise RecvFailed(f"receiving the reply failed: {exc}") from exc
                for level, kind, payload in ancdata:
                    if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                        usable = len(payload) - len(payload) % struct.calcsize("i")
                        fds.extend(array.array("i", payload[:usable]))
                if flags & socket.MSG_CTRUNC:
                    raise RecvFailed("file descriptors of the reply were truncated")
                if not data:
                    raise RecvFailed("connection closed before a complete reply")
                self._buf += data
        except BaseException:
            _close_all(fds)
            raise


def call(
    socket_path: str, method: str, parameters: dict[str, Any], *, timeout: float = 30.0
) -> tuple[dict[str, Any], list[int]]:
    """One call on a fresh connection: (reply parameters, received fds in order).

    Raises RemoteError for an error reply, ConnectFailed/SendFailed/RecvFailed
    for transport faults; TypeError/ValueError if ``parameters`` is not JSON.
    """
    with Connection(socket_path, timeout=timeout) as conn:
        return conn.call(method, parameters)
