"""`python3 -m bench.netcost MODE LIVE [SAMPLES]`: the kernel's share of a bridged rocker, at 0 and LIVE.

Root only; no rockerd. Makes a bridge of its own (`rkcost0`, no address: no packet leaves it), then
per sample a network namespace and what rockerd/network does for a bridged rocker (veth.py's
link_rocker, addresses from 198.19.0.0/16). p50 of SAMPLES (default 30) at 0 live, then again with LIVE
such namespaces kept, all removed at the end. MODE is a comma list of what to turn on:

    v6on    IPv6 left on both veth ends (rockerd before: a link-local address each, with its DAD,
            router solicitations and MLD reports flooded to every port of the bridge)
    snoop   multicast snooping left on the bridge (rockerd before)
    none    neither: what rockerd does now

Figures: docs/networking.md, "Cost".
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from ipaddress import IPv4Network

from rocker_sys import ns
from rockerd.network.netns import _own_netns
from rockerd.network.rtnl import CREATE, RTM_NEWLINK, Rtnl, _py_link
from rockerd.network.veth import link_rocker

BRIDGE = "rkcost0"
NET = IPv4Network("198.19.0.0/16")


def new_netns() -> int:
    """A network namespace held by an fd only: this thread steps in for the unshare and back."""
    own = _own_netns()  # before the unshare: it is cached
    ns.unshare(ns.CLONE_NEWNET)
    fd = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    ns.setns(own, ns.CLONE_NEWNET, "back")
    return fd


def attach(i: int, fd: int, bridge: int, v6: bool) -> None:
    link_rocker(fd, 0, f"rkc{i}", bridge, NET.network_address + 2 + i % 60000, NET, NET[1], ipv6=v6)


def main() -> None:
    mode, live = set(sys.argv[1].split(",")), int(sys.argv[2])
    samples = int(sys.argv[3]) if len(sys.argv) > 3 else 30
    v6, snoop = "v6on" in mode, "snoop" in mode
    data = [] if snoop else [("IFLA_INFO_DATA", {"attrs": [("IFLA_BR_MCAST_SNOOPING", 0)]})]
    info = {"attrs": [("IFLA_INFO_KIND", "bridge"), *data]}
    fds: list[int] = []
    with Rtnl() as r:
        r.request("bridge", _py_link([("IFLA_IFNAME", BRIDGE), ("IFLA_LINKINFO", info)], up=True), RTM_NEWLINK, CREATE)
        try:
            bridge = r.link_index(BRIDGE)

            def measure(base: int) -> float:
                times = []
                for k in range(samples):
                    t = time.perf_counter()
                    fd = new_netns()
                    attach(base + k, fd, bridge, v6)
                    times.append((time.perf_counter() - t) * 1e3)
                    os.close(fd)  # the namespace and its veth go with the last reference
                    time.sleep(0.02)
                return statistics.median(times)

            at0 = measure(50000)
            t = time.perf_counter()
            for i in range(live):
                fd = new_netns()
                fds.append(fd)
                attach(i, fd, bridge, v6)
            build = time.perf_counter() - t
            time.sleep(3)
            atn = measure(60000)
            print(f"{sys.argv[1]}: p50 {at0:.2f} ms at 0 live, {atn:.2f} ms at {live} live ({atn / at0:.2f}x); "
                  f"{live} made in {build:.1f} s")
        finally:
            for fd in fds:
                os.close(fd)
            r.delete_link(BRIDGE)


if __name__ == "__main__":
    main()
