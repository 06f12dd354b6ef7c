"""Networking modes on the real kernel: none, host, bridge (NAT, DNS, published ports).

Test traffic goes only to loopback and to addresses inside namespaces the tests made, all in
198.18.0.0/15 (netoutside.py): the bridge subnet is 198.18.0.0/23, the "outside" 198.19.0.0/24,
and bridged rockers' resolv.conf names the outside's DNS responder (rockerd --bridge-dns).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any

import netoutside as out
import pytest
from daemon import Daemon, start_daemon
from pkgbuild import build_pkg
from pyroute2 import IPRoute
from pyroute2.netlink.rtnl import RTM_NEWADDR, RTM_NEWLINK
from rockers import live_app, lo_works, make_req, run_app, wait_gone

from rocker_client import RockerErr, wire
from rockerd.network.nft import Nft
from rockerd.network.rtnl import CREATE, Rtnl, addr_msg, bridge_msg

SUBNET = IPv4Network(out.TEST_SUBNET)
TABLE = f"rocker_{out.TEST_BRIDGE}"


def _links() -> set[str]:
    return set(os.listdir("/sys/class/net"))


def _tables() -> set[str]:
    with Nft() as nft:
        return {t for _, t in nft.tables()}


def _forwarding() -> str:
    with open("/proc/sys/net/ipv4/ip_forward") as f:
        return f.read().strip()


def start_netd(workdir: Path, *extra: str) -> Daemon:
    return start_daemon(workdir, "--socket-mode", "0666", "--bridge-subnet", out.TEST_SUBNET,
                        "--bridge-name", out.TEST_BRIDGE, "--bridge-dns", out.OUT_ADDR, *extra)


@dataclass
class World:
    base: Path
    pkg: Path
    d: Daemon

    def restart(self) -> None:
        """Stop rockerd (its rockers live on) and start another on the same state."""
        self.d.stop()
        assert "Traceback" not in self.d.log_text(), self.d.log_text()
        self.d = start_netd(self.base / "d")
        os.environ["ROCKER_SOCKET"] = os.environ["NET_WORLD_SOCKET"] = self.d.socket


HOST_BRIDGE, HOST_TABLE, HOST_NET = "rkt-hostbr", "rkt_hostfw", IPv4Network("198.18.100.0/24")


def host_state() -> tuple[bool, list[tuple[str, int, bytes]]]:
    with Nft(HOST_TABLE) as nft:
        return HOST_BRIDGE in _links(), nft.rules()


@contextmanager
def host_setup() -> Iterator[tuple[bool, list[tuple[str, int, bytes]]]]:
    """A bridge and a NAT table the host had before rockerd (as docker or podman leave them)."""
    with Rtnl() as r:
        r.request("host bridge", bridge_msg(HOST_BRIDGE), RTM_NEWLINK, CREATE)
        r.request("its address", addr_msg(r.link_index(HOST_BRIDGE), HOST_NET[1], HOST_NET), RTM_NEWADDR, CREATE)
    try:
        with Nft(HOST_TABLE) as nft:
            nft.create(HOST_NET, HOST_BRIDGE)
        try:
            yield host_state()
        finally:
            with Nft(HOST_TABLE) as nft:
                nft.delete()
    finally:
        with Rtnl() as r:
            r.delete_link(HOST_BRIDGE)


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    """The outside, a daemon, a package; one bridged rocker first, so the bridge and the table exist
    before the per-test leak check looks (they belong to the daemon, not to one test)."""
    base = Path(tempfile.mkdtemp(prefix="rocker-net-", dir="/tmp"))  # uid 1000 must reach the socket
    base.chmod(0o755)
    pkg = build_pkg(base, {"bin/true": (b"#!/bin/sh\n", 0o755)})
    forwarding = _forwarding()
    old_socket = os.environ.get("ROCKER_SOCKET")  # the session rockerd's, for the tests after these
    with out.outside(), host_setup() as before:
        d = start_netd(base / "d")
        os.environ["ROCKER_SOCKET"] = os.environ["NET_WORLD_SOCKET"] = d.socket
        try:
            assert out.TEST_BRIDGE not in _links()
            for sub in ("exec", "data"):
                (base / sub).mkdir()
            warm = make_req(base, pkg, overlays=("/usr",))
            warm.network = "bridge"
            run = run_app(warm, lambda: {})
            assert run.res.ok, run.res.detail
            assert out.TEST_BRIDGE in _links() and TABLE in _tables()
            w = World(base, pkg, d)
            yield w
        finally:
            os.environ.pop("NET_WORLD_SOCKET", None)
            if old_socket is None:
                os.environ.pop("ROCKER_SOCKET", None)
            else:
                os.environ["ROCKER_SOCKET"] = old_socket
            w.d.stop()
        log = w.d.log_text()
        assert "Traceback" not in log, log
        # the last rockerd to stop with no bridged rocker left takes everything away
        assert out.TEST_BRIDGE not in _links() and TABLE not in _tables(), log
        assert _forwarding() == forwarding
        assert host_state() == before  # the host's own bridge and table, untouched
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def req(world: World, tmp_path: Path) -> Callable[..., Any]:
    tmp_path.chmod(0o755)
    pkg = world.pkg

    def make(network: str | None, publish: tuple[str, ...] = ()) -> Any:
        r = make_req(tmp_path, pkg, overlays=("/usr",))
        (tmp_path / "data").mkdir(exist_ok=True)
        r.network, r.publish = network, list(publish)
        return r
    return make


# ---- what the app does inside ----

def _connect(addr: str, port: int = out.ECHO_PORT, data: bytes = b"hi") -> dict[str, Any]:
    try:
        with socket.create_connection((addr, port), timeout=3) as s:
            s.sendall(data)
            return {"reply": s.recv(4096).decode(), "me": s.getsockname()[0]}
    except OSError as e:
        return {"errno": e.errno}


def _udp(addr: str) -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(3)
        s.sendto(b"ping", (addr, out.ECHO_PORT))
        return s.recv(4096).decode()


def _interfaces() -> list[str]:
    return sorted(name for _, name in socket.if_nameindex())


def _nameservers() -> list[str]:
    with open("/etc/resolv.conf") as f:
        return [ln.split()[1] for ln in f if ln.startswith("nameserver")]


# ---- modes ----

def test_none_reaches_nothing_but_itself(req: Callable[..., Any]) -> None:
    def probe() -> dict[str, Any]:
        return {"ifs": _interfaces(), "lo": lo_works(), "out": _connect(out.OUT_ADDR)}

    run = run_app(req(None), probe)  # the daemon's default: none
    assert run.res.ok, run.res.detail
    assert run.report == {"ifs": ["lo"], "lo": True, "out": {"errno": errno.ENETUNREACH}}


def test_host_sees_the_hosts_interfaces(req: Callable[..., Any]) -> None:
    guard_ns: list[str] = []
    run = run_app(req("host"), lambda: {"ifs": _interfaces(), "out": _connect(out.OUT_ADDR)},
                  lambda res: guard_ns.append(os.readlink(f"/proc/{res.guard_pid}/ns/net")))
    assert run.res.ok, run.res.detail
    assert guard_ns == [os.readlink("/proc/self/ns/net")]  # no network namespace made at all
    settled = [n for n in run.report["ifs"] if not n.startswith("vrk-")]  # ended rockers' veths go lazily
    assert settled == [n for n in _interfaces() if not n.startswith("vrk-")] and out.HOST_SIDE in settled
    assert run.report["out"]["reply"] == f"echo from {out.HOST_ADDR}: hi"  # the host's own address


def test_bridge_reaches_the_outside_through_nat_and_resolves(req: Callable[..., Any]) -> None:
    def probe() -> dict[str, Any]:
        return {"ifs": _interfaces(), "tcp": _connect(out.OUT_ADDR), "udp": _udp(out.OUT_ADDR),
                "ns": _nameservers(), "name": socket.gethostbyname("outside.test")}

    run = run_app(req("bridge"), probe)
    assert run.res.ok, run.res.detail
    r = run.report
    assert r["ifs"] == ["eth0", "lo"]
    assert IPv4Address(r["tcp"]["me"]) in SUBNET
    assert r["tcp"]["reply"] == f"echo from {out.HOST_ADDR}: hi"  # masqueraded behind the host
    assert r["udp"] == "udp echo: ping"
    assert r["ns"] == [out.OUT_ADDR] and r["name"] == out.OUT_ADDR


def _inet6_links() -> list[str]:
    """The links with an IPv6 address in this network namespace (tentative ones too)."""
    with open("/proc/net/if_inet6") as f:
        return sorted({ln.split()[5] for ln in f})


@pytest.mark.skipif(not os.path.isdir("/proc/sys/net/ipv6"), reason="no IPv6 in this kernel")
def test_bridged_links_have_no_ipv6_and_the_bridge_keeps_its_mac(req: Callable[..., Any]) -> None:
    """A link-local address on each veth end would send DAD, router solicitations and MLD reports to
    every port (a create at 1,000 live rockers took 5x that at 0); the bridge's MAC must not follow
    its lowest port's, or the rockers' ARP entries for the gateway go stale."""
    br = Path("/sys/class/net", out.TEST_BRIDGE)
    mac = (br / "address").read_text()
    with live_app(req("bridge"), lambda: {"v6": _inet6_links()}) as run:
        assert run.res.ok, run.res.detail
        veth = "v" + run.res.guard_pname
        host_end = Path(f"/proc/sys/net/ipv6/conf/{veth}/disable_ipv6").read_text().strip()
        host_v6 = _inet6_links()
    assert run.report == {"v6": ["lo"]}  # eth0 inside: no address, not even a tentative one
    assert host_end == "1" and veth not in host_v6 and out.TEST_BRIDGE not in host_v6
    assert (br / "bridge/multicast_snooping").read_text().strip() == "0"
    assert (br / "addr_assign_type").read_text().strip() == "3"  # NET_ADDR_SET: ours, not a port's
    assert (br / "address").read_text() == mac


def _queues() -> dict[str, int]:
    """eth0's transmit and receive queues, as the kernel reports them (the app's netns)."""
    with IPRoute() as ipr:
        (link,) = ipr.link("get", ifname="eth0")
        return {k: link.get_attr(f"IFLA_NUM_{k.upper()}_QUEUES") for k in ("tx", "rx")}


def test_each_veth_end_has_one_queue_each_way(req: Callable[..., Any]) -> None:
    """veth's default is a transmit and a receive queue per possible CPU, each a sysfs directory made
    and removed with the link: one of each (docs/networking.md, Cost)."""
    with live_app(req("bridge"), _queues) as run:
        assert run.res.ok, run.res.detail
        host_end = sorted(os.listdir(f"/sys/class/net/v{run.res.guard_pname}/queues"))
    assert run.report == {"tx": 1, "rx": 1}
    assert host_end == ["rx-0", "tx-0"]


def _server_probe(port: int) -> Callable[[], dict[str, Any]]:
    """The app: an echo server on `port` (answering until the test releases it), its address."""
    def probe() -> dict[str, Any]:
        srv = socket.socket()
        srv.bind(("0.0.0.0", port))
        srv.listen(16)

        def serve() -> None:
            while True:
                c, a = srv.accept()
                with c:
                    c.sendall(b"app saw " + a[0].encode() + b": " + c.recv(100))
        threading.Thread(target=serve, daemon=True).start()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect((out.OUT_ADDR, 9))  # no packet: picks the source address
            return {"addr": s.getsockname()[0]}
    return probe


def test_bridge_is_reached_by_address_by_port_and_by_another_rocker(req: Callable[..., Any]) -> None:
    with live_app(req("bridge", ("18080:8000",)), _server_probe(8000)) as run:
        assert run.res.ok, run.res.detail
        addr = run.report["addr"]
        assert IPv4Address(addr) in SUBNET
        host = _connect(addr, 8000)
        outside = json.loads(out.in_outside(
            f"import json, socket\ns = socket.create_connection(({out.HOST_ADDR!r}, 18080), timeout=3)\n"
            "s.sendall(b'x'); print(json.dumps(s.recv(100).decode()))"))
        loopback = _connect("127.0.0.1", 18080)
        other = run_app(req("bridge"), lambda: _connect(addr, 8000))
    assert host["reply"] == f"app saw {SUBNET[1]}: hi"  # the host, from the bridge's address
    assert outside == f"app saw {out.OUT_ADDR}: x"  # DNAT keeps the client's address
    assert loopback["reply"] == f"app saw {SUBNET[1]}: hi"  # 127.0.0.1:18080, masqueraded onto the bridge
    assert other.res.ok, other.res.detail
    me = other.report["me"]
    assert me != addr and IPv4Address(me) in SUBNET and other.report["reply"] == f"app saw {me}: hi"


def test_a_published_port_is_refused_naming_its_holder(req: Callable[..., Any]) -> None:
    with live_app(req("bridge", ("18082:80",)), lambda: {}) as run:
        assert run.res.ok, run.res.detail
        again = run_app(req("bridge", ("18082:81",)), lambda: {})
        udp = run_app(req("bridge", ("18082:80/udp",)), lambda: {})  # another protocol: another port
        assert udp.res.ok, udp.res.detail
    assert again.res.err_no == RockerErr.build_rocker_failed
    assert again.res.cause is not None and again.res.cause.errno == errno.EADDRINUSE
    assert f"host port 18082/tcp is already published by {run.res.guard_pname}" in again.res.detail
    assert wait_gone(run.res.guard_pid, 5) is not None
    deadline = time.monotonic() + 5  # given back when rockerd sees its holder end
    while not (freed := run_app(req("bridge", ("18082:80",)), lambda: {})).res.ok and time.monotonic() < deadline:
        time.sleep(0.05)
    assert freed.res.ok, freed.res.detail


def test_publish_needs_bridge(req: Callable[..., Any]) -> None:
    run = run_app(req(None, ("18083:80",)), lambda: {})
    assert run.res.err_no == RockerErr.param_invalid and "publish needs network bridge" in run.res.detail


def _records(d: Path) -> list[str]:
    return sorted(p.name for p in (d / "state-net").glob("rk-*.json"))


def test_sigkill_of_the_guard_frees_address_port_and_veth(req: Callable[..., Any], world: World) -> None:
    base = world.base
    with live_app(req("bridge", ("18084:80",)), _server_probe(80)) as run:
        assert run.res.ok, run.res.detail
        veth = "v" + run.res.guard_pname
        assert veth in _links() and _records(base / "d") == [f"{run.res.guard_pname}.json"]
        os.kill(run.res.guard_pid, signal.SIGKILL)
        os.waitpid(run.res.app_pid, 0)  # the app dies with its PID namespace; its init waits until it is reaped
        assert wait_gone(run.res.guard_pid, 5) is not None
        deadline = time.monotonic() + 5
        while (veth in _links() or _records(base / "d")) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert veth not in _links() and _records(base / "d") == []
        again = run_app(req("bridge", ("18084:80",)), lambda: {})
        assert again.res.ok, again.res.detail


def test_200_bridged_rockers_get_200_addresses_and_give_them_back(req: Callable[..., Any]) -> None:
    addrs: list[str] = []
    with ExitStack() as stack:
        for _ in range(200):
            run = stack.enter_context(live_app(req("bridge"), _server_probe(80)))
            assert run.res.ok, run.res.detail
            addrs.append(run.report["addr"])
        assert len(set(addrs)) == 200 and all(IPv4Address(a) in SUBNET for a in addrs)
        veths = {n for n in _links() if n.startswith("vrk-")}
        assert len(veths) == 200
    deadline = time.monotonic() + 10
    while any(n.startswith("vrk-") for n in _links()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(n.startswith("vrk-") for n in _links())


def _logged(d: Daemon, text: str, timeout: float = 5.0) -> bool:
    """The socket answers before rockerd's start-up log is all written: wait for a line."""
    deadline = time.monotonic() + timeout
    while text not in d.log_text() and time.monotonic() < deadline:
        time.sleep(0.02)
    return text in d.log_text()


