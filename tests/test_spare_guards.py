"""Spare guards (rockerd/create/spareguards.py): after a Create rockerd starts the next one's guard
ahead, for the same app uid, gid, network and caller; the next such Create takes it, with the request's
own limits written over the defaults its cgroup was made with; a spare serves no other uid, a dead one
is reaped and not used, at most --spare-guards are kept, and none outlives rockerd (process, cgroup,
veth, address). The suite's other daemons run without them (tests/daemon.py: spare_args)."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from ipaddress import IPv4Network
from pathlib import Path
from typing import Any

import netoutside as out
import pytest
from daemon import Daemon, start_daemon
from rockers import make_req, run_app, wait_gone, wait_until
from test_cgroups import HIER, _probe, at_own_root, in_rocker_cgroup, rocker_dirs

from bench.proc import children
from rocker_client import wire

SCALE = float(os.environ.get("ROCKER_TEST_TIME_SCALE", "1"))
MiB = 1 << 20


def _listed(d: Daemon) -> dict[str, dict[str, Any]]:
    reply, fds = wire.call(d.socket, "io.rocker.Rocker.List", {})
    for fd in fds:
        os.close(fd)
    return {r["guard_pname"]: r for r in reply["rockers"]}


def spares(d: Daemon) -> dict[int, str]:
    """{pid: name} of rockerd's guards that are no rocker (call it with no Create under way)."""
    live = {r["guard_pid"] for r in _listed(d).values()}
    found = {}
    for pid in children(d.proc.pid):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv[0].startswith(b"rk-") and pid not in live:
            found[pid] = argv[0].decode()
    return found


def wait_spares(d: Daemon, n: int, timeout: float = 5 * SCALE) -> dict[int, str]:
    deadline = time.monotonic() + timeout
    while True:
        found = spares(d)
        if len(found) == n or time.monotonic() > deadline:
            return found
        time.sleep(0.01)


def _uids(pid: int) -> list[int]:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return [int(x) for x in line.split()[1:]]
    raise AssertionError(f"no Uid line for {pid}")


def _wait_state(pid: int, state: bytes, timeout: float = 5 * SCALE) -> None:
    deadline = time.monotonic() + timeout
    while Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[0] != state:
        assert time.monotonic() < deadline, f"{pid} never reached state {state!r}"
        time.sleep(0.005)


def _gone(paths: list[str], timeout: float = 5) -> bool:
    return wait_until(lambda: not any(os.path.exists(p) for p in paths), timeout)


