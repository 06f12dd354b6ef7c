"""Who is on the other end of a unix socket: ids, supplementary groups, and whether it is in our namespaces.

Everything comes from the socket or is checked against it: SO_PEERCRED (ids
and pid as of connect), SO_PEERGROUPS (the groups as of connect, no /proc
race) and SO_PEERPIDFD (Linux 6.5+: the very process that connected, so its
PID cannot be reused under us while /proc/PID/ns is read; older kernels
fall back to pidfd_open of the SO_PEERCRED pid, see docs/security.md).
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import socket
import struct
from dataclasses import dataclass
from functools import cache

from rocker_sys import ns

__all__ = ["Peer", "peer_groups", "peer_namespaces", "read_peer"]

SO_PEERGROUPS = 59
SO_PEERPIDFD = 77
_GROUPS_BUF = 1024  # CPython's getsockopt refuses a larger buflen (256 groups); more goes through ctypes
_UCRED = struct.Struct("iII")  # struct ucred: pid_t, uid_t, gid_t

_libc = ctypes.CDLL(None, use_errno=True)
log = logging.getLogger("rockerd.varlink")
_warned: set[str] = set()
_have_peerpidfd = True  # until the kernel says ENOPROTOOPT


@dataclass(frozen=True)
class Peer:
    """Credentials of the connecting process, read at accept time.

    ``foreign_ns`` is empty when the peer runs in rockerd's own user and PID
    namespaces (or in ones out of its sight, above it), else why it does not
    (an app inside a rocker or another container, or a peer that could not
    be checked)."""

    pid: int
    uid: int
    gid: int
    groups: tuple[int, ...] = ()  # supplementary groups, from SO_PEERGROUPS
    foreign_ns: str = ""


def _warn_once(key: str, msg: str, *args: object) -> None:
    if key not in _warned:
        _warned.add(key)
        log.warning(msg, *args)


def read_peer(sock: socket.socket) -> Peer:
    """The peer of an accepted connection; OSError only if SO_PEERCRED itself fails."""
    pid, uid, gid = _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
    return Peer(pid=pid, uid=uid, gid=gid, groups=peer_groups(sock), foreign_ns=peer_namespaces(sock, pid))


def peer_groups(sock: socket.socket) -> tuple[int, ...]:
    """The peer's supplementary groups, however many (Linux 4.13+); () and one warning if unreadable."""
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, SO_PEERGROUPS, _GROUPS_BUF)
    except OSError as exc:
        if exc.errno != errno.ERANGE:
            _warn_once("groups", "cannot read a peer's supplementary groups (SO_PEERGROUPS: %s); "
                       "only primary gids count as held", exc)
            return ()
        try:
            raw = _getsockopt_any_size(sock.fileno(), SO_PEERGROUPS)
        except OSError as exc2:
            _warn_once("groups", "cannot read a peer's supplementary groups: %s; only primary gids count", exc2)
            return ()
    return struct.unpack(f"{len(raw) // 4}I", raw[: len(raw) - len(raw) % 4])


def _getsockopt_any_size(fd: int, opt: int) -> bytes:
    """getsockopt with a buffer of the size the kernel asks for (it says so with ERANGE)."""
    size = ctypes.c_uint32(0)
    for _ in range(4):
        buf = ctypes.create_string_buffer(max(size.value, 1))
        size.value = len(buf)
        if _libc.getsockopt(fd, socket.SOL_SOCKET, opt, buf, ctypes.byref(size)) == 0:
            return buf.raw[: size.value]
        err = ctypes.get_errno()
        if err != errno.ERANGE:
            raise OSError(err, f"getsockopt(SOL_SOCKET, {opt}): {os.strerror(err)}")
    raise OSError(errno.ERANGE, f"getsockopt(SOL_SOCKET, {opt}): the size kept changing")


@cache
def _own_namespaces() -> dict[str, str]:
    return {kind: os.readlink(f"/proc/self/ns/{kind}") for kind in ("user", "pid")}


def _peer_pidfd(sock: socket.socket, pid: int) -> int:
    """A pidfd of the connecting process: exact with SO_PEERPIDFD, else of whatever has its PID now."""
    global _have_peerpidfd
    if _have_peerpidfd:
        try:
            return sock.getsockopt(socket.SOL_SOCKET, SO_PEERPIDFD)
        except OSError as exc:
            if exc.errno not in (errno.ENOPROTOOPT, errno.EINVAL):
                raise
            _have_peerpidfd = False
            log.info("no SO_PEERPIDFD (Linux < 6.5): a caller's namespaces are checked through its PID")
    return ns.pidfd_open(pid)


def _alive(pidfd: int) -> bool:
    try:
        ns.pidfd_send_signal(pidfd, 0)
    except OSError:
        return False
    return True


def peer_namespaces(sock: socket.socket, pid: int) -> str:
    """"" if the peer runs in our user and PID namespaces, else why not (never raises).

    A rocker's processes are always in namespaces below ours, so their PIDs
    are ours to see. A peer whose PID we cannot see (0) is above or beside
    us, e.g. on the host while rockerd runs in a container: not in a rocker.
    The namespaces are read from /proc/PID, then the pidfd says whether that
    PID still was the peer: a process that is still alive has kept its PID."""
    if pid <= 0:
        return ""
    try:
        pidfd = _peer_pidfd(sock, pid)
    except OSError as exc:
        return f"its process cannot be checked ({exc.strerror})"
    try:
        for kind, own in _own_namespaces().items():
            # "user:[INODE]": nsfs numbers every namespace uniquely; readlink costs half a stat
            if os.readlink(f"/proc/{pid}/ns/{kind}") != own:
                return f"it runs in a {kind} namespace other than rockerd's"
        if not _alive(pidfd):
            return "its process exited before its namespaces could be checked"
        return ""
    except OSError as exc:
        return f"its namespaces cannot be read ({exc.strerror})"
    finally:
        os.close(pidfd)
