"""A rocker's network: none (only lo), host (the host's namespace) or bridge (a veth on rockerd's bridge).

    none    the guard's new netns, lo up (create/net.py)
    host    no new netns: the guard is cloned without CLONE_NEWNET and the Create reply
            carries no net fd, so the client keeps its own network namespace
    bridge  a new netns with a veth pair: `eth0` inside, with an address from the pool, a
            default route via the bridge; the host end on the bridge. The bridge, its
            address, ip_forward and the nftables table are set up when the first bridged
            rocker needs them and removed when rockerd stops with none left.

All of it is netlink from the daemon's thread (rtnl.py, veth.py, nft.py): no process is started.
Each bridged rocker's address and ports are also written to a small record of this
module's own (<run dir>/<name>.json), so a restarted rockerd takes them back.
"""

from __future__ import annotations

import errno
import json
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network

from pyroute2.netlink.rtnl import RTM_NEWADDR, RTM_NEWLINK

from rocker_sys import mount, ns

from ..create.steps import BuildError, as_build_error
from ..policy import Denied
from ..request import RockerRequestModel, parse_publish
from . import dns
from .ipam import Pool
from .netns import loopback_up
from .nft import Nft
from .rtnl import CREATE, Rtnl, addr_msg, link_msg, rocker_bridge_msg
from .veth import ipv6_off, link_rocker, write_sysctl

log = logging.getLogger("rockerd.network")

MODES = ("none", "host", "bridge")
DEFAULT_SUBNET = "10.231.0.0/16"  # not podman's 10.88/16 nor docker's 172.17-31/16
DEFAULT_BRIDGE = "rocker0"
PRIVILEGED_PORTS = 1024
IP_FORWARD = "/proc/sys/net/ipv4/ip_forward"

Port = tuple[int, int, str]  # host port, the app's port, tcp|udp


@dataclass(frozen=True)
class NetConfig:
    default_mode: str = "none"
    subnet: IPv4Network = field(default_factory=lambda: IPv4Network(DEFAULT_SUBNET))
    bridge: str = DEFAULT_BRIDGE
    dns: tuple[str, ...] = ()  # nameservers for bridged rockers; () = the host's (its upstreams behind a stub)
    run_dir: str = "/run/rocker/net"

    @property
    def table(self) -> str:
        return "rocker" if self.bridge == DEFAULT_BRIDGE else f"rocker_{self.bridge}"


@dataclass
class Plan:
    """One rocker's network, from the request's check to its end."""

    name: str
    mode: str
    ports: list[Port] = field(default_factory=list)
    address: IPv4Address | None = None

    @property
    def ns_flags(self) -> int:
        return ns.ROCKER_NS & ~ns.CLONE_NEWNET if self.mode == "host" else ns.ROCKER_NS

    @property
    def veth(self) -> str:
        return "v" + self.name  # rk-0123abcd: 12 bytes, within IFNAMSIZ

    def record(self) -> dict[str, object]:
        return {"mode": self.mode, "address": str(self.address), "ports": [list(p) for p in self.ports]}


