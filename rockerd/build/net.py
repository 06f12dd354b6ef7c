"""Bring `lo` up in the rocker's network namespace.

The rtnetlink request is the same for every rocker, so it is encoded once
with pyroute2's message codec when the daemon starts; the freshly cloned
child (outside any event loop, where every touched Python object costs a
copy-on-write page) only sends those bytes and reads the ack.
"""

from __future__ import annotations

import socket
import struct

from pyroute2.netlink import NLM_F_ACK, NLM_F_REQUEST
from pyroute2.netlink.rtnl import RTM_NEWLINK
from pyroute2.netlink.rtnl.ifinfmsg import IFF_UP, ifinfmsg

from rocker_client._sys.libc import SyscallError

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


def loopback_up() -> None:
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, socket.NETLINK_ROUTE) as s:
        s.send(LO_UP)
        ack = s.recv(4096)
    # nlmsgerr: header (16 bytes) then a negative errno, 0 on success
    (err,) = struct.unpack_from("i", ack, 16)
    if err:
        raise SyscallError(-err, "rtnetlink RTM_NEWLINK", "lo up")
