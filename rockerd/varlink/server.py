"""asyncio varlink server over a unix stream socket.

Written on raw non-blocking sockets (``add_reader``/``add_writer`` with
``recvmsg``/``sendmsg``) because asyncio streams cannot carry SCM_RIGHTS and we
want per-connection SO_PEERCRED, bounded buffers and timeouts under our control.
Each connection is served strictly sequentially: one call, one reply, in order.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from dataclasses import dataclass, replace

from .connection import _RECV_CHUNK_MAX, _Connection
from .framing import encode_message
from .interface import (
    _DECLARED_METHOD,
    SERVICE_DESCRIPTION,
    SERVICE_INTERFACE,
    Call,
    Handler,
    Interface,
    Reply,
    VarlinkError,
    _check_interface,
    _error,
)
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

_ACCEPT_BATCH = 64
_ACCEPT_PAUSE = 0.5  # seconds to stop accepting after EMFILE & co (level-triggered reader would spin)
_LINGER = 1.0  # a refused connection stays open this long for its request, so the client reads why
_MAX_LINGERING = 64  # refused connections kept lingering at once; beyond that they are closed at once


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