class Network:
    def __init__(self, config: NetConfig) -> None:
        if config.default_mode not in MODES:
            raise ValueError(f"unknown network mode {config.default_mode!r}")
        self.config = config
        self.pool = Pool(config.subnet)
        self.ports: dict[tuple[int, str], str] = {}  # (host port, proto) -> the rocker that has it
        self.plans: dict[str, Plan] = {}
        self._bridge_index = 0
        self._used = False  # set up the bridge, or adopted a rocker on it: ours to take away at the end
        self._resolv_fd = -1
        os.makedirs(config.run_dir, mode=0o755, exist_ok=True)

    # ---- the request path ----

    def plan(self, name: str, req: RockerRequestModel, caller_uid: int) -> Plan:
        """Check the request's network against policy and the ports in use, and reserve them."""
        mode = req.network or self.config.default_mode
        ports = [parse_publish(p) for p in req.publish]
        if ports and mode != "bridge":
            raise Denied(f"publish needs network bridge; this rocker's network is {mode}")
        for h, _, proto in ports:
            if h < PRIVILEGED_PORTS and caller_uid != 0:
                raise Denied(f"only root may publish host port {h}/{proto} (below {PRIVILEGED_PORTS})")
            holder = self.ports.get((h, proto))
            if holder is not None:
                raise BuildError("publish ports", errno.EADDRINUSE,
                                 f"host port {h}/{proto} is already published by {holder}")
        plan = Plan(name, mode, ports)
        if mode == "bridge":  # here, on the loop: the pool and the one-time setup are not thread-safe
            try:
                self._ensure_bridge()
                plan.address = self.pool.allocate(name)
            except OSError as e:
                raise as_build_error("set up the bridge", e) from e
        for h, _, proto in ports:
            self.ports[h, proto] = name
        self.plans[name] = plan
        return plan

    def mounts(self, plan: Plan) -> list[tuple[str, int]]:
        """A bridged rocker's resolv.conf (the host's may name a stub on 127.0.0.x, not reachable there)."""
        if plan.mode != "bridge" or not self.resolv_target:
            return []
        return [(self.resolv_target, mount.clone_tree(self._resolv(), "resolv.conf for bridged rockers"))]

    def setup(self, plan: Plan, netns_fd: int, uid: int) -> None:
        """After the guard is cloned: lo up (none, bridge), the veth, address, route and ports (bridge).

        Safe on the spawn thread (its own sockets, files and thread credentials; plan() took the address)."""
        if plan.mode == "none":
            loopback_up(netns_fd, uid)
        elif plan.mode == "bridge":
            self._attach(plan, netns_fd, uid)

    def release(self, name: str) -> None:
        """The rocker ended (or its build failed): its address, ports, rules and veth go. Never raises."""
        plan = self.plans.pop(name, None)
        if plan is None:
            return
        for h, _, proto in plan.ports:
            if self.ports.get((h, proto)) == name:
                del self.ports[h, proto]
        if plan.mode != "bridge" or plan.address is None:
            return
        self.pool.release(plan.address)
        # The veth is not deleted here: the kernel deletes both ends with the rocker's netns, which
        # goes with its last process (an RTM_DELLINK would block the event loop ~25 ms, on RCU).
        if plan.ports:
            try:
                self._unpublish(name)
            except OSError as e:
                log.warning("releasing the ports of %s: %s", name, e)
        self._forget(name)

    # ---- bridge ----

    def _attach(self, plan: Plan, netns_fd: int, uid: int) -> None:
        assert plan.address is not None
        link_rocker(netns_fd, uid, plan.veth, self._bridge_index, plan.address, self.config.subnet,
                    self.pool.gateway)
        if plan.ports:
            with Nft(self.config.table) as nft:
                nft.publish(plan.name, plan.ports, plan.address)
        self._remember(plan)

    def _ensure_bridge(self) -> None:
        if self._bridge_index:
            return
        self._used = True
        c = self.config
        with Rtnl() as r:
            try:
                r.request(f"bridge {c.bridge}", rocker_bridge_msg(c.bridge), RTM_NEWLINK, CREATE)
                created = True
            except OSError as e:
                if e.errno != errno.EEXIST:
                    raise
                created = False  # left by an earlier rockerd with rockers on it
            index = r.link_index(c.bridge)
            write_sysctl(f"/proc/sys/net/ipv4/conf/{c.bridge}/route_localnet", "1")  # host -> 127.0.0.1:published
            if created:
                ipv6_off(c.bridge)
                r.batch([(f"address {self.pool.gateway} on {c.bridge}",
                          addr_msg(index, self.pool.gateway, c.subnet), RTM_NEWADDR, CREATE),
                         (f"{c.bridge} up", link_msg(index, up=True), RTM_NEWLINK, 0)])
        self._enable_forwarding()
        with Nft(c.table) as nft:
            if not nft.table_exists():
                nft.create(c.subnet, c.bridge)
        self._bridge_index = index
        log.info("bridge %s (%s) with table ip %s is up", c.bridge, c.subnet, c.table)

    def _enable_forwarding(self) -> None:
        """ip_forward on; what it was is kept in a file, so the last rockerd to stop puts it back."""
        saved = os.path.join(self.config.run_dir, "ip_forward.saved")
        with open(IP_FORWARD) as f:
            was = f.read().strip()
        if not os.path.exists(saved):
            with open(saved, "w") as f:
                f.write(was)
        if was != "1":
            write_sysctl(IP_FORWARD, "1")

    def close(self) -> None:
        """rockerd stops: with no bridged rocker left, remove the bridge and table, restore ip_forward."""
        if not self._used or any(p.mode == "bridge" for p in self.plans.values()):
            return
        c = self.config
        try:
            with Nft(c.table) as nft:
                nft.delete()
            with Rtnl() as r:
                r.delete_link(c.bridge)
        except OSError as e:
            log.warning("removing bridge %s and table ip %s: %s", c.bridge, c.table, e)
        saved = os.path.join(c.run_dir, "ip_forward.saved")
        try:
            with open(saved) as f:
                write_sysctl(IP_FORWARD, f.read().strip())
            os.unlink(saved)
        except FileNotFoundError:
            pass
        self._bridge_index = 0
        self._used = False

    def _unpublish(self, name: str) -> None:
        with Nft(self.config.table) as nft:
            nft.unpublish(name)

    # ---- DNS ----

    @property
    def resolv_target(self) -> str:
        return dns.target()

    def _resolv(self) -> int:
        if self._resolv_fd < 0:
            path = os.path.join(self.config.run_dir, "resolv.conf")
            dns.write(path, self.config.dns)
            self._resolv_fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        return self._resolv_fd

    # ---- records, re-adoption ----

    def _path(self, name: str) -> str:
        return os.path.join(self.config.run_dir, name + ".json")

    def _remember(self, plan: Plan) -> None:
        """One write to a new file, no temporary and rename (a rename took 0.1-0.2 ms on ext4, on the
        bridge's critical path): a rockerd killed before the write ends leaves a record that adopt()
        finds unusable, as one killed a moment earlier leaves none."""
        fd = os.open(self._path(plan.name), os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            os.write(fd, json.dumps(plan.record()).encode())
        finally:
            os.close(fd)

    def _forget(self, name: str) -> None:
        try:
            os.unlink(self._path(name))
        except FileNotFoundError:
            pass

    def adopt(self, name: str, mode: str) -> None:
        """Take back a live rocker's address and ports (a bridged one's, from our record)."""
        plan = Plan(name, mode)
        if mode == "bridge":
            try:
                with open(self._path(name)) as f:
                    rec = json.load(f)
                plan.address = IPv4Address(rec["address"])
                plan.ports = [(int(h), int(c), str(p)) for h, c, p in rec["ports"]]
                self.pool.hold(name, plan.address)
            except (OSError, ValueError, KeyError, TypeError) as e:
                log.warning("%s: its network record is unusable (%s): its address and ports are not held", name, e)
                plan.address, plan.ports = None, []
            self._bridge_index = 0  # found again (EEXIST) by the next bridged rocker
            self._used = True
        for h, _, proto in plan.ports:
            self.ports[h, proto] = name
        self.plans[name] = plan

    def adopted(self, live: Iterable[str]) -> None:
        """After re-adoption: the records and rules of rockers that are gone are dropped."""
        keep = set(live)
        if os.path.exists(os.path.join(self.config.run_dir, "ip_forward.saved")):
            self._used = True  # an earlier rockerd set the bridge up and did not take it away: we will
        for entry in os.listdir(self.config.run_dir):
            if entry.endswith(".json") and entry[:-5] not in keep:
                name = entry[:-5]
                try:
                    self._unpublish(name)
                except OSError:
                    pass  # no table: no rules
                self._forget(name)