@pytest.mark.no_leakcheck  # the restarted rockerd outlives the test: it is the module's daemon from now on
def test_a_restarted_rockerd_keeps_the_address_and_ports(req: Callable[..., Any], world: World) -> None:
    with live_app(req("bridge", ("18085:8000",)), _server_probe(8000)) as run:
        assert run.res.ok, run.res.detail
        world.restart()
        assert _logged(world.d, f"adopted {run.res.guard_pname}"), world.d.log_text()
        listed = [r for r in wire.call(world.d.socket, "io.rocker.Rocker.List", {})[0]["rockers"]
                  if r["guard_pname"] == run.res.guard_pname]
        assert listed and listed[0]["network"] == "bridge" and listed[0]["publish"] == ["18085:8000"]
        taken = run_app(req("bridge", ("18085:8000",)), lambda: {})
        assert f"already published by {run.res.guard_pname}" in taken.res.detail
        other = run_app(req("bridge"), lambda: _connect(run.report["addr"], 8000))
        assert other.res.ok and other.report["me"] != run.report["addr"], other.report
        outside = json.loads(out.in_outside(
            f"import json, socket\ns = socket.create_connection(({out.HOST_ADDR!r}, 18085), timeout=3)\n"
            "s.sendall(b'x'); print(json.dumps(s.recv(100).decode()))"))
        assert outside == f"app saw {out.OUT_ADDR}: x"


