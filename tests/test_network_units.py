"""The parts of networking that need no kernel: the address pool, resolv.conf, publish specs, messages."""

from __future__ import annotations

import socket
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any

import pytest
from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
from pyroute2.netlink.rtnl.ifinfmsg import IFF_UP, ifinfmsg
from pyroute2.netlink.rtnl.rtmsg import rtmsg

from rockerd.network import dns, rtnl
from rockerd.network.ipam import Pool, PoolExhausted
from rockerd.request import RequestInvalid, parse_publish, parse_request


def test_pool_is_next_fit_and_gives_back() -> None:
    pool = Pool(IPv4Network("198.18.2.0/29"))
    assert pool.gateway == IPv4Address("198.18.2.1")
    got = [pool.allocate(f"rk-{i}") for i in range(5)]
    assert got == [IPv4Address(f"198.18.2.{i}") for i in range(2, 7)]  # not .0, .1 (bridge) nor .7 (broadcast)
    with pytest.raises(PoolExhausted):
        pool.allocate("rk-6")
    pool.release(got[1])
    assert pool.allocate("rk-7") == got[1]
    pool.release(got[0])
    pool.release(got[3])
    assert pool.allocate("rk-8") == got[3]  # next-fit: after the last one handed out, not the lowest free


def test_pool_holds_a_readopted_address_once() -> None:
    pool = Pool(IPv4Network("198.18.2.0/29"))
    pool.hold("rk-a", IPv4Address("198.18.2.4"))
    with pytest.raises(ValueError, match="already rk-a's"):
        pool.hold("rk-b", IPv4Address("198.18.2.4"))
    with pytest.raises(ValueError, match="not in the pool"):
        pool.hold("rk-b", IPv4Address("198.18.2.1"))
    assert IPv4Address("198.18.2.4") not in {pool.allocate(f"rk-{i}") for i in range(4)}


def test_resolv_conf_replaces_a_local_stub_by_its_upstreams(tmp_path: Path) -> None:
    host, up = tmp_path / "resolv.conf", tmp_path / "upstreams"
    host.write_text("nameserver 127.0.0.53\noptions edns0 trust-ad\nsearch example.test\n")
    up.write_text("nameserver 198.18.9.9\nnameserver 198.18.9.10\n")
    text = dns.content((), str(host), str(up))
    assert [ln for ln in text.splitlines() if not ln.startswith("#")] == [
        "nameserver 198.18.9.9", "nameserver 198.18.9.10", "options edns0 trust-ad", "search example.test"]
    host.write_text("nameserver 198.18.9.1\n")  # no stub: the host's own
    assert "nameserver 198.18.9.1\n" in dns.content((), str(host), str(up))
    assert "nameserver 198.19.0.2\n" in dns.content(("198.19.0.2",), str(host), str(up))  # --bridge-dns


@pytest.mark.parametrize(("spec", "want"), [("8080:80", (8080, 80, "tcp")), ("53:53/udp", (53, 53, "udp")),
                                            ("1:65535/tcp", (1, 65535, "tcp"))])
def test_publish_specs(spec: str, want: tuple[int, int, str]) -> None:
    assert parse_publish(spec) == want


@pytest.mark.parametrize(("publish", "network", "reason"), [
    (["80"], "bridge", "must be HOST_PORT:PORT"), (["0:80"], "bridge", r"ports must be 1\.\.65535"),
    (["80:80/sctp"], "bridge", "tcp or udp"), (["٨٠:80"], "bridge", "must be HOST_PORT:PORT"),
    (["80:80", "80:81"], "bridge", r"also publish\[0\]"), (["80:80"], "host", "needs network bridge"),
])
def test_bad_publish_refused(publish: list[str], network: str, reason: str) -> None:
    with pytest.raises(RequestInvalid, match=reason):
        parse_request({"uid": 0, "gid": 0, "app_pkg_path": "/a.sq", "app_exec_dir": "/x/e", "app_data_dir": "/x/d",
                       "network": network, "publish": publish})


def _pyroute2(msg: Any, attrs: list[tuple[str, Any]], **fields: int) -> bytes:
    """The same message encoded by pyroute2's codec (the reference), its body after the header."""
    for k, v in fields.items():
        msg[k] = v
    msg["attrs"] = attrs
    msg.encode()
    return bytes(msg.data)[16:]


def test_per_rocker_messages_match_pyroute2s_encoding() -> None:
    """rtnl.py packs these with struct (pyroute2's codec cost ~0.5 ms of Python per bridged rocker):
    each must be, byte for byte, what pyroute2 would have sent."""
    net, addr = IPv4Network("198.18.0.0/23"), IPv4Address("198.18.1.7")
    queues = [("IFLA_NUM_TX_QUEUES", 1), ("IFLA_NUM_RX_QUEUES", 1)]
    peer = {"attrs": [("IFLA_IFNAME", "eth0"), ("IFLA_NET_NS_FD", 9), *queues]}
    info = {"attrs": [("IFLA_INFO_KIND", "veth"), ("IFLA_INFO_DATA", {"attrs": [("VETH_INFO_PEER", peer)]})]}
    host = [("IFLA_IFNAME", "vrk-0123abcd"), ("IFLA_MASTER", 42), *queues, ("IFLA_LINKINFO", info)]
    assert rtnl.veth_msg("vrk-0123abcd", "eth0", 9, 42) == _pyroute2(ifinfmsg(), host, flags=IFF_UP, change=IFF_UP)
    assert rtnl.veth_msg("vrk-0123abcd", "eth0", 9, 42, up=False) == _pyroute2(ifinfmsg(), host)
    af = {"attrs": [("AF_INET6", {"attrs": [("IFLA_INET6_ADDR_GEN_MODE", 1)]})]}
    assert rtnl.ipv6_off_msg(3) == _pyroute2(ifinfmsg(), [("IFLA_AF_SPEC", af)], index=3)
    assert rtnl.link_msg(3, up=True) == _pyroute2(ifinfmsg(), [], index=3, flags=IFF_UP, change=IFF_UP)
    assert rtnl.link_msg(up=True, name="vrk-0123abcd") == _pyroute2(
        ifinfmsg(), [("IFLA_IFNAME", "vrk-0123abcd")], flags=IFF_UP, change=IFF_UP)
    assert rtnl.addr_msg(3, addr, net) == _pyroute2(
        ifaddrmsg(), [("IFA_LOCAL", str(addr)), ("IFA_ADDRESS", str(addr)), ("IFA_BROADCAST", "198.18.1.255")],
        family=socket.AF_INET, prefixlen=23, index=3)
    assert rtnl.default_route_msg(net[1], 3) == _pyroute2(
        rtmsg(), [("RTA_GATEWAY", str(net[1])), ("RTA_OIF", 3)],
        family=socket.AF_INET, table=254, proto=4, scope=0, type=1, flags=4)
