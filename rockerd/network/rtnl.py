"""Link, address and route requests over one raw NETLINK_ROUTE socket.

No pyroute2 socket object and no event loop: a request is a few hundred bytes
the kernel handles within send(), so a batch goes out in one sendmsg and its
acks are read straight back. Each failure names the request and the errno.

The per-rocker messages (veth, links up, address, route) are packed with
struct: pyroute2's codec took ~0.5 ms of Python per bridged rocker, holding
the GIL while the event loop builds the rocker's mounts. tests/test_network_units.py
checks them byte for byte against pyroute2's encoding. The bridge (once per
rockerd) is still encoded by pyroute2.
"""

from __future__ import annotations

import errno
import hashlib
import socket
import struct
from collections.abc import Sequence
from ipaddress import IPv4Address, IPv4Network
from typing import Any

from pyroute2.netlink import NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REQUEST, nlmsg
from pyroute2.netlink.rtnl import RTM_DELLINK, RTM_GETLINK, RTM_NEWADDR, RTM_NEWLINK, RTM_NEWROUTE
from pyroute2.netlink.rtnl.ifinfmsg import IFF_UP, ifinfmsg

from rocker_sys.libc import SyscallError

from .nlmsg import error_of, messages

NLMSG_ERROR = 2
CREATE = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL
IN6_ADDR_GEN_MODE_NONE = 1
# attribute numbers, linux/if_link.h, if_addr.h, rtnetlink.h, veth.h
IFLA_IFNAME, IFLA_MASTER, IFLA_LINKINFO, IFLA_AF_SPEC, IFLA_NET_NS_FD = 3, 10, 18, 26, 28
IFLA_NUM_TX_QUEUES, IFLA_NUM_RX_QUEUES = 31, 32
IFLA_INFO_KIND, IFLA_INFO_DATA, VETH_INFO_PEER = 1, 2, 1
IFLA_INET6_ADDR_GEN_MODE = 8
IFA_ADDRESS, IFA_LOCAL, IFA_BROADCAST = 1, 2, 4
RTA_OIF, RTA_GATEWAY = 4, 5

Msg = bytes | nlmsg  # a packed body (what follows the netlink header), or a pyroute2 message


def _attr(kind: int, data: bytes) -> bytes:
    return struct.pack("=HH", 4 + len(data), kind) + data + b"\0" * (-len(data) % 4)


def _u32(kind: int, value: int) -> bytes:
    return _attr(kind, struct.pack("=I", value))


def _str(kind: int, value: str) -> bytes:
    return _attr(kind, value.encode() + b"\0")


def _ifinfo(index: int = 0, up: bool = False) -> bytes:
    flags = IFF_UP if up else 0
    return struct.pack("=BxHiII", 0, 0, index, flags, flags)


def _encode(msg: Msg, kind: int, flags: int, seq: int) -> bytes:
    if isinstance(msg, bytes):
        return struct.pack("=LHHLL", 16 + len(msg), kind, flags, seq, 0) + msg
    msg["header"]["type"] = kind
    msg["header"]["flags"] = flags
    msg["header"]["sequence_number"] = seq
    msg.encode()
    return bytes(msg.data)


def link_msg(index: int = 0, *, up: bool = False, name: str | None = None) -> bytes:
    """A link by index (or by name, index 0), brought up if `up`."""
    return _ifinfo(index, up) + (_str(IFLA_IFNAME, name) if name is not None else b"")


def veth_msg(host_name: str, peer_name: str, peer_netns_fd: int, master: int, *, up: bool = True) -> bytes:
    """A veth pair: `host_name` here on bridge `master` (up if `up`), `peer_name` in the rocker's netns,
    down (so IPv6 can be turned off on it before it is up: see ipv6_off_msg; until it is, the host end
    has no carrier, which is what IPv6 waits for there too).

    One transmit and one receive queue per end: veth's default is one of each per possible CPU, each
    a sysfs directory of its own made and removed with the link (a third of the pair's creation on 2
    CPUs). Without XDP or GRO on the veth (the default) a packet goes to the receiving CPU's backlog
    whatever the queue, so nothing is lost by it."""
    queues = _u32(IFLA_NUM_TX_QUEUES, 1) + _u32(IFLA_NUM_RX_QUEUES, 1)
    peer = _ifinfo() + _str(IFLA_IFNAME, peer_name) + _u32(IFLA_NET_NS_FD, peer_netns_fd) + queues
    info = _str(IFLA_INFO_KIND, "veth") + _attr(IFLA_INFO_DATA, _attr(VETH_INFO_PEER, peer))
    return link_msg(up=up, name=host_name) + _u32(IFLA_MASTER, master) + queues + _attr(IFLA_LINKINFO, info)


def ipv6_off_msg(index: int) -> bytes:
    """No IPv6 link-local address on this link (addr_gen_mode none), so none of its DAD, router
    solicitations or MLD reports. Linux refuses IFLA_AF_SPEC in a new link's own message
    (EAFNOSUPPORT, 6.18): it is a change sent before the link goes up."""
    inet6 = _attr(IFLA_INET6_ADDR_GEN_MODE, bytes([IN6_ADDR_GEN_MODE_NONE]))
    return _ifinfo(index) + _attr(IFLA_AF_SPEC, _attr(socket.AF_INET6, inet6))