@pytest.fixture
def spared(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    d = start_daemon(tmp_path / "d", "--spare-guards", "2")
    monkeypatch.setenv("ROCKER_SOCKET", d.socket)
    yield d
    d.stop()
    assert d.proc.returncode == 0 and "Traceback" not in d.log_text(), d.log_text()


def _pids_max(name: str) -> int:
    files = [os.path.join(d, "pids.max") for d in rocker_dirs(name) if os.path.exists(os.path.join(d, "pids.max"))]
    assert len(files) == 1, files
    return int(Path(files[0]).read_text())


def test_the_next_create_takes_the_spare_with_its_own_limits(base: Path, pkg: Path, spared: Daemon,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """The second rocker's guard is the spare the first left (same pid and name), in its cgroup with the
    second request's limits, app included; a spare is no rocker: not listed, not recorded."""
    assert spares(spared) == {}
    res, _, _, _, status = _probe(base, pkg, "exec", monkeypatch, sock=spared.socket)
    assert res.ok and os.WEXITSTATUS(status) == 7, res
    (spare_pid, spare_name), = wait_spares(spared, 1).items()
    assert spare_name not in _listed(spared)
    assert not (Path(spared.log).parent / "state" / spare_name).exists()
    assert _uids(spare_pid) == [1000] * 4  # the app's uid outside, as the first rocker's guard

    res, report, guard_cg, listed, status = _probe(base, pkg, "exec", monkeypatch, sock=spared.socket,
                                                   pids_max=77, memory_max=300 * MiB)
    assert res.ok and os.WEXITSTATUS(status) == 7, res
    assert (res.guard_pid, res.guard_pname) == (spare_pid, spare_name)
    assert in_rocker_cgroup(guard_cg, spare_name) and in_rocker_cgroup(report["host_view"], spare_name), report
    assert at_own_root(report["cgroup"]), report
    if HIER.mode != "none":
        assert listed["limits"]["pids_max"] == 77 and listed["limits"]["memory_max"] == 300 * MiB, listed
        assert _pids_max(spare_name) == 77
    assert wait_gone(res.guard_pid, 10 * SCALE) is not None


def test_a_spare_serves_only_its_own_uid(base: Path, pkg: Path, spared: Daemon) -> None:
    """A spare made for uid 1000 is not what a rocker for uid 1001 gets: its guard is 1001's own."""
    first = run_app(make_req(base, pkg, uid=1000, gid=1000), lambda: {})
    assert first.res.ok, first.res.detail
    (spare_pid, _), = wait_spares(spared, 1).items()
    uids: list[list[int]] = []
    second = run_app(make_req(base, pkg, uid=1001, gid=1001), lambda: {},
                     lambda res: uids.append(_uids(res.guard_pid)))
    assert second.res.ok, second.res.detail
    assert second.res.guard_pid != spare_pid and uids == [[1001] * 4]
    assert set(wait_spares(spared, 2)) >= {spare_pid}  # 1000's is still there, 1001's beside it


@pytest.mark.parametrize("sig", ["KILL", "STOP"])
def test_a_dead_or_stopped_spare_is_reaped_and_not_used(base: Path, pkg: Path, spared: Daemon, sig: str) -> None:
    """A spare killed or stopped while it waits, by its app's uid (which may signal it), costs the next
    Create nothing but the guard's start: a stopped one is not waited for (--ready-timeout)."""
    assert run_app(make_req(base, pkg, uid=1000, gid=1000), lambda: {}).res.ok
    (spare_pid, spare_name), = wait_spares(spared, 1).items()
    subprocess.run(["kill", f"-{sig}", str(spare_pid)], user=1000, group=1000, extra_groups=[], check=True)
    if sig == "KILL":  # reaped at once, no Create needed: no zombie, its cgroup gone
        deadline = time.monotonic() + 2 * SCALE
        while os.path.exists(f"/proc/{spare_pid}") and time.monotonic() < deadline:
            time.sleep(0.005)
        assert not os.path.exists(f"/proc/{spare_pid}"), "the dead spare was not reaped"
        assert _gone(rocker_dirs(spare_name), 2), rocker_dirs(spare_name)
    else:
        _wait_state(spare_pid, b"T")  # the signal is sent; now it has taken effect
    t0 = time.monotonic()
    run = run_app(make_req(base, pkg, uid=1000, gid=1000), lambda: {})
    assert run.res.ok, run.res.detail
    assert time.monotonic() - t0 < 2 * SCALE
    assert run.res.guard_pid != spare_pid
    assert wait_gone(spare_pid, 5 * SCALE) is not None
    assert _gone(rocker_dirs(spare_name)), rocker_dirs(spare_name)


def test_at_most_n_spares_and_none_outlives_rockerd(base: Path, pkg: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """--spare-guards 1: a second key's spare replaces the first's; a stopped rockerd takes its spare's
    guard and cgroup with it."""
    d = start_daemon(tmp_path / "d", "--spare-guards", "1")
    monkeypatch.setenv("ROCKER_SOCKET", d.socket)
    try:
        assert run_app(make_req(base, pkg, uid=1000, gid=1000), lambda: {}).res.ok
        (first, _), = wait_spares(d, 1).items()
        assert run_app(make_req(base, pkg, uid=1001, gid=1001), lambda: {}).res.ok
        assert wait_gone(first, 5 * SCALE) is not None
        (pid, name), = wait_spares(d, 1).items()
        assert _uids(pid) == [1001] * 4
    finally:
        d.stop()
    assert d.proc.returncode == 0 and "Traceback" not in d.log_text(), d.log_text()
    assert wait_gone(pid, 1) is not None
    assert not any(os.path.exists(p) for p in rocker_dirs(name)), rocker_dirs(name)


def test_a_bridged_spare_has_its_network_and_gives_it_back(base: Path, pkg: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """A bridged rocker's spare comes with its veth, address and route; rockerd's stop takes them (and the
    bridge and its table, no bridged rocker being left)."""
    d = start_daemon(tmp_path / "d", "--spare-guards", "2", "--bridge-subnet", out.TEST_SUBNET,
                     "--bridge-name", out.TEST_BRIDGE, "--bridge-dns", out.OUT_ADDR)
    monkeypatch.setenv("ROCKER_SOCKET", d.socket)
    gateway = str(next(IPv4Network(out.TEST_SUBNET).hosts()))

    def probe() -> dict[str, Any]:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect((gateway, 9))  # a route lookup only: UDP connect sends nothing
            me = s.getsockname()[0]
        return {"ifs": sorted(n for _, n in socket.if_nameindex()), "me": me}

    try:
        req = make_req(base, pkg, uid=1000, gid=1000)
        req.network = "bridge"
        assert run_app(req, probe).res.ok
        (spare_pid, spare_name), = wait_spares(d, 1).items()
        assert os.path.exists(f"/sys/class/net/v{spare_name}")  # its veth's host end, on the bridge
        run = run_app(req, probe)
        assert run.res.ok, run.res.detail
        assert run.res.guard_pid == spare_pid
        assert run.report["ifs"] == ["eth0", "lo"], run.report
        assert run.report["me"].startswith(out.TEST_SUBNET.rsplit(".", 2)[0] + "."), run.report
        (pid, name), = wait_spares(d, 1).items()
    finally:
        d.stop()
    assert d.proc.returncode == 0 and "Traceback" not in d.log_text(), d.log_text()
    assert wait_gone(pid, 1) is not None
    assert _gone([f"/sys/class/net/v{name}", f"/sys/class/net/{out.TEST_BRIDGE}"])


def _clone_children_of(sock: str) -> list[int]:
    """Processes that still run rockerd's image for `sock` without being a rockerd: the spawner's
    CLONE_VM children (their cmdline is rockerd's until they exec the guard), parent gone."""
    found = []
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{p}/cmdline").read_bytes()
            ppid = int(Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if b"rockerd\0--socket\0" + sock.encode() + b"\0" in cmd and ppid == 1:
            found.append(int(p))
    return found


def test_a_rockerd_killed_while_a_guard_starts_leaves_no_child_behind(base: Path, pkg: Path, tmp_path: Path) -> None:
    """SIGKILL right after a Create's reply, when its spare's start runs: a spawner child waiting for its
    "G" held its own copy of the pipe's write end, so it waited for ever, with all of rockerd's fds (the
    listening socket: the next rockerd refused to start). 3 in 20 kills before; the child now closes it."""
    left: list[int] = []
    d = None
    try:
        for i in range(30 if SCALE == 1 else 5):  # a rockerd's start takes ~20 s in the emulated 6.1 VM
            d = start_daemon(tmp_path / "d", "--spare-guards", "1", "--first-entry-timeout", "0.5")
            own = base / str(i)  # the last one's rocker may still hold its data dir (adopted)
            own.mkdir()
            own.chmod(0o755)
            _, fds = wire.call(d.socket, "io.rocker.Rocker.Create", make_req(own, pkg, uid=1000, gid=1000).to_params())
            time.sleep((i % 5) * 0.0002)
            d.proc.kill()
            d.proc.wait()
            for fd in fds:
                os.close(fd)
            time.sleep(0.05)
            left += _clone_children_of(d.socket)
            for pid in left:
                os.kill(pid, 9)
            assert not left, f"a spawner child outlived rockerd (kill {i + 1})"
    finally:
        if d is not None:
            if d.proc.poll() is None:
                d.proc.kill()
                d.proc.wait()
            for pid in _clone_children_of(d.socket):
                os.kill(pid, 9)
            time.sleep(0.6)  # the unentered rockers' guards end (first-entry timeout)
            last = start_daemon(tmp_path / "d", "--spare-guards", "0")  # sweeps what the killed ones left
            last.stop()