UID = 1000
NONROOT = r"""
import json, os, sys
sys.path.insert(0, sys.argv[2])
from rocker_client import RockerRequest, enter_rocker
def app(_):
    print("NET " + os.readlink("/proc/self/ns/net"), flush=True)
    return 0
res = enter_rocker(RockerRequest(**json.loads(sys.argv[1])), app)
if res.app_pid:
    os.waitpid(res.app_pid, 0)
print(json.dumps({"err_no": int(res.err_no), "detail": res.detail}))
"""


@pytest.mark.skipif(not os.path.exists("/usr/bin/python3"), reason="needs Debian's /usr/bin/python3")
@pytest.mark.parametrize(("network", "publish", "needle"), [
    ("bridge", (), ""), ("bridge", ("18086:80",), ""), ("host", (), ""),
    ("bridge", ("80:80",), "only root may publish host port 80/tcp")])
def test_non_root_gets_bridge_but_no_port_below_1024(world: World, base: Path, network: str,
                                                     publish: tuple[str, ...], needle: str) -> None:
    tmp_path = base  # uid 1000 must reach it
    lib = tmp_path / "lib"
    for package in ("rocker_client", "rocker_sys"):
        shutil.copytree(Path(__file__).parent.parent / package, lib / package,
                        ignore=shutil.ignore_patterns("__pycache__"))
    for d in ("exec", "data"):
        (tmp_path / d).mkdir()
        os.chown(tmp_path / d, UID, UID)
    for p in [tmp_path, *tmp_path.rglob("*")]:
        p.chmod(p.stat().st_mode | (0o755 if p.is_dir() else 0o644))
    shutil.copy(world.pkg, tmp_path / "app.squashfs")
    (tmp_path / "app.squashfs").chmod(0o644)
    params = {"uid": UID, "gid": UID, "app_pkg_path": str(tmp_path / "app.squashfs"),
              "app_exec_dir": str(tmp_path / "exec"), "app_data_dir": str(tmp_path / "data"),
              "app_overlay_dirs": ["/usr"], "network": network, "publish": list(publish)}
    p = subprocess.run(["/usr/bin/python3", "-I", "-c", NONROOT, json.dumps(params), str(lib)], user=UID, group=UID,
                       extra_groups=[], env={"ROCKER_SOCKET": world.d.socket}, capture_output=True, text=True,
                       timeout=60)
    assert p.stdout.strip(), p.stderr
    res = json.loads(p.stdout.strip().splitlines()[-1])
    if needle:
        assert res["err_no"] == RockerErr.param_invalid and needle in res["detail"], res
    else:
        assert res["err_no"] == RockerErr.success, res
        inside = [ln.split()[1] for ln in p.stdout.splitlines() if ln.startswith("NET ")]
        assert (inside == [os.readlink("/proc/self/ns/net")]) == (network == "host"), inside