def addr_msg(index: int, address: IPv4Address, net: IPv4Network) -> bytes:
    head = struct.pack("=BBBBI", socket.AF_INET, net.prefixlen, 0, 0, index)
    return (head + _attr(IFA_LOCAL, address.packed) + _attr(IFA_ADDRESS, address.packed)
            + _attr(IFA_BROADCAST, net.broadcast_address.packed))


def default_route_msg(gateway: IPv4Address, oif: int) -> bytes:
    """Main table (254), static (4), universe scope, unicast; RTNH_F_ONLINK (4): the gateway is on
    the link, whatever its carrier says yet."""
    head = struct.pack("=BBBBBBBBI", socket.AF_INET, 0, 0, 0, 254, 4, 0, 1, 4)
    return head + _attr(RTA_GATEWAY, gateway.packed) + _u32(RTA_OIF, oif)


def _py_link(attrs: Sequence[tuple[str, Any]], up: bool = False) -> ifinfmsg:
    msg = ifinfmsg()
    msg["index"] = 0
    if up:
        msg["flags"] = IFF_UP
        msg["change"] = IFF_UP
    msg["attrs"] = list(attrs)
    return msg


def bridge_msg(name: str) -> ifinfmsg:
    info = {"attrs": [("IFLA_INFO_KIND", "bridge")]}
    return _py_link([("IFLA_IFNAME", name), ("IFLA_LINKINFO", info)], up=True)


def rocker_bridge_msg(name: str) -> ifinfmsg:
    """rockerd's bridge, down: a fixed MAC (else it takes its lowest port's, which changes as rockers
    come and go, and every rocker's ARP entry for the gateway goes stale), and no multicast snooping
    (with it on, each port's state change walks every port's multicast timers: O(live rockers))."""
    mac = "02:" + ":".join(f"{b:02x}" for b in hashlib.sha256(name.encode()).digest()[:5])
    info = {"attrs": [("IFLA_INFO_KIND", "bridge"),
                      ("IFLA_INFO_DATA", {"attrs": [("IFLA_BR_MCAST_SNOOPING", 0)]})]}
    return _py_link([("IFLA_IFNAME", name), ("IFLA_ADDRESS", mac), ("IFLA_LINKINFO", info)])


class Rtnl:
    """A NETLINK_ROUTE socket of the network namespace the calling thread is in when it is made."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, socket.NETLINK_ROUTE)
        self.seq = 0

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Rtnl:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def batch(self, requests: Sequence[tuple[str, Msg, int, int]]) -> None:
        """Send (what, msg, type, flags) requests in one go; raise SyscallError for the first that failed."""
        data, names = b"", {}
        for what, msg, kind, flags in requests:
            self.seq += 1
            names[self.seq] = what
            data += _encode(msg, kind, flags | NLM_F_REQUEST | NLM_F_ACK, self.seq)
        self.sock.send(data)
        pending, first_err = set(names), None
        while pending:
            buf = self.sock.recv(65536)
            for kind, seq, off, _ in messages(buf):
                if kind == NLMSG_ERROR and seq in pending:
                    pending.discard(seq)
                    err = error_of(buf, off)
                    if err and first_err is None:
                        first_err = SyscallError(-err, "rtnetlink", names[seq])
        if first_err is not None:
            raise first_err

    def request(self, what: str, msg: Msg, kind: int, flags: int = NLM_F_REQUEST) -> None:
        self.batch([(what, msg, kind, flags)])

    def link_index(self, name: str) -> int:
        """The ifindex of the link called `name`; SyscallError(ENODEV) if there is none."""
        self.seq += 1
        self.sock.send(_encode(link_msg(name=name), RTM_GETLINK, NLM_F_REQUEST, self.seq))
        buf = self.sock.recv(65536)
        (kind,) = struct.unpack_from("=H", buf, 4)
        if kind == NLMSG_ERROR:
            (err,) = struct.unpack_from("i", buf, 16)
            raise SyscallError(-err, "rtnetlink RTM_GETLINK", name)
        (index,) = struct.unpack_from("i", buf, 16 + 4)  # ifinfomsg: family(1) pad(1) type(2) index(4)
        return index

    def delete_link(self, name: str) -> bool:
        """Delete a link by name; False if there was none."""
        try:
            self.request(f"delete link {name}", link_msg(name=name), RTM_DELLINK)
        except SyscallError as e:
            if e.errno == errno.ENODEV:
                return False
            raise
        return True


__all__ = ["CREATE", "RTM_NEWADDR", "RTM_NEWLINK", "RTM_NEWROUTE", "Rtnl", "addr_msg", "bridge_msg",
           "default_route_msg", "ipv6_off_msg", "link_msg", "rocker_bridge_msg", "veth_msg"]
