"""Both kernel paths, every run: rockerd on the fast path this kernel has, and with every
fallback forced (ROCKER_FORCE_FALLBACK=all) the way it runs on Debian 12's 6.1.

Each test checks which path was taken from what the kernel shows (mountinfo inside the rocker),
not only from what rockerd says, and that the fallbacks keep the guarantees: the package mount
is ro,nosuid,nodev and shared (one loop device), writes land in upper/<D>, nothing is left once
the last rocker ends, a daemon killed and restarted re-adopts and still releases everything.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from daemon import Daemon, start_daemon
from rockers import make_req, run_app, wait_gone
from test_packages import hold, loops_backing

from rocker_client import enter_rocker, wire
from rockerd import kernel

HAS = kernel.probe(None)  # what this kernel offers, nothing forced
SLOW = float(os.environ.get("ROCKER_TEST_TIME_SCALE", "1"))  # >1 in an emulated VM (scripts/test-vm.sh)


def expect(mode: str) -> frozenset[str]:
    """The fast paths a daemon started in `mode` takes."""
    return HAS.fast if mode == "fast" else frozenset()


@pytest.fixture(params=["fast", "forced"])
def mode_daemon(request: pytest.FixtureRequest, tmp_path: Path,
                monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, Daemon]]:
    mode = request.param
    if mode == "forced":
        monkeypatch.setenv(kernel.FORCE_ENV, "all")
    else:
        monkeypatch.delenv(kernel.FORCE_ENV, raising=False)
    d = start_daemon(tmp_path / "d")
    monkeypatch.setenv("ROCKER_SOCKET", d.socket)
    yield mode, d
    d.stop()
    assert d.proc.returncode in (0, -signal.SIGKILL), d.log_text()  # killed: test_restart_readopts_and_releases
    assert "Traceback" not in d.log_text(), d.log_text()


def wait_until(cond: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_status_and_log_name_the_paths_taken(mode_daemon: tuple[str, Daemon]) -> None:
    mode, d = mode_daemon
    out = subprocess.run([sys.executable, "-m", "rocker_client.cli", "status", "--json"], check=True,
                         capture_output=True, text=True, env={**os.environ, "ROCKER_SOCKET": d.socket}).stdout
    k = json.loads(out)["kernel"]
    assert k["release"] == os.uname().release
    paths = {p["feature"]: p for p in k["paths"]}
    assert set(paths) - {"cgroups"} == {f.name for f in kernel.FALLBACKS}  # cgroups: the host's hierarchy
    for name, p in paths.items():
        if name == "cgroups":
            continue
        assert p["fast"] == (name in expect(mode)), p
        assert p["forced"] == (mode == "forced"), p
    assert f"kernel {os.uname().release}: " in d.log_text()
    text = subprocess.run([sys.executable, "-m", "rocker_client.cli", "status"], check=True, capture_output=True,
                          text=True, env={**os.environ, "ROCKER_SOCKET": d.socket}).stdout
    assert ("forced fallback" in text) == (mode == "forced"), text


def _mountinfo_inside(paths: list[str]) -> dict[str, object]:
    """For each path: (fstype, source, mount options, super options) of the mount on it, and st_dev."""
    out: dict[str, object] = {}
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if fields[4] in paths:
                sep = fields.index("-")
                out[fields[4]] = [*fields[sep + 1:sep + 4], fields[5]]
    return {"mounts": out, "dev": [os.stat(p).st_dev for p in paths]}


def test_app_sees_the_path_taken(mode_daemon: tuple[str, Daemon], base: Path, pkg: Path) -> None:
    """Package: a clone (fast) or a new mount of the loop device named /proc/self/fd/N, ro,nosuid,nodev,
    one loop device for two rockers, gone with the last. Overlays: one shared overlayfs or one per dir,
    layers given as fds or as /proc/self/fd/N strings; writes land in upper/<D> either way."""
    mode, _ = mode_daemon
    fast = expect(mode)
    host = base / "host"
    for d in ("a", "b"):
        (host / d).mkdir(parents=True)
        (host / d / "keep").write_text(f"host {d}")
    dirs = [str(host / "a"), str(host / "b")]
    exec_dir = str(base / "exec")

    def probe() -> dict[str, object]:
        out = _mountinfo_inside([exec_dir, *dirs])
        for d in dirs:
            Path(d, "new").write_text("inside")
        out["read"] = [Path(d, "keep").read_text() for d in dirs]
        return out

    r, w = os.pipe()
    try:  # a second rocker of the package lives across the first one's checks
        other = enter_rocker(make_req(base / "other", pkg), hold, (r, w))
        assert other.ok, other.detail
        run = run_app(make_req(base, pkg, overlays=tuple(dirs)), probe,
                      while_alive=lambda _: _assert_one_loop(pkg))
    finally:
        os.close(w)
        os.close(r)
        os.waitpid(other.app_pid, 0)
    assert run.res.ok, run.res.detail
    rep = run.report
    assert "probe_error" not in rep, rep
    mounts = rep["mounts"]
    fstype, source, super_opts, opts = mounts[exec_dir]
    assert fstype == "squashfs"
    assert {"ro", "nosuid", "nodev"} <= set(opts.split(",")), opts
    if kernel.TREE_CLONE.name in fast:
        assert source.startswith("/dev/loop"), source
    else:
        assert source.startswith("/proc/self/fd/"), f"expected a new mount of the loop fd, got {source}"
    assert rep["dev"][1] == rep["dev"][2], "a and b should share one overlayfs (without tree clones: stage.py)"
    for d in dirs:
        fstype, _, super_opts, opts = mounts[d]
        assert fstype == "overlay" and {"nosuid", "nodev"} <= set(opts.split(",")), mounts[d]
        by_string = "lowerdir=/proc/self/fd/" in super_opts
        assert by_string == (kernel.OVERLAY_FD.name not in fast), super_opts
        assert (base / "data/upper" / d.lstrip("/") / "new").read_text() == "inside"
        assert sorted(os.listdir(d)) == ["keep"], "the app changed the host dir"
    assert rep["read"] == ["host a", "host b"]
    assert wait_until(lambda: loops_backing(pkg) == [], 3 * SLOW), "the package's loop device outlived its last rocker"


def _private_namespaces(pid: int) -> dict[int, str]:
    """The threads of `pid` in a mount namespace other than its own: their mountinfo."""
    own = os.readlink(f"/proc/{pid}/ns/mnt")
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        if os.readlink(f"/proc/{pid}/task/{tid}/ns/mnt") != own:
            out[int(tid)] = Path(f"/proc/{pid}/task/{tid}/mountinfo").read_text()
    return out


def test_staging_namespace_holds_nothing(mode_daemon: tuple[str, Daemon], base: Path, pkg: Path) -> None:
    """Without tree clones, the dirs of a shared overlay are cloned in a private mount namespace of
    one rockerd thread (stage.py): it holds only its tmpfs (no copy of a host mount, which would keep
    that file system busy), neither while a rocker lives nor after. With them, no thread of rockerd
    has a namespace of its own: the shared overlays are kept as detached mounts (stage.Detached)."""
    mode, d = mode_daemon
    host = base / "host"
    dirs = [str(host / "a"), str(host / "b")]
    for x in dirs:
        Path(x).mkdir(parents=True)

    def holds_nothing(alive: bool) -> bool:  # the staged overlay is detached just after the clones: allow for that
        """The stager's private namespace has a tmpfs for its root; besides it only the overlays of a
        live data dir, under /shares. The fast path has no such namespace."""
        spaces = _private_namespaces(d.proc.pid)
        if mode == "fast" and kernel.TREE_CLONE.name in HAS.fast:
            return not spaces
        if len(spaces) != 1:
            return False
        for info in spaces.values():
            lines = info.splitlines()
            if not (lines[0].split()[4] == "/" and " - tmpfs " in lines[0]):
                return False
            for line in lines[1:]:
                if not (alive and line.split()[4].startswith("/shares/") and " - overlay " in line):
                    return False
        return True

    seen: list[bool] = []
    run = run_app(make_req(base, pkg, overlays=tuple(dirs)), lambda: {"dev": [os.stat(x).st_dev for x in dirs]},
                  while_alive=lambda _: seen.append(wait_until(lambda: holds_nothing(True), 1 * SLOW)))
    assert run.res.ok, run.res.detail
    assert run.report["dev"][0] == run.report["dev"][1], run.report
    seen.append(wait_until(lambda: holds_nothing(False), 1 * SLOW + 2.5))  # past the default --data-linger
    assert seen == [True, True], _private_namespaces(d.proc.pid)


def _assert_one_loop(pkg: Path) -> None:
    assert len(loops_backing(pkg)) == 1, "two rockers of one package should share one loop device"


def test_restart_readopts_and_releases(mode_daemon: tuple[str, Daemon], base: Path, pkg: Path,
                                       tmp_path: Path) -> None:
    """rockerd killed with a rocker live: the rocker keeps its mounts, a restarted rockerd on the
    same path re-adopts it, builds new rockers of the package, and nothing stays once all end."""
    mode, d = mode_daemon
    r, w = os.pipe()
    d2 = None
    pids = []
    try:
        res = enter_rocker(make_req(base, pkg), hold, (r, w))
        assert res.ok, res.detail
        pids.append(res.app_pid)
        d.proc.send_signal(signal.SIGKILL)
        d.proc.wait()
        assert wait_gone(res.guard_pid, 0.2) is None, "the rocker died with rockerd"
        assert len(loops_backing(pkg)) == 1
        d2 = start_daemon(tmp_path / "d")  # the same env: the same mode
        paths = wire.call(d2.socket, "io.rocker.Rocker.Kernel", {})[0]["paths"]  # once it serves, it has adopted
        assert {p["feature"] for p in paths if p["fast"]} - {"cgroups"} == expect(mode)  # cgroups: the host's
        assert f"adopted {res.guard_pname}" in d2.log_text()
        res2 = enter_rocker(make_req(base / "2", pkg), hold, (r, w))
        assert res2.ok, res2.detail
        pids.append(res2.app_pid)
    finally:
        os.close(w)
        os.close(r)
        for p in pids:
            os.waitpid(p, 0)
        if d2:
            d2.stop()
            assert "Traceback" not in d2.log_text(), d2.log_text()
    assert wait_until(lambda: loops_backing(pkg) == [], 3 * SLOW), "a loop device outlived the rockers"


def test_unknown_forced_fallback_refuses_to_start(tmp_path: Path) -> None:
    p = subprocess.run([sys.executable, "-m", "rockerd", "--socket", str(tmp_path / "s")], capture_output=True,
                       text=True, env={**os.environ, kernel.FORCE_ENV: "overlay-fd,bogus"}, timeout=30 * SLOW)
    assert p.returncode == 1
    assert p.stderr.strip().splitlines()[-1] == (f"rockerd: {kernel.FORCE_ENV}: unknown fallback bogus "
                                                 "(known: overlay-fd, tree-clone, all)")
    assert not (tmp_path / "s").exists()


def test_missing_requirement_refuses_to_start(tmp_path: Path) -> None:
    """A kernel without a hard requirement cannot be made here for real: one probe stands in for it."""
    code = ("import os, sys\n"
            "from rockerd import kernel, main\n"
            "def missing():\n"
            "    raise OSError(38, os.strerror(38))\n"
            "kernel.REQUIREMENTS += (('frobnication', '9.9', missing),)\n"
            f"sys.exit(main.main(['--socket', {str(tmp_path / 's')!r}]))\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30 * SLOW)
    assert p.returncode == 1, p.stderr
    assert p.stderr.strip().splitlines()[-1] == (
        f"rockerd: this kernel ({os.uname().release}) lacks frobnication, which rockerd needs "
        "(Linux 9.9 has it): Function not implemented")
    assert not (tmp_path / "s").exists()


def test_requirements_and_minimum() -> None:
    """Every requirement holds here, and the minimum is the newest of them."""
    kernel.check_requirements()
    assert kernel.MINIMUM == "5.11"
    assert kernel.parse_force("all") == {f.name for f in kernel.FALLBACKS}
    assert kernel.probe("tree-clone").fast == HAS.fast - {"tree-clone"}


STAGE_CHILD = """
import json, os
from rocker_sys import mount as m, ns
ns.unshare(ns.CLONE_NEWNS)
m.mount(None, "/", None, m.MS_REC | (1 << 20))  # MS_SHARED, as systemd leaves the host's mounts
before = open("/proc/thread-self/mountinfo").read()
from rockerd.create import stage
fsfd = m.fsopen("tmpfs")
m.fsconfig_create(fsfd, "t")
mfd = m.fsmount(fsfd, 0, "t")
os.mkdir("d", dir_fd=mfd)
clones = stage.staged_clones(mfd, ["d"], ["t/d"])
print(json.dumps({"clones": len(clones), "same": open("/proc/thread-self/mountinfo").read() == before}))
"""


def test_stage_namespace_propagates_nothing() -> None:
    """Under systemd the host's mounts are shared: the staging namespace (stage.py) makes its copy
    private before it mounts anything, or its tmpfs and each staged overlay would show up on the
    host. Run in a child in a mount namespace of its own, whose / is made shared."""
    p = subprocess.run([sys.executable, "-c", STAGE_CHILD], capture_output=True, text=True, timeout=30 * SLOW)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout) == {"clones": 1, "same": True}, p.stdout
