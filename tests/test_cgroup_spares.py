"""Spare cgroups (rockerd/cgroups/spares.py, v1): a Create renames one made ahead into place instead of
making its four dirs on its critical path, its request's own limits are still written before the guard
starts, and no spare outlives the rockerd that made it (stopped, or killed and the next one started)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from daemon import start_daemon
from rockers import make_req

from rocker_client import wire
from rockerd.cgroups import detect
from rockerd.cgroups.spares import SIZE

HIER = detect()
pytestmark = pytest.mark.skipif(HIER.mode != "v1", reason="spares are v1 only (cgroup2 cannot rename a cgroup)")
BASES = sorted({f"{m}/rocker" for m in HIER.mounts.values()}) if HIER.mode == "v1" else []
SCALE = float(os.environ.get("ROCKER_TEST_TIME_SCALE", "1"))
GiB = 1 << 30


def spares_of(pid: int) -> dict[str, dict[str, int]]:
    """{base: {spare name: inode}} of rockerd `pid`'s spares (kernfs keeps a dir's inode across a rename)."""
    out: dict[str, dict[str, int]] = {}
    for b in BASES:
        out[b] = {e.name: e.inode() for e in os.scandir(b) if e.name.startswith(f"sp-{pid}-")}
    return out


def wait_full(pid: int, timeout: float = 5 * SCALE) -> dict[str, dict[str, int]]:
    deadline = time.monotonic() + timeout
    while True:
        spares = spares_of(pid)
        if all(len(s) == SIZE for s in spares.values()) or time.monotonic() > deadline:
            return spares
        time.sleep(0.01)


def read(path: str) -> int:
    return int(Path(path).read_text())


def create(sock: str, req: object) -> dict[str, object]:
    reply, fds = wire.call(sock, "io.rocker.Rocker.Create", req.to_params())  # type: ignore[attr-defined]
    for fd in fds:
        os.close(fd)
    return reply


def test_a_create_takes_a_spare_and_still_gets_its_own_limits(base: Path, pkg: Path, tmp_path: Path) -> None:
    """The rocker's cgroup is a spare renamed into place (same inode), with the request's limits written
    over the defaults the spare was made with (memory raised and lowered: memory+swap kept above), and
    the pool is full again after the reply."""
    d = start_daemon(tmp_path / "d", "--default-memory", "1G")
    names: list[str] = []
    try:
        spares = wait_full(d.proc.pid)
        assert all(len(s) == SIZE for s in spares.values()), spares
        mem = next(b for b in BASES if "/memory/" in b)
        pids = next(b for b in BASES if "/pids/" in b)
        assert {read(f"{mem}/{s}/memory.limit_in_bytes") for s in spares[mem]} == {GiB}
        for memory_max in (2 * GiB, 256 << 20):  # above the spare's, then below
            req = make_req(base, pkg)
            req.memory_max, req.pids_max = memory_max, 77
            name = str(create(d.socket, req)["guard_pname"])
            names.append(name)
            for b in BASES:
                assert os.stat(f"{b}/{name}").st_ino in spares[b].values(), (b, name, spares[b])
            assert read(f"{pids}/{name}/pids.max") == 77
            assert read(f"{mem}/{name}/memory.limit_in_bytes") == memory_max
            if os.path.exists(f"{mem}/{name}/memory.memsw.limit_in_bytes"):
                assert read(f"{mem}/{name}/memory.memsw.limit_in_bytes") == memory_max
            spares = wait_full(d.proc.pid)
            assert all(len(s) == SIZE for s in spares.values()), spares
    finally:
        for name in names:
            wire.call(d.socket, "io.rocker.Rocker.Kill", {"guard_pname": name})
        d.stop()


def test_spares_go_when_rockerd_stops_and_a_killed_ones_at_the_next_start(tmp_path: Path) -> None:
    d = start_daemon(tmp_path / "a")
    assert all(len(s) == SIZE for s in wait_full(d.proc.pid).values())
    d.proc.kill()  # a crash: nobody removes its spares...
    d.proc.wait()
    assert all(len(s) == SIZE for s in spares_of(d.proc.pid).values())
    d2 = start_daemon(tmp_path / "b")  # ...until the next rockerd starts
    try:
        assert all(len(s) == SIZE for s in wait_full(d2.proc.pid).values())  # made after the sweep
        assert not any(spares_of(d.proc.pid).values())
    finally:
        d2.stop()
    assert not any(spares_of(d2.proc.pid).values())


def test_a_failed_build_leaves_no_cgroup_and_the_pool_refills(base: Path, tmp_path: Path) -> None:
    d = start_daemon(tmp_path / "d")
    try:
        wait_full(d.proc.pid)
        rockers = {b: {e for e in os.listdir(b) if e.startswith("rk-")} for b in BASES}
        req = make_req(base, base / "no-such.squashfs")
        with pytest.raises(wire.RemoteError, match="BuildFailed"):
            create(d.socket, req)
        assert {b: {e for e in os.listdir(b) if e.startswith("rk-")} for b in BASES} == rockers
        assert all(len(s) == SIZE for s in wait_full(d.proc.pid).values())
    finally:
        d.stop()