def test_a_full_pool_refuses_and_ended_rockers_give_their_addresses_back(req: Callable[..., Any],
                                                                          tmp_path: Path) -> None:
    """A /29 has 5 addresses for rockers: a sixth is refused until one ends."""
    d = start_daemon(tmp_path / "small", "--bridge-subnet", "198.18.2.0/29", "--bridge-name", "rkt1",
                     "--bridge-dns", out.OUT_ADDR)
    try:
        os.environ["ROCKER_SOCKET"] = d.socket
        for _wave in range(2):
            with ExitStack() as stack:
                addrs = []
                for _ in range(5):
                    run = stack.enter_context(live_app(req("bridge"), _server_probe(80)))
                    assert run.res.ok, run.res.detail
                    addrs.append(run.report["addr"])
                assert sorted(addrs) == [f"198.18.2.{i}" for i in range(2, 7)]
                full = run_app(req("bridge"), lambda: {})
                assert full.res.cause is not None and full.res.cause.errno == errno.EADDRNOTAVAIL, full.res.detail
        deadline = time.monotonic() + 5  # rockerd keeps its bridge while it still counts a bridged rocker
        while wire.call(d.socket, "io.rocker.Rocker.List", {})[0]["rockers"] and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        os.environ["ROCKER_SOCKET"] = os.environ.get("NET_WORLD_SOCKET", "")
        d.stop()
    assert "rkt1" not in _links() and "rocker_rkt1" not in _tables(), d.log_text()
