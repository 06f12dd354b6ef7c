"""One client connection: frames in, calls dispatched one at a time, replies (and fds) out,
under the server's timeouts and per-uid call caps."""

from __future__ import annotations

import array
import asyncio
import contextlib
import errno
import os
import socket
import struct
from typing import TYPE_CHECKING

from .framing import CallMessage, FrameReader, FramingError, encode_message, parse_call
from .interface import SERVICE_INTERFACE, Call, Reply, VarlinkError, _error
from .peercred import Peer

if TYPE_CHECKING:
    from .server import VarlinkServer

_SCM_MAX_FD = 253  # kernel limit of fds in one SCM_RIGHTS message
_RECV_FD_ROOM = 16  # we accept no fds, but need room to receive (and close) some
_RECV_ANC_SPACE = socket.CMSG_SPACE(_RECV_FD_ROOM * struct.calcsize("i"))
_RECV_CHUNK_MAX = 256 * 1024

def _close_fds(fds: list[int]) -> None:
    """Close each distinct fd once (a duplicate entry must not close a reused number)."""
    for fd in dict.fromkeys(fds):
        if isinstance(fd, int) and not isinstance(fd, bool) and fd >= 0:
            with contextlib.suppress(OSError):
                os.close(fd)


def _fds_from_ancillary(ancdata: list[tuple[int, int, bytes]]) -> list[int]:
    size = struct.calcsize("i")
    fds: list[int] = []
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            usable = len(data) - len(data) % size
            fds.extend(array.array("i", data[:usable]))
    return fds



class _FdSendError(Exception):
    """sendmsg refused the reply's fds before any byte went out; the reply can be replaced."""


class _Expired(Exception):
    """A connection's timer ran out while it waited for a request: why, for the log."""


