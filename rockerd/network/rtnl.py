"""Link, address and route requests over one raw NETLINK_ROUTE socket, encoded with pyroute2's codecs.

No pyroute2 socket object and no event loop: a request is a few hundred bytes
the kernel handles within send(), so a batch goes out in one sendmsg and its
acks are read straight back. Each failure names the request and the errno.
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
from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
from pyroute2.netlink.rtnl.ifinfmsg import IFF_UP, ifinfmsg
from pyroute2.netlink.rtnl.rtmsg import rtmsg

from rocker_sys.libc import SyscallError

NLMSG_ERROR = 2
CREATE = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL
IN6_ADDR_GEN_MODE_NONE = 1


def _encode(msg: nlmsg, kind: int, flags: int, seq: int) -> bytes:
    msg["header"]["type"] = kind
    msg["header"]["flags"] = flags
    msg["header"]["sequence_number"] = seq
    msg.encode()
    return bytes(msg.data)


def link_msg(index: int = 0, *, up: bool = False, attrs: Sequence[tuple[str, Any]] = ()) -> ifinfmsg:
    msg = ifinfmsg()
    msg["index"] = index
    if up:
        msg["flags"] = IFF_UP
        msg["change"] = IFF_UP
    msg["attrs"] = list(attrs)
    return msg


def veth_msg(host_name: str, peer_name: str, peer_netns_fd: int, master: int) -> ifinfmsg:
    """A veth pair: `host_name` here on bridge `master`, `peer_name` in the rocker's netns, both down
    (so IPv6 can be turned off on each before it is up: see ipv6_off_msg)."""
    peer = {"attrs": [("IFLA_IFNAME", peer_name), ("IFLA_NET_NS_FD", peer_netns_fd)]}
    info = {"attrs": [("IFLA_INFO_KIND", "veth"), ("IFLA_INFO_DATA", {"attrs": [("VETH_INFO_PEER", peer)]})]}
    return link_msg(attrs=[("IFLA_IFNAME", host_name), ("IFLA_MASTER", master), ("IFLA_LINKINFO", info)])


def ipv6_off_msg(index: int) -> ifinfmsg:
    """No IPv6 link-local address on this link (addr_gen_mode none), so none of its DAD, router
    solicitations or MLD reports. Linux refuses IFLA_AF_SPEC in a new link's own message
    (EAFNOSUPPORT, 6.18): it is a change sent before the link goes up."""
    af = {"attrs": [("AF_INET6", {"attrs": [("IFLA_INET6_ADDR_GEN_MODE", IN6_ADDR_GEN_MODE_NONE)]})]}
    return link_msg(index, attrs=[("IFLA_AF_SPEC", af)])


def bridge_msg(name: str) -> ifinfmsg:
    info = {"attrs": [("IFLA_INFO_KIND", "bridge")]}
    return link_msg(up=True, attrs=[("IFLA_IFNAME", name), ("IFLA_LINKINFO", info)])


def rocker_bridge_msg(name: str) -> ifinfmsg:
    """rockerd's bridge, down: a fixed MAC (else it takes its lowest port's, which changes as rockers
    come and go, and every rocker's ARP entry for the gateway goes stale), and no multicast snooping
    (with it on, each port's state change walks every port's multicast timers: O(live rockers))."""
    mac = "02:" + ":".join(f"{b:02x}" for b in hashlib.sha256(name.encode()).digest()[:5])
    info = {"attrs": [("IFLA_INFO_KIND", "bridge"),
                      ("IFLA_INFO_DATA", {"attrs": [("IFLA_BR_MCAST_SNOOPING", 0)]})]}
    return link_msg(attrs=[("IFLA_IFNAME", name), ("IFLA_ADDRESS", mac), ("IFLA_LINKINFO", info)])


def addr_msg(index: int, address: IPv4Address, net: IPv4Network) -> ifaddrmsg:
    msg = ifaddrmsg()
    msg["family"] = socket.AF_INET
    msg["prefixlen"] = net.prefixlen
    msg["index"] = index
    msg["attrs"] = [("IFA_LOCAL", str(address)), ("IFA_ADDRESS", str(address)),
                    ("IFA_BROADCAST", str(net.broadcast_address))]
    return msg


def default_route_msg(gateway: IPv4Address, oif: int) -> rtmsg:
    msg = rtmsg()
    msg["family"] = socket.AF_INET
    msg["table"] = 254  # main
    msg["proto"] = 4  # static
    msg["scope"] = 0  # universe
    msg["type"] = 1  # unicast
    msg["flags"] = 4  # RTNH_F_ONLINK: the gateway is on the link, whatever its carrier says yet
    msg["attrs"] = [("RTA_GATEWAY", str(gateway)), ("RTA_OIF", oif)]
    return msg


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

    def batch(self, requests: Sequence[tuple[str, nlmsg, int, int]]) -> None:
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
            off = 0
            while off + 16 <= len(buf):
                length, kind, _, seq, _ = struct.unpack_from("=LHHLL", buf, off)
                if kind == NLMSG_ERROR and seq in pending:
                    pending.discard(seq)
                    (err,) = struct.unpack_from("i", buf, off + 16)
                    if err and first_err is None:
                        first_err = SyscallError(-err, "rtnetlink", names[seq])
                off += (length + 3) & ~3
                if not length:
                    break
        if first_err is not None:
            raise first_err

    def request(self, what: str, msg: nlmsg, kind: int, flags: int = NLM_F_REQUEST) -> None:
        self.batch([(what, msg, kind, flags)])

    def link_index(self, name: str) -> int:
        """The ifindex of the link called `name`; SyscallError(ENODEV) if there is none."""
        self.seq += 1
        self.sock.send(_encode(link_msg(attrs=[("IFLA_IFNAME", name)]), RTM_GETLINK, NLM_F_REQUEST, self.seq))
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
            self.request(f"delete link {name}", link_msg(attrs=[("IFLA_IFNAME", name)]), RTM_DELLINK)
        except SyscallError as e:
            if e.errno == errno.ENODEV:
                return False
            raise
        return True


__all__ = ["CREATE", "RTM_NEWADDR", "RTM_NEWLINK", "RTM_NEWROUTE", "Rtnl", "addr_msg", "bridge_msg",
           "default_route_msg", "ipv6_off_msg", "link_msg", "rocker_bridge_msg", "veth_msg"]
