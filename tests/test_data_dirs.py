"""Rockers on one data dir share its overlays (rockerd/create/datashare.py), on both kernel paths:
concurrent writers see one filesystem, a different overlay set is refused, work slots do not
pile up, and a rockerd restarted with a rocker live still shares its mounts."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from daemon import Daemon, start_daemon, use_kernel_paths
from rockers import live_app, make_req, run_app, wait_until

from rocker_client import RockerResult, enter_rocker, wire
from rockerd import kernel
from rockerd.create import stage

SLOW = float(os.environ.get("ROCKER_TEST_TIME_SCALE", "1"))
PYTHON = "/usr/bin/python3"  # the host's python3 (with sqlite3), seen in the rocker through the host root

# Runs `count` rockers, `conc` at once, each an Exec of PYTHON -c APP; prints one JSON line per run.
RUNNER = r"""
import json, os, sys
from concurrent.futures import ThreadPoolExecutor
from rocker_client import Exec, RockerRequest, enter_rocker
params, count, conc, app, extra = json.loads(sys.argv[1])

def one(i):
    res = enter_rocker(RockerRequest(**params), Exec(PYTHON, [PYTHON, "-c", app, str(i), *extra]))
    if not res.ok:
        return {"i": i, "ok": False, "detail": res.detail}
    status = os.waitpid(res.app_pid, 0)[1]
    return {"i": i, "ok": True, "exit": os.waitstatus_to_exitcode(status), "name": res.guard_pname}

with ThreadPoolExecutor(conc) as pool:
    for out in pool.map(one, range(count)):
        print(json.dumps(out), flush=True)
