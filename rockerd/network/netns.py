"""Bring `lo` up in a rocker's network namespace, from the daemon, while the guard sets up.

The rtnetlink request is the same for every rocker, so it is encoded once
with pyroute2's message codec when the daemon starts. A netlink socket
belongs to the network namespace its creator was in when it made it, so the
daemon's thread steps into the rocker's for that one socket() call and
straight back: no process, no pyroute2 object, no event-loop work per rocker.

The kernel checks CAP_NET_ADMIN against the credentials the socket was
opened with, in the rocker's user namespace. The daemon opens it with the
app's uid as euid: the owner of a user namespace holds every capability in
it, so rockerd needs no CAP_NET_ADMIN for it (network bridge does: rockerd/network/).
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache

from pyroute2.netlink import NLM_F_ACK, NLM_F_REQUEST
from pyroute2.netlink.rtnl import RTM_NEWLINK
from pyroute2.netlink.rtnl.ifinfmsg import IFF_UP, ifinfmsg

from rocker_sys import ns, proc
from rocker_sys.libc import SyscallError

from .rtnl import Rtnl

LO_INDEX = 1  # lo is always ifindex 1 in a new network namespace


def _encode_lo_up() -> bytes:
    msg = ifinfmsg()
    msg["index"] = LO_INDEX
    msg["flags"] = IFF_UP
    msg["change"] = IFF_UP
    msg["header"]["type"] = RTM_NEWLINK
    msg["header"]["flags"] = NLM_F_REQUEST | NLM_F_ACK
    msg["header"]["sequence_number"] = 1
    msg.encode()
    return bytes(msg.data)


LO_UP = _encode_lo_up()


@cache
def _own_netns() -> int:
    """This thread's own network namespace, to come back to (kept open for the daemon's life)."""
    return os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)


def load() -> None:
    """Open our own netns fd at start: an open that fails per rocker would be a late surprise."""
    _own_netns()


def loopback_up(netns_fd: int, owner_uid: int) -> None:
    """Send LO_UP into that netns as `owner_uid`, the owner of the netns's user namespace.

    Both the socket's opener and the sender must hold CAP_NET_ADMIN there: the
    thread is that uid (as euid) from socket() to the ack, and root around it
    (setns wants CAP_SYS_ADMIN over the namespace it leaves too).
    """
    with rtnl_in(netns_fd, owner_uid) as r:
        r.sock.send(LO_UP)
        ack = r.sock.recv(4096)  # the kernel handles the request within send(): no waiting
    # nlmsgerr: header (16 bytes) then a negative errno, 0 on success
    (err,) = struct.unpack_from("i", ack, 16)
    if err:
        raise SyscallError(-err, "rtnetlink RTM_NEWLINK", "lo up")


@contextmanager
def rtnl_in(netns_fd: int, owner_uid: int) -> Iterator[Rtnl]:
    """A NETLINK_ROUTE socket of that netns, used as `owner_uid` (euid) and closed on exit.

    A netlink socket belongs to the netns it was made in: the thread steps in for
    socket() and straight back. The requests are then sent as the owner too."""
    own = _own_netns()
    ns.setns(netns_fd, ns.CLONE_NEWNET, "net")
    try:
        with _as_euid(owner_uid):
            r = Rtnl()
    finally:
        ns.setns(own, ns.CLONE_NEWNET, "net (back to the daemon's)")
    try:
        with _as_euid(owner_uid):
            yield r
    finally:
        r.close()


@contextmanager
def _as_euid(uid: int) -> Iterator[None]:
    if not uid:
        yield
        return
    proc.set_thread_euid(uid)
    try:
        yield
    finally:
        proc.set_thread_euid(0)
