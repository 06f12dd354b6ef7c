"""asyncio varlink server over a unix stream socket.

Written on raw non-blocking sockets (``add_reader``/``add_writer`` with
``recvmsg``/``sendmsg``) because asyncio streams cannot carry SCM_RIGHTS and we
want per-connection SO_PEERCRED, bounded buffers and timeouts under our control.
Each connection is served strictly sequentially: one call, one reply, in order.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import errno
import logging
import os
import re
import socket
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any

from .framing import CallMessage, FrameReader, FramingError, encode_message, parse_call
from .peercred import Peer, read_peer

__all__ = [
    "SERVICE_DESCRIPTION",
    "SERVICE_INTERFACE",
    "Call",
    "Handler",
    "Interface",
    "Limits",
    "Peer",
    "Reply",
    "VarlinkError",
    "VarlinkServer",
]

SERVICE_INTERFACE = "org.varlink.service"

# Same text as the varlink reference implementation ships; must stay parseable
# by the `varlink` PyPI scanner (LF only, no trailing commas, errors with "()").
SERVICE_DESCRIPTION = """\
# The Varlink Service Interface is provided by every varlink service. It
# describes the service and the interfaces it implements.
interface org.varlink.service

# Get a list of all the interfaces a service provides and information
# about the implementation.
method GetInfo() -> (
  vendor: string,
  product: string,
  version: string,
  url: string,
  interfaces: []string
)

# Get the description of an interface that is implemented by this service.
method GetInterfaceDescription(interface: string) -> (description: string)

# The requested interface was not found.
error InterfaceNotFound (interface: string)

# The requested method was not found
error MethodNotFound (method: string)

# The interface defines the requested method, but the service does not
# implement it.
error MethodNotImplemented (method: string)