"""

SQLITE_APP = r"""
import sqlite3, sys
db = sqlite3.connect(sys.argv[2] + "/app.db", timeout=60, isolation_level=None)
db.execute("PRAGMA busy_timeout = 60000")
db.execute("BEGIN IMMEDIATE")
db.execute("CREATE TABLE IF NOT EXISTS runs (i INTEGER)")
db.execute("INSERT INTO runs VALUES (?)", (int(sys.argv[1]),))
db.execute("COMMIT")
db.close()
"""


# Tests about what a share's end does at once: their rockerd lets no share linger (--data-linger 0; the
# linger is test_data_linger.py's). The others run with the default linger and wait past it where they
# check that a data dir's last rocker took its work slot and overlays with it.
NO_LINGER = {"test_overlays_kept_only_while_the_data_dir_is_used",
             "test_a_work_slot_its_owner_filled_does_not_stall_rockerd_at_the_end"}


@pytest.fixture(params=["fast", "forced"])
def daemon(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Daemon]:
    """rockerd on this kernel's fast paths, and with every fallback forced (Debian 12's 6.1)."""
    use_kernel_paths(request, monkeypatch)
    d = start_daemon(tmp_path / "d", *(("--data-linger", "0") if request.node.originalname in NO_LINGER else ()))
    monkeypatch.setenv("ROCKER_SOCKET", d.socket)
    yield d
    d.stop()
    assert "Traceback" not in d.log_text(), d.log_text()


def run_many(req_params: dict[str, Any], count: int, conc: int, app: str, *extra: str,
             timeout: float = 300) -> list[dict[str, Any]]:
    code = f"PYTHON = {PYTHON!r}\n" + RUNNER
    p = subprocess.run([sys.executable, "-c", code, json.dumps([req_params, count, conc, app, extra])],
                       capture_output=True, text=True, timeout=timeout * SLOW, env=dict(os.environ))
    assert p.returncode == 0, p.stderr
    return [json.loads(line) for line in p.stdout.splitlines()]


def params(base: Path, pkg: Path, overlays: tuple[str, ...]) -> dict[str, Any]:
    return {"app_id": 1, "uid": 0, "gid": 0, "app_pkg_path": str(pkg), "app_exec_dir": str(base / "exec"),
            "app_data_dir": str(base / "data"), "app_overlay_dirs": list(overlays)}


def mounts_of(d: Path) -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return [line for line in f if str(d) in line]


def test_fifty_sqlite_writers_on_one_data_dir(daemon: Daemon, base: Path, pkg: Path) -> None:
    """50 rockers at once on one data dir, one sqlite database in an overlaid dir, sqlite's own
    locking: every one succeeds and every row is there (separate overlays lost writes and gave
    `disk I/O error`, issue 16)."""
    host = base / "host"
    host.mkdir()
    out = run_many(params(base, pkg, (str(host),)), 50, 50, SQLITE_APP, str(host))
    failed = [o for o in out if not o["ok"] or o["exit"] != 0]
    assert not failed, failed
    assert len(out) == 50
    assert not (host / "app.db").exists(), "the app wrote to the host dir"
    import sqlite3
    rows = sqlite3.connect(base / "data/upper" / host.relative_to("/") / "app.db").execute(
        "SELECT i FROM runs ORDER BY i").fetchall()
    assert [r[0] for r in rows] == list(range(50))
    assert wait_until(lambda: not (base / "data/work").exists(), 5), os.listdir(base / "data/work")


def test_work_slots_do_not_pile_up(daemon: Daemon, base: Path, pkg: Path) -> None:
    """100 runs, up to 8 at once, on one data dir: they share one work slot, and none is left after."""
    host = base / "host"
    host.mkdir()
    seen: list[int] = []
    stop = False

    def count() -> None:
        while not stop:
            try:
                seen.append(len(os.listdir(base / "data/work")))
            except FileNotFoundError:
                seen.append(0)
            time.sleep(0.005)

    import threading
    t = threading.Thread(target=count)
    t.start()
    try:
        out = run_many(params(base, pkg, (str(host), "/usr")), 100, 8, "import time; time.sleep(0.05)")
    finally:
        stop = True
        t.join()
    assert [o for o in out if not o["ok"] or o["exit"] != 0] == []
    assert max(seen) == 1, f"work slots seen at once: {max(seen)}"
    assert wait_until(lambda: not (base / "data/work").exists(), 5), os.listdir(base / "data/work")
    assert sorted(os.listdir(base / "data")) == ["upper"]


def test_different_overlays_or_uid_refused_naming_the_holder(daemon: Daemon, base: Path, pkg: Path) -> None:
    (base / "a").mkdir()
    (base / "b").mkdir()

    def second(res: RockerResult) -> None:
        results["other overlays"] = enter_rocker(make_req(base, pkg, overlays=(str(base / "b"),)), lambda _: 0)
        results["other gid"] = enter_rocker(make_req(base, pkg, overlays=(str(base / "a"),), gid=1), lambda _: 0)
        results["same"] = enter_rocker(make_req(base, pkg, overlays=(str(base / "a"),)),
                                       lambda _: 0 if os.path.exists(f"{base}/a/first") else 3)
        os.waitpid(results["same"].app_pid, 0)
        names.append(res.guard_pname)

    results: dict[str, RockerResult] = {}
    names: list[str] = []
    run = run_app(make_req(base, pkg, overlays=(str(base / "a"),)),
                  lambda: {"w": Path(f"{base}/a/first").write_text("x")}, second)
    assert run.res.ok, run.res.detail
    for what in ("other overlays", "other gid"):
        res = results[what]
        assert not res.ok, what
        assert f"in use by rocker {names[0]}" in res.detail, res.detail
        assert "same overlay dirs and ids" in res.detail, res.detail
    assert results["same"].ok, results["same"].detail
    assert "refused request" in daemon.log_text()


def test_a_rocker_that_is_ending_does_not_refuse_the_next_one(daemon: Daemon, base: Path, pkg: Path) -> None:
    """`rocker run A; rocker run B` on one data dir with other overlays: B's request may come while A's rocker
    is still ending (its app has exited; its guard and rockerd's handling of the end follow). B waits for
    that end (datashare.ENDING_GRACE) instead of being refused; the C front, which returns the moment its
    app exits, met this in the quickstart."""
    (base / "a").mkdir()
    (base / "b").mkdir()
    first = enter_rocker(make_req(base, pkg, overlays=(str(base / "a"),)), lambda _: time.sleep(0.2) or 0)
    assert first.ok, first.detail
    import threading
    reaper = threading.Thread(target=os.waitpid, args=(first.app_pid, 0))  # as a launcher does (rocker run)
    reaper.start()
    try:
        second = enter_rocker(make_req(base, pkg, overlays=(str(base / "b"),)), lambda _: 0)
    finally:
        reaper.join()
    assert second.ok, second.detail
    os.waitpid(second.app_pid, 0)


def _overlay_fds(pid: int) -> int:
    """How many of `pid`'s fds are on an overlayfs (each reopened O_PATH through /proc, then fstatfs)."""
    n = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            ref = os.open(f"/proc/{pid}/fd/{fd}", os.O_PATH | os.O_CLOEXEC)
        except OSError:
            continue  # closed meanwhile, or a socket
        try:
            n += stage._fs_magic(ref) == stage.OVERLAYFS_SUPER_MAGIC
        finally:
            os.close(ref)
    return n


def test_overlays_kept_only_while_the_data_dir_is_used(daemon: Daemon, base: Path, pkg: Path) -> None:
    """The first rocker's overlays are kept for the rockers that join it: on 6.15 as detached mounts,
    fds of rockerd's (the first create makes no trip to the stager thread, issue 13's create cost),
    before it attached in the stager's namespace (test_kernel_paths checks that one). Once the last
    rocker on the data dir ends, rockerd holds none of them."""
    host = base / "host"
    host.mkdir()
    detached = os.environ.get(kernel.FORCE_ENV) is None and kernel.TREE_CLONE.name in kernel.probe(None).fast
    seen: list[int] = []
    run = run_app(make_req(base, pkg, overlays=(str(host), "/usr")), lambda: {},
                  while_alive=lambda _: seen.append(_overlay_fds(daemon.proc.pid)))
    assert run.res.ok, run.res.detail
    assert seen == [2 if detached else 0], "the overlays of the live data dir, as fds of rockerd's"
    assert wait_until(lambda: _overlay_fds(daemon.proc.pid) == 0, 5), "rockerd kept an overlay after its last rocker"


def _st_dev(d: str) -> dict[str, Any]:
    return {"dev": os.stat(d).st_dev, "seen": sorted(os.listdir(d))}


def test_restarted_rockerd_joins_the_adopted_rockers_overlays(daemon: Daemon, base: Path, pkg: Path,
                                                              tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """rockerd killed with a rocker live on a data dir; the restarted one adopts it, and a new rocker
    on that data dir gets the adopted rocker's overlay (one superblock: each sees the other's writes)."""
    host = str(base / "host")
    os.mkdir(host)
    req = make_req(base, pkg, overlays=(host,))
    d2: list[Daemon] = []
    inner: dict[str, Any] = {}

    def restart_and_join(res: RockerResult) -> None:
        daemon.proc.send_signal(signal.SIGKILL)
        daemon.proc.wait()
        d2.append(start_daemon(tmp_path / "d"))
        monkeypatch.setenv("ROCKER_SOCKET", d2[0].socket)
        second = run_app(req, lambda: {**_st_dev(host), "w": Path(f"{host}/second").write_text("2")})
        inner.update(second.report, ok=second.res.ok, detail=second.res.detail)

    try:
        first = run_app(req, lambda: {**_st_dev(host), "w": Path(f"{host}/first").write_text("1")}, restart_and_join)
    finally:
        for d in d2:
            d.stop()
    assert first.res.ok, first.res.detail
    assert inner["ok"], inner["detail"]
    assert inner["dev"] == first.report["dev"], "the second rocker got an overlay of its own"
    assert inner["seen"] == ["first"]
    assert f"adopted {first.res.guard_pname}" in d2[0].log_text()
    assert "Traceback" not in d2[0].log_text(), d2[0].log_text()
    assert sorted(os.listdir(f"{base}/data/upper{host}")) == ["first", "second"]


# -- the owner's data dir: rm-data as uid 1000, diff --------------------------------------------------

UID = 1000
OWNER_APP = r"""
import os, sys
i, s = sys.argv[1], sys.argv[2]
with open(f"{s}/other/new{i}", "w") as f:  # copies up other/ (uid 1001) into the root-owned sticky upper
    f.write(i)
try:
    os.unlink(f"{s}/other/f")  # a whiteout (root's) in that copy-up
except FileNotFoundError:
    pass
with open(f"{s}/mine{i}", "w") as f:
    f.write(i)
"""


@pytest.fixture
def owner_world(base: Path, pkg: Path) -> Iterator[tuple[Path, Daemon]]:
    """uid 1000's own dirs (its data dir in a dir of its own), a socket it may use, rocker_client it can import,
    and a host dir like /tmp (root, 1777) holding a dir of uid 1001 that anyone may write."""
    import shutil

    from test_nonroot import copy_client
    copy_client(base)
    shutil.copy(pkg, base / "app.squashfs")
    for d in ("u/exec", "u/data"):
        (base / d).mkdir(parents=True)
    shared = base / "shared"
    (shared / "other").mkdir(parents=True)
    (shared / "other/f").write_text("of uid 1001")
    for p in [base, *base.rglob("*")]:
        p.chmod(p.stat().st_mode | 0o755 if p.is_dir() else p.stat().st_mode | 0o644)
    for p in (base / "u", base / "u/exec", base / "u/data"):
        os.chown(p, UID, UID)
    (base / "u/data").chmod(0o700)
    shared.chmod(0o1777)
    (shared / "other").chmod(0o777)
    for p in (shared / "other", shared / "other/f"):
        os.chown(p, 1001, 1001)
    d = start_daemon(base / "d", "--socket-mode", "0666")
    yield base, d
    d.stop()
    assert "Traceback" not in d.log_text(), d.log_text()


def as_uid(cmd: list[str], base: Path, d: Daemon, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, user=UID, group=UID, extra_groups=[], capture_output=True, text=True,
                          timeout=timeout * SLOW, env={"ROCKER_SOCKET": d.socket, "PYTHONPATH": str(base / "lib")})


def test_owner_removes_its_data_dir_after_twenty_runs(owner_world: tuple[Path, Daemon]) -> None:
    """20 runs as uid 1000 leave copy-ups of uid 1001's dir and root's whiteouts in its data dir:
    a plain rm -rf cannot remove it, `rocker rm-data` can, without following a link out of it."""
    base, d = owner_world
    shared, data = str(base / "shared"), base / "u/data"
    p = {"app_id": 1, "uid": UID, "gid": UID, "app_pkg_path": str(base / "app.squashfs"),
         "app_exec_dir": str(base / "u/exec"), "app_data_dir": str(data), "app_overlay_dirs": [shared, "/usr"]}
    code = f"PYTHON = {PYTHON!r}\n" + RUNNER
    out = as_uid([PYTHON, "-I", "-c", f"import sys; sys.path.insert(0, {str(base / 'lib')!r})\n" + code,
                  json.dumps([p, 20, 4, OWNER_APP, [shared]])], base, d)
    runs = [json.loads(line) for line in out.stdout.splitlines()]
    assert len(runs) == 20 and all(r["ok"] and r["exit"] == 0 for r in runs), out.stdout + out.stderr
    upper = data / "upper" / shared.lstrip("/")
    assert os.lstat(upper / "other").st_uid == 1001, "the copy-up keeps its host owner"
    wh = os.lstat(upper / "other/f")
    assert (wh.st_uid, wh.st_rdev) == (0, 0), "the deletion is root's whiteout"
    assert (base / "shared/other/f").exists(), "the app changed the host"
    assert wait_until(lambda: not (data / "work").exists(), 5), "the work slot outlived the rockers"

    diff = subprocess.run([sys.executable, "-m", "rocker_client.cli", "diff", str(data)], capture_output=True,
                          text=True, env={**os.environ, "ROCKER_SOCKET": d.socket})
    lines = diff.stdout.splitlines()
    assert f"D {shared}/other/f" in lines and f"A {shared}/mine0" in lines and f"A {shared}/other/new19" in lines
    assert not any(line.endswith(f"{shared}/") or line.endswith(f"{shared}/other/") for line in lines), \
        "a dir the host has is not a change by itself"

    (base / "victim").mkdir()
    (base / "victim/keep").write_text("root's")
    os.symlink(base / "victim", data / "upper/link")  # a link out of the data dir (the owner may make one)
    os.lchown(data / "upper/link", UID, UID)
    rm = as_uid(["/bin/rm", "-rf", str(data)], base, d)
    assert rm.returncode != 0 and data.exists(), "a plain rm -rf should fail here (or the test shows nothing)"
    rm = as_uid([PYTHON, "-c", "import sys; from rocker_client.cli import main; sys.exit(main(sys.argv[1:]))",
                 "rm-data", str(data)], base, d)
    assert rm.returncode == 0, rm.stdout + rm.stderr
    assert not data.exists()
    assert (base / "victim/keep").read_text() == "root's", "rm-data followed a link out of the data dir"


def test_rm_data_refused_while_in_use_and_for_others(owner_world: tuple[Path, Daemon], pkg: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Refused while a rocker uses the dir (naming it), for a dir of another uid, and for a dir
    that is not a data dir even to root; `rocker inspect` shows the data dir."""
    base, d = owner_world
    data = base / "u/data"
    req = make_req(base / "u", pkg, uid=UID, gid=UID, overlays=(str(base / "shared"),))
    seen: dict[str, Any] = {}

    def try_remove(res: RockerResult) -> None:
        rm = as_uid([PYTHON, "-c", "import sys; from rocker_client.cli import main; sys.exit(main(sys.argv[1:]))",
                     "rm-data", str(data)], base, d)
        seen["rm"] = (rm.returncode, rm.stderr)
        ins = subprocess.run([sys.executable, "-m", "rocker_client.cli", "inspect", res.guard_pname],
                             capture_output=True, text=True, env={**os.environ, "ROCKER_SOCKET": d.socket})
        seen["inspect"] = json.loads(ins.stdout)
        seen["name"] = res.guard_pname

    monkeypatch.setenv("ROCKER_SOCKET", d.socket)
    run = run_app(req, lambda: {}, try_remove)
    assert run.res.ok, run.res.detail
    code, err = seen["rm"]
    assert code == 125 and f"in use by rocker {seen['name']}" in err, err
    assert seen["inspect"]["app_data_dir"] == str(data)
    assert data.exists()
    other = subprocess.run([PYTHON, "-c", "import sys; from rocker_client.cli import main; "
                            "sys.exit(main(sys.argv[1:]))", "rm-data", str(base / "shared")], user=1001, group=1001,
                           extra_groups=[], capture_output=True, text=True,
                           env={"ROCKER_SOCKET": d.socket, "PYTHONPATH": str(base / "lib")})
    assert other.returncode == 125 and "is owned by uid 0, not 1001" in other.stderr, other.stderr
    root = subprocess.run([sys.executable, "-m", "rocker_client.cli", "rm-data", str(base / "shared")],
                          capture_output=True, text=True, env={**os.environ, "ROCKER_SOCKET": d.socket})
    assert root.returncode == 125 and "does not look like a data dir: it holds other" in root.stderr, root.stderr
    assert (base / "shared/other/f").exists()


def _listed(d: Daemon) -> tuple[set[str], float]:
    t0 = time.monotonic()
    reply, fds = wire.call(d.socket, "io.rocker.Rocker.List", {}, timeout=30)
    for fd in fds:
        os.close(fd)
    return {r["guard_pname"] for r in reply.get("rockers", [])}, time.monotonic() - t0


def test_a_work_slot_its_owner_filled_does_not_stall_rockerd_at_the_end(daemon: Daemon, base: Path,
                                                                        pkg: Path) -> None:
    """The last rocker's end clears its work slot, a tree the data dir's owner can fill at will: that runs on
    a thread of its own (datashare.Ending), never the loop, so rockerd answers everyone meanwhile (issue 13:
    nothing a caller sends blocks the loop). Before, a slot of 10,000 dirs held every call for seconds."""
    with live_app(make_req(base, pkg), lambda: {}) as run:
        assert run.res.ok, run.res.detail
        name = run.res.guard_pname
        junk = base / "data" / "work" / "0" / "junk"
        junk.mkdir()
        fd = os.open(junk, os.O_RDONLY | os.O_DIRECTORY)
        try:
            for i in range(10_000):
                os.mkdir(str(i), dir_fd=fd)
        finally:
            os.close(fd)
    took = []
    deadline = time.monotonic() + 30 * SLOW
    while True:  # until rockerd has handled the end
        names, t = _listed(daemon)
        took.append(t)
        if name not in names:
            break
        assert time.monotonic() < deadline, f"{name} still listed"
        time.sleep(0.02)
    assert junk.parent.exists(), "the slot was cleared before the end was handled: the loop did it"
    while junk.parent.exists():  # the slot's removal goes on; rockerd answers meanwhile
        took.append(_listed(daemon)[1])
        assert time.monotonic() < deadline, "the work slot was never removed"
        time.sleep(0.02)
    assert max(took) < 0.5 * SLOW, f"List took {max(took):.2f} s while the work slot was cleared"


def test_the_next_rocker_on_a_data_dir_waits_for_the_last_ones_overlays_to_go(monkeypatch: pytest.MonkeyPatch) -> None:
    """A share's end drops its kept overlays on the ends' thread; until they are gone a build on the same data
    dir waits (SharePending), so one upper dir never has two overlayfs (the kernel: "upperdir is in-use ...
    undefined behavior"). A drop held up for real is a fault we cannot cause: a Kept that blocks stands in."""
    import dataclasses
    import threading

    from rockerd.create import datashare
    from rockerd.create.workslots import WorkSlots

    class SlowKept(stage.Kept):
        def __init__(self) -> None:
            self.release = threading.Event()
            self.dropped = False

        def __len__(self) -> int:
            return 1

        def drop(self) -> None:
            self.release.wait(10)
            self.dropped = True

    real = kernel.current()  # no stager thread in this test process (before 6.15 DataShares starts one)
    monkeypatch.setattr(kernel, "current", lambda: dataclasses.replace(real, fast=real.fast | {kernel.TREE_CLONE.name}))
    fd = os.open("/tmp", os.O_PATH | os.O_DIRECTORY)
    try:
        shares = datashare.DataShares(WorkSlots())
        req = type("Req", (), {"app_overlay_dirs": ["/usr"], "uid": 0, "gid": 0, "app_data_dir": "/tmp"})()
        share, joined = shares.claim("a", req, fd)
        assert not joined
        kept = share.kept = SlowKept()
        shares.built("a", 1)
        shares.leave("a")  # the last one out: its overlays are being dropped, slowly
        with pytest.raises(datashare.SharePending) as waiting:
            shares.claim("b", req, fd)
        assert not waiting.value.first.done()
        kept.release.set()
        assert waiting.value.first.result(timeout=10) is True and kept.dropped
        pending = shares.ending(share.key)
        if pending is not None:
            pending.result(timeout=10)
        again, joined = shares.claim("b", req, fd)  # now it starts a share of its own
        assert not joined and again is not share
        shares.leave("b")
    finally:
        os.close(fd)
        for pool in datashare._ends.values():  # their threads would make this test process a threaded caller
            pool.shutdown(wait=True)
        datashare._ends.clear()
