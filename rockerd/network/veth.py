"""A bridged rocker's link: the veth pair with its host end on the bridge, `eth0` inside with its
address and default route: one netlink round trip and a sysctl on the host's side, then an index
lookup and one batch through a socket of the rocker's namespace.

Used by Network (rockerd) and bench/netcost.py (the kernel's share of it, no rockerd)."""

from __future__ import annotations

import os
from ipaddress import IPv4Address, IPv4Network

from .netns import rtnl_in
from .rtnl import (
    CREATE,
    RTM_NEWADDR,
    RTM_NEWLINK,
    RTM_NEWROUTE,
    Rtnl,
    addr_msg,
    default_route_msg,
    ipv6_off_msg,
    link_msg,
    veth_msg,
)

PEER_NAME = "eth0"
HAS_IPV6 = os.path.isdir("/proc/sys/net/ipv6")  # not with ipv6.disable=1


def link_rocker(netns_fd: int, uid: int, veth: str, bridge_index: int, address: IPv4Address, net: IPv4Network,
                gateway: IPv4Address, ipv6: bool = False) -> None:
    """The pair, the host end made up on the bridge; IPv6 turned off on both ends before the rocker's
    end goes up (a link-local address on each of 2,000 veth ends would flood DAD, router solicitations
    and MLD reports to every port of the bridge: create at 1,000 live rockers took 5x that at 0).
    The host end gets no carrier, so no IPv6, before `eth0` is up: its sysctl has until then.
    `ipv6` leaves IPv6 on (bench/netcost.py's "before")."""
    v6off = HAS_IPV6 and not ipv6
    with Rtnl() as r:
        r.request(f"veth {veth} on bridge #{bridge_index}", veth_msg(veth, PEER_NAME, netns_fd, bridge_index),
                  RTM_NEWLINK, CREATE)
    if v6off:
        ipv6_off(veth)
    with rtnl_in(netns_fd, uid) as r:
        index = r.link_index(PEER_NAME)
        r.batch([("lo up", link_msg(1, up=True), RTM_NEWLINK, 0),
                 *([(f"{PEER_NAME} without IPv6", ipv6_off_msg(index), RTM_NEWLINK, 0)] if v6off else []),
                 (f"{PEER_NAME} up", link_msg(index, up=True), RTM_NEWLINK, 0),
                 (f"address {address}", addr_msg(index, address, net), RTM_NEWADDR, CREATE),
                 (f"default route via {gateway}", default_route_msg(gateway, index), RTM_NEWROUTE, CREATE)])


def ipv6_off(link: str) -> None:
    """disable_ipv6 on a host-side link, before it has a carrier: no link-local address, and none of the
    per-link IPv6 routes that make each link's removal walk a FIB as long as the live rockers.
    (A sysctl: netlink has no way to set it; ipv6_off_msg, for the rocker's end, only stops the address.)"""
    if HAS_IPV6:
        write_sysctl(f"/proc/sys/net/ipv6/conf/{link}/disable_ipv6", "1")


def write_sysctl(path: str, value: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)