# One of the passed parameters is invalid.
error InvalidParameter (parameter: string)
"""

_SCM_MAX_FD = 253  # kernel limit of fds in one SCM_RIGHTS message
_RECV_FD_ROOM = 16  # we accept no fds, but need room to receive (and close) some
_RECV_ANC_SPACE = socket.CMSG_SPACE(_RECV_FD_ROOM * struct.calcsize("i"))
_RECV_CHUNK_MAX = 256 * 1024
_ACCEPT_BATCH = 64
_ACCEPT_PAUSE = 0.5  # seconds to stop accepting after EMFILE & co (level-triggered reader would spin)
_LINGER = 1.0  # a refused connection stays open this long for its request, so the client reads why
_MAX_LINGERING = 64  # refused connections kept lingering at once; beyond that they are closed at once
_INTERFACE_NAME = re.compile(r"[A-Za-z](?:-*[A-Za-z0-9])*(?:\.[A-Za-z0-9](?:-*[A-Za-z0-9])*)+")
_MEMBER_NAME = re.compile(r"[A-Z][A-Za-z0-9]*")
_DECLARED_METHOD = re.compile(r"^[ \t]*method[ \t\n]+([A-Z][A-Za-z0-9]*)", re.MULTILINE)


@dataclass
class Call:
    """One method call as handed to a handler; ``method`` is the full name."""

    method: str
    parameters: dict[str, Any]
    peer: Peer
    oneway: bool
    more: bool


@dataclass
class Reply:
    """A successful reply; the server sends ``fds`` with it and then closes them in any case."""

    parameters: dict[str, Any]
    fds: list[int] = field(default_factory=list)


class VarlinkError(Exception):
    """Raised by handlers to answer with a varlink error (full name, e.g. ``io.rocker.Rocker.Foo``)."""

    def __init__(self, name: str, parameters: dict[str, Any] | None = None) -> None:
        super().__init__(name, parameters)
        self.name = name
        self.parameters: dict[str, Any] = dict(parameters or {})

    def __str__(self) -> str:
        return f"{self.name} {self.parameters}" if self.parameters else self.name


Handler = Callable[[Call], Awaitable[Reply]]


@dataclass
class Interface:
    """An interface: its IDL text (served verbatim) and handlers keyed by short method name."""

    name: str
    description: str
    methods: dict[str, Handler]


@dataclass
class Limits:
    """Per-server resource limits; request_timeout also bounds how long a reply may take to be read.

    Fair share: host root (uid 0 in the server's namespaces) is exempt from
    the per-uid caps and alone may use the last ``root_connections`` of
    ``max_connections``, so one uid, or all together, cannot lock root out."""

    max_message: int = 64 * 1024
    max_connections: int = 256
    root_connections: int = 16  # of max_connections, kept for root
    max_connections_per_uid: int = 32
    max_calls_per_uid: int = 8  # calls being handled at once for one uid (all its connections)
    request_timeout: float = 10.0  # from a request's first byte to its end
    idle_timeout: float = 10.0  # with no request under way (after the accept, after each reply)
    max_connection_life: float = 300.0  # then closed once no call is under way

    def check(self) -> None:
        if (self.max_message < 16 or self.max_connections < 1 or self.max_connections_per_uid < 1
                or self.max_calls_per_uid < 1 or not 0 <= self.root_connections < self.max_connections
                or min(self.request_timeout, self.idle_timeout, self.max_connection_life) <= 0):
            raise ValueError(f"unusable limits {self}")


_DEFAULT_LIMITS = Limits()  # shared default; the server keeps its own copy


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


def _check_interface(iface: Interface) -> None:
    """Catch interface definitions that clients could not use, at startup rather than at call time."""
    if not _INTERFACE_NAME.fullmatch(iface.name):
        raise ValueError(f"invalid varlink interface name {iface.name!r}")
    if iface.name == SERVICE_INTERFACE:
        raise ValueError(f"{SERVICE_INTERFACE} is provided by the server itself")
    if "\r" in iface.description:
        raise ValueError(f"{iface.name}: description contains CR; varlink parsers accept LF only")
    declared = None
    for line in iface.description.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        words = stripped.split("#", 1)[0].split()
        if len(words) == 2 and words[0] == "interface":
            declared = words[1]
        break
    if declared != iface.name:
        raise ValueError(f"{iface.name}: description must start with 'interface {iface.name}'")
    methods = set(_DECLARED_METHOD.findall(iface.description))
    for name in iface.methods:
        if not _MEMBER_NAME.fullmatch(name):
            raise ValueError(f"{iface.name}: invalid method name {name!r}")
        if name not in methods:
            raise ValueError(f"{iface.name}: handler {name!r} is not declared in the description")


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


def _error(name: str, **parameters: Any) -> dict[str, Any]:
    return {"error": name, "parameters": parameters}


class VarlinkServer:
    """Serves a set of interfaces plus org.varlink.service on one listening socket."""

    def __init__(
        self,
        *,
        vendor: str,
        product: str,
        version: str,
        url: str,
        interfaces: list[Interface],
        limits: Limits = _DEFAULT_LIMITS,
        log: logging.Logger | None = None,
        protocol_error: str = "org.varlink.service.InvalidParameter",
        limit_error: str = "org.varlink.service.LimitReached",
    ) -> None:
        self.vendor = vendor
        self.product = product
        self.version = version
        self.url = url
        self.limits = replace(limits)
        self.limits.check()
        self.log = log or logging.getLogger("rockerd.varlink")
        self.protocol_error = protocol_error
        self.limit_error = limit_error
        service = Interface(
            name=SERVICE_INTERFACE,
            description=SERVICE_DESCRIPTION,
            methods={"GetInfo": self._get_info, "GetInterfaceDescription": self._get_interface_description},
        )
        self._interfaces: dict[str, Interface] = {SERVICE_INTERFACE: service}
        for iface in interfaces:
            _check_interface(iface)
            if iface.name in self._interfaces:
                raise ValueError(f"interface {iface.name} given twice")
            self._interfaces[iface.name] = iface
        self._declared: dict[str, set[str]] = {
            name: set(_DECLARED_METHOD.findall(iface.description)) for name, iface in self._interfaces.items()
        }
        self._conns: set[_Connection] = set()
        self._conns_of: dict[int, int] = {}  # uid -> open connections
        self._calls: dict[int, int] = {}  # uid -> calls being handled (host root's are not counted)
        self._refused: set[int] = set()  # uids whose refusal was logged (-1: the total), until one gets in
        self._lingering: dict[socket.socket, asyncio.TimerHandle] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._listener: socket.socket | None = None
        self._listen_fd = -1
        self._accepting = False
        self._resume: asyncio.TimerHandle | None = None
        self._stopped: asyncio.Future[None] | None = None
        self._closing = False
        self._serving = False

    # -- org.varlink.service -------------------------------------------------

    async def _get_info(self, call: Call) -> Reply:
        return Reply(
            {
                "vendor": self.vendor,
                "product": self.product,
                "version": self.version,
                "url": self.url,
                "interfaces": list(self._interfaces),
            }
        )

    async def _get_interface_description(self, call: Call) -> Reply:
        name = call.parameters.get("interface")
        if not isinstance(name, str):
            raise VarlinkError("org.varlink.service.InvalidParameter", {"parameter": "interface"})
        iface = self._interfaces.get(name)
        if iface is None:
            raise VarlinkError("org.varlink.service.InterfaceNotFound", {"interface": name})
        return Reply({"description": iface.description})

    # -- lifecycle -----------------------------------------------------------

    @property
    def connections(self) -> int:
        """Live client connections now."""
        return len(self._conns)

    def _loop_or_raise(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            raise RuntimeError("server is not serving")
        return self._loop

    async def serve(self, listener: socket.socket) -> None:
        """Accept and serve clients until close() (or until this coroutine is cancelled)."""
        if self._serving:
            raise RuntimeError("serve() is already running")
        self._serving = True
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._stopped = loop.create_future()
        listener.setblocking(False)
        self._listener = listener
        self._listen_fd = listener.fileno()
        try:
            if not self._closing:
                self._start_accepting()
                await self._stopped
        finally:
            self.close()
            while self._tasks:
                await asyncio.gather(*list(self._tasks), return_exceptions=True)
            self._serving = False

    def close(self) -> None:
        """Stop accepting and close every connection; the listener itself stays the caller's."""
        self._closing = True
        self._stop_accepting()
        if self._resume is not None:
            self._resume.cancel()
            self._resume = None
        for conn in list(self._conns):
            conn.abort()
        for sock in list(self._lingering):
            self._end_lingering(sock)
        if self._stopped is not None and not self._stopped.done():
            self._stopped.set_result(None)

    def _start_accepting(self) -> None:
        self._resume = None
        if self._closing or self._accepting or self._loop is None:
            return
        self._loop.add_reader(self._listen_fd, self._on_acceptable)
        self._accepting = True

    def _stop_accepting(self) -> None:
        if self._accepting and self._loop is not None:
            self._loop.remove_reader(self._listen_fd)
        self._accepting = False

    def _on_acceptable(self) -> None:
        listener = self._listener
        assert listener is not None and self._loop is not None
        for _ in range(_ACCEPT_BATCH):
            try:
                sock, _ = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue
            except OSError as exc:
                # EMFILE/ENFILE/ENOBUFS/...: the reader is level-triggered, so back off instead of spinning.
                self.log.error("accept() failed: %s; pausing for %gs", exc, _ACCEPT_PAUSE)
                self._stop_accepting()
                self._resume = self._loop.call_later(_ACCEPT_PAUSE, self._start_accepting)
                return
            self._accepted(sock)

    def _accepted(self, sock: socket.socket) -> None:
        if self._closing:
            sock.close()
            return
        limits = self.limits
        if len(self._conns) >= limits.max_connections:  # before reading anything: the cheapest refusal
            self._refuse(sock, -1, "connections", f"rockerd serves at most {limits.max_connections} connections")
            return
        try:
            sock.setblocking(False)
            peer = read_peer(sock)
        except OSError as exc:
            self.log.info("dropping a connection whose credentials cannot be read: %s", exc)
            sock.close()
            return
        uid = peer.uid
        if not (uid == 0 and not peer.foreign_ns):
            if len(self._conns) >= limits.max_connections - limits.root_connections:
                self._refuse(sock, uid, "connections", f"rockerd serves at most {limits.max_connections} "
                             f"connections, the last {limits.root_connections} only for root")
                return
            if self._conns_of.get(uid, 0) >= limits.max_connections_per_uid:
                self._refuse(sock, uid, "connections per uid",
                             f"uid {uid} has {limits.max_connections_per_uid} connections open, the most per uid")
                return
        self._refused.discard(uid)
        self._refused.discard(-1)
        conn = _Connection(self, sock, peer)
        self._conns.add(conn)
        self._conns_of[uid] = self._conns_of.get(uid, 0) + 1
        task = self._loop_or_raise().create_task(conn.run(), name=f"varlink {conn}")
        conn.task = task
        self._tasks.add(task)
        task.add_done_callback(self._connection_done)

    def _forget(self, conn: _Connection) -> None:
        """A connection has closed: it no longer counts against anything."""
        if conn in self._conns:
            self._conns.discard(conn)
            uid = conn.peer.uid
            left = self._conns_of[uid] - 1
            if left:
                self._conns_of[uid] = left
            else:
                del self._conns_of[uid]

    def call_done(self, uid: int) -> None:
        left = self._calls[uid] - 1
        if left:
            self._calls[uid] = left
        else:
            del self._calls[uid]

    def limit_reply(self, limit: str, reason: str) -> bytes:
        return encode_message(_error(self.limit_error, limit=limit, reason=reason))

    def log_refusal(self, uid: int, reason: str) -> None:
        """One warning per uid until one of its connections gets in: a flood must not flood the log."""
        if uid not in self._refused:
            self._refused.add(uid)
            who = "a connection" if uid < 0 else f"uid {uid}"
            self.log.warning("refusing %s: %s (logged once until it gets in again)", who, reason)

    def _refuse(self, sock: socket.socket, uid: int, limit: str, reason: str) -> None:
        """Answer a connection over a limit with the limit error, then close it.

        The reply goes out at once; the socket stays open for its request (at
        most _LINGER s), so that the client's write does not fail with EPIPE
        before it could read why."""
        self.log_refusal(uid, reason)
        loop = self._loop_or_raise()
        try:
            sock.setblocking(False)
            sock.send(self.limit_reply(limit, reason), socket.MSG_NOSIGNAL)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            sock.close()
            return
        if len(self._lingering) >= _MAX_LINGERING:
            sock.close()
            return
        self._lingering[sock] = loop.call_later(_LINGER, self._end_lingering, sock)
        loop.add_reader(sock.fileno(), self._end_lingering, sock)

    def _end_lingering(self, sock: socket.socket) -> None:
        timer = self._lingering.pop(sock, None)
        if timer is None:
            return
        timer.cancel()
        self._loop_or_raise().remove_reader(sock.fileno())
        try:
            sock.recv(_RECV_CHUNK_MAX)  # read what came, so closing does not turn into a reset
        except OSError:
            pass
        sock.close()

    def _connection_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:  # run() catches all; belt and braces
            self.log.error("connection task failed", exc_info=task.exception())