class _Connection:
    """One client connection; owns its socket and the task that serves it."""

    def __init__(self, server: VarlinkServer, sock: socket.socket, peer: Peer) -> None:
        self.server = server
        self.loop = server._loop_or_raise()
        self.sock = sock
        self.fd = sock.fileno()
        self.peer = peer
        self.exempt = peer.uid == 0 and not peer.foreign_ns  # host root: no per-uid caps
        self.end_of_life = self.loop.time() + server.limits.max_connection_life
        self.reader = FrameReader(server.limits.max_message)
        self.task: asyncio.Task[None] | None = None
        self.closed = False
        self._watching: str | None = None  # "r" or "w" while a reader/writer is registered
        self._warned_fds = False

    def __str__(self) -> str:
        return f"peer uid={self.peer.uid} pid={self.peer.pid}"

    # -- low level ---------------------------------------------------------

    def _unwatch(self) -> None:
        # Must run before the fd is closed: afterwards the number may belong to a new connection.
        if self._watching == "r":
            self.loop.remove_reader(self.fd)
        elif self._watching == "w":
            self.loop.remove_writer(self.fd)
        self._watching = None

    async def _wait(self, writable: bool) -> None:
        if self.closed:
            raise ConnectionAbortedError("connection closed")
        fut: asyncio.Future[None] = self.loop.create_future()

        def ready() -> None:
            if not fut.done():
                fut.set_result(None)

        if writable:
            self.loop.add_writer(self.fd, ready)
            self._watching = "w"
        else:
            self.loop.add_reader(self.fd, ready)
            self._watching = "r"
        try:
            await fut
        finally:
            self._unwatch()

    def abort(self) -> None:
        """Close now; safe to call repeatedly and from outside the connection's task."""
        if self.closed:
            return
        self._unwatch()
        self.closed = True
        self.sock.close()
        self.server._forget(self)
        task = self.task
        if task is not None and not task.done() and task is not asyncio.current_task():
            task.cancel()

    def _recv_some(self) -> bytes | None:
        """One recvmsg; None if it would block.  Any fds that came along are closed at once."""
        size = max(1, min(self.reader.room(), _RECV_CHUNK_MAX))
        try:
            data, ancdata, flags, _ = self.sock.recvmsg(size, _RECV_ANC_SPACE, socket.MSG_CMSG_CLOEXEC)
        except (BlockingIOError, InterruptedError):
            return None
        except ConnectionResetError:
            return b""
        fds = _fds_from_ancillary(ancdata)
        if fds or flags & socket.MSG_CTRUNC:
            _close_fds(fds)
            if not self._warned_fds:
                self._warned_fds = True
                self.server.log.info("%s sent file descriptors; closed them (none are accepted)", self)
        return data

    async def _next_frame(self) -> bytes | None:
        """The next complete frame, or None at EOF."""
        while True:
            frame = self.reader.next_frame()
            if frame is not None:
                return frame
            if not await self._more_bytes():
                if self.reader.has_partial():
                    self.server.log.info("%s disconnected in the middle of a message", self)
                return None

    async def _more_bytes(self) -> bool:
        """Wait for and buffer what arrives next; False at EOF."""
        while (data := self._recv_some()) is None:
            await self._wait(writable=False)
        self.reader.feed(data)
        return bool(data)

    async def _next_request(self) -> bytes | None:
        """The next complete frame, or None at EOF; raises _Expired when a timer runs out.

        Idle (no byte of a request yet): until the idle timeout or the end of
        the connection's life. Once a request has begun: request_timeout."""
        limits = self.server.limits
        frame = self.reader.next_frame()
        if frame is not None:
            return frame
        if not self.reader.buffered:
            idle_end = self.loop.time() + limits.idle_timeout
            try:
                async with asyncio.timeout_at(min(idle_end, self.end_of_life)):
                    if not await self._more_bytes():
                        return None
            except TimeoutError:
                if idle_end <= self.end_of_life:
                    raise _Expired(f"sent no request within {limits.idle_timeout:g}s (idle timeout)") from None
                raise _Expired(f"reached the connection life limit of {limits.max_connection_life:g}s") from None
            frame = self.reader.next_frame()  # usually the whole request came at once: no second timer
            if frame is not None:
                return frame
        try:
            async with asyncio.timeout(limits.request_timeout):
                return await self._next_frame()
        except TimeoutError:
            raise _Expired(f"sent no complete request within {limits.request_timeout:g}s") from None

    async def _send(self, data: bytes, fds: list[int]) -> None:
        """Send one message; fds ride on the first sendmsg that transfers data."""
        view = memoryview(data)
        ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
        while view:
            try:
                sent = self.sock.sendmsg([view], ancillary, socket.MSG_NOSIGNAL)
            except (BlockingIOError, InterruptedError):
                await self._wait(writable=True)
                continue
            except OSError as exc:
                if ancillary and exc.errno in (errno.EBADF, errno.EINVAL, errno.ETOOMANYREFS):
                    raise _FdSendError(str(exc)) from exc
                raise
            ancillary = []
            view = view[sent:]

    # -- protocol ----------------------------------------------------------

    async def run(self) -> None:
        log = self.server.log
        try:
            while not self.closed:
                if self.loop.time() >= self.end_of_life:
                    log.info("%s reached the connection life limit of %gs; disconnecting", self,
                             self.server.limits.max_connection_life)
                    return
                try:
                    frame = await self._next_request()
                    if frame is None:
                        return
                    msg = parse_call(frame)
                except _Expired as exc:
                    log.info("%s %s; disconnecting", self, exc)
                    return
                except FramingError as exc:
                    await self._protocol_fault(exc.reason)
                    return
                if msg.upgrade:
                    await self._protocol_fault("upgrade: protocol upgrades are not supported")
                    return
                data, fds = await self._handle(msg)
                if msg.oneway:
                    _close_fds(fds)
                elif not await self._send_reply(data, fds, msg):
                    return
                # A client that pipelines calls to fast handlers would otherwise never yield the loop.
                await asyncio.sleep(0)
        except (ConnectionAbortedError, BrokenPipeError, ConnectionResetError):
            pass
        except Exception:
            log.exception("%s: unexpected error while serving the connection", self)
        finally:
            self.abort()

    async def _send_reply(self, data: bytes, fds: list[int], msg: CallMessage) -> bool:
        """Send a reply within request_timeout; False if the connection is no longer usable."""
        limits = self.server.limits
        try:
            async with asyncio.timeout(limits.request_timeout):
                try:
                    await self._send(data, fds)
                except _FdSendError as exc:
                    self.server.log.error("%s: cannot send fds of the reply to %s: %s", self, msg.method, exc)
                    _close_fds(fds)
                    fds = []
                    await self._send(self._internal_error(msg.method, "reply file descriptors unusable"), [])
            return True
        except TimeoutError:
            self.server.log.info("%s did not read its reply within %gs; disconnecting", self, limits.request_timeout)
            return False
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError):
            return False
        except OSError as exc:
            self.server.log.warning("%s: sending a reply failed: %s", self, exc)
            return False
        finally:
            _close_fds(fds)

    async def _protocol_fault(self, reason: str) -> None:
        """Answer a wire-format violation once, then the caller closes the connection."""
        server = self.server
        server.log.warning("%s violated the varlink protocol: %s; closing the connection", self, reason)
        data = encode_message({"error": server.protocol_error, "parameters": {"parameter": reason}})
        try:
            async with asyncio.timeout(min(1.0, server.limits.request_timeout)):
                await self._send(data, [])
        except (TimeoutError, OSError):
            pass

    def _internal_error(self, method: str, reason: str) -> bytes:
        iface = method.rpartition(".")[0] or SERVICE_INTERFACE
        return encode_message({"error": f"{iface}.InternalError", "parameters": {"reason": reason}})

    async def _handle(self, msg: CallMessage) -> tuple[bytes, list[int]]:
        """Route and run one call; returns the encoded reply and the fds to go with it."""
        server = self.server
        iface_name, _, member = msg.method.rpartition(".")
        iface = server._interfaces.get(iface_name)
        if iface is None:
            return encode_message(_error("org.varlink.service.InterfaceNotFound", interface=iface_name)), []
        handler = iface.methods.get(member)
        if handler is None:
            name = "MethodNotImplemented" if member in server._declared[iface_name] else "MethodNotFound"
            return encode_message(_error(f"org.varlink.service.{name}", method=msg.method)), []
        call = Call(method=msg.method, parameters=msg.parameters, peer=self.peer, oneway=msg.oneway, more=msg.more)
        uid, calls = self.peer.uid, server._calls
        if not self.exempt:
            if calls.get(uid, 0) >= server.limits.max_calls_per_uid:
                reason = f"uid {uid} has {server.limits.max_calls_per_uid} calls under way, the most per uid"
                server.log_refusal(uid, reason)
                return server.limit_reply("calls per uid", reason), []
            calls[uid] = calls.get(uid, 0) + 1
        try:
            reply = await handler(call)
        except VarlinkError as exc:
            try:
                return encode_message({"error": exc.name, "parameters": exc.parameters}), []
            except (TypeError, ValueError):
                server.log.exception("%s: %s raised %s with unserializable parameters", self, msg.method, exc.name)
                return self._internal_error(msg.method, "error reply could not be encoded"), []
        except Exception as exc:
            server.log.exception("%s: handler for %s failed", self, msg.method)
            return self._internal_error(msg.method, f"unexpected {type(exc).__name__} (see the server log)"), []
        finally:
            if not self.exempt:
                server.call_done(uid)
        if not isinstance(reply, Reply):
            server.log.error("%s: handler for %s returned %r, not a Reply", self, msg.method, type(reply))
            return self._internal_error(msg.method, "handler returned no reply"), []
        fds = list(reply.fds)
        bad_fds = len(fds) > _SCM_MAX_FD or not all(
            isinstance(fd, int) and not isinstance(fd, bool) and fd >= 0 for fd in fds
        )
        try:
            if bad_fds:
                raise ValueError(f"invalid fd list ({len(fds)} entries)")
            return encode_message({"parameters": reply.parameters}), fds
        except (TypeError, ValueError) as exc:
            _close_fds(fds)
            server.log.error("%s: reply of %s could not be encoded: %s", self, msg.method, exc)
            return self._internal_error(msg.method, "reply could not be encoded"), []

