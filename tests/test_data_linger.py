"""A data dir's overlays linger after its last rocker (rockerd --data-linger, datashare.py): the next rocker
on it with the same layers gets clones of them (no new overlayfs, no wait for the old one's drop), unless
the data dir no longer holds what they write to; they end after the linger, at rm-data, and when rockerd
stops. On this kernel's fast paths and with every fallback forced (Debian 12's 6.1: kept mounts staged)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from daemon import Daemon, start_daemon, use_kernel_paths
from rockers import make_req, run_app, wait_until

from rocker_client import enter_rocker, wire

SLOW = float(os.environ.get("ROCKER_TEST_TIME_SCALE", "1"))
LONG = 60.0  # a linger no test outlasts: what it shows does not depend on timing

Start = Callable[..., Daemon]


@pytest.fixture(params=["fast", "forced"])
def start(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Start]:
    """Starts rockerd with `--data-linger SEC` (None: the default) on the fast paths or with every fallback."""
    use_kernel_paths(request, monkeypatch)
    started: list[Daemon] = []

    def run(linger: float | None) -> Daemon:
        args = () if linger is None else ("--data-linger", str(linger))
        d = start_daemon(tmp_path / f"d{len(started)}", *args)
        started.append(d)
        monkeypatch.setenv("ROCKER_SOCKET", d.socket)
        return d

    yield run
    for d in started:
        d.stop()
        assert "Traceback" not in d.log_text(), d.log_text()


def listed(d: Daemon) -> set[str]:
    reply, fds = wire.call(d.socket, "io.rocker.Rocker.List", {}, timeout=30)
    for fd in fds:
        os.close(fd)
    return {r["guard_pname"] for r in reply.get("rockers", [])}


def once(d: Daemon, base: Path, pkg: Path, host: Path, write: str, **kw: Any) -> dict[str, Any]:
    """One rocker with an overlay over `host`: it writes `write` there and reports the overlay's st_dev and
    what it sees; returns once rockerd has handled its end (its data dir's share lingers from then on)."""
    run = run_app(make_req(base, pkg, overlays=(str(host),), **kw),
                  lambda: {"dev": os.stat(host).st_dev, "seen": sorted(os.listdir(host)),
                           "w": Path(f"{host}/{write}").write_text(write)})
    assert run.res.ok, run.res.detail
    assert "probe_error" not in run.report, run.report
    assert wait_until(lambda: run.res.guard_pname not in listed(d), 10), "rockerd did not handle the end"
    return run.report


def first_lingering(start: Start, base: Path, pkg: Path) -> tuple[Daemon, Path, dict[str, Any]]:
    """A rockerd with a linger no test outlasts, and one rocker over `base/host` that has ended: its
    data dir's overlays now linger. Returns the daemon, the host dir and that rocker's report."""
    d = start(LONG)
    host = base / "host"
    host.mkdir()
    return d, host, once(d, base, pkg, host, "first")


def slot_ino(base: Path) -> int:
    return os.stat(base / "data/work/0").st_ino


def mark_work(base: Path) -> Path:
    """A file in the lingering overlay's own work dir (work/<slot>/<i>/work), which overlayfs empties
    when it mounts: still there after the next rocker means no new overlayfs was mounted (timing-free,
    unlike st_dev, whose anonymous device number a new overlayfs may get again once the old one is gone)."""
    [slot] = os.listdir(base / "data/work")
    mark = base / f"data/work/{slot}/0/work/linger-mark"
    mark.write_text("x")
    return mark


def test_the_next_rocker_within_the_linger_gets_the_same_overlay(start: Start, base: Path, pkg: Path) -> None:
    """Back to back on one data dir: the second rocker's overlay is the first one's (one superblock, the same
    work slot dir), it sees the first one's write, and its own lands in the data dir."""
    d, host, first = first_lingering(start, base, pkg)
    slot = slot_ino(base)
    mark = mark_work(base)
    second = once(d, base, pkg, host, "second")
    assert mark.exists(), "the second rocker got an overlayfs of its own (it reset the work dir)"
    assert second["dev"] == first["dev"], "the second rocker got an overlayfs of its own"
    assert slot_ino(base) == slot and os.listdir(base / "data/work") == ["0"]
    assert second["seen"] == ["first"]
    assert sorted(os.listdir(base / f"data/upper{host}")) == ["first", "second"]
    assert not os.listdir(host), "the app wrote to the host dir"


def test_after_the_linger_the_share_ends_and_the_next_rocker_builds_anew(start: Start, base: Path,
                                                                         pkg: Path) -> None:
    """The work slot outlives the rocker by about the linger, then goes; the next rocker has a new overlayfs."""
    linger = 2.0 * SLOW
    d = start(linger)
    host = base / "host"
    host.mkdir()
    once(d, base, pkg, host, "first")
    ended = time.monotonic()
    time.sleep(linger / 4)
    assert (base / "data/work/0").exists(), "the share did not linger"
    assert wait_until(lambda: not (base / "data/work").exists(), linger + 10), "the lingering share never ended"
    assert time.monotonic() - ended >= linger * 0.9, "the share ended before its linger"
    second = once(d, base, pkg, host, "second")
    assert second["seen"] == ["first"]


def _rm_upper(base: Path, host: Path) -> None:
    shutil.rmtree(base / f"data/upper{host}")


def _replace_upper(base: Path, host: Path) -> None:
    up = base / f"data/upper{host}"
    up.rename(base / "data/upper/old")
    up.mkdir(mode=0o755)


def _rm_work(base: Path, host: Path) -> None:
    shutil.rmtree(base / "data/work/0")


@pytest.mark.parametrize(("change", "seen"), [(_rm_upper, []), (_replace_upper, []), (_rm_work, ["first"])],
                         ids=["rm-upper", "replaced-upper", "rm-work"])
def test_a_removed_or_replaced_dir_ends_the_lingering_share(start: Start, base: Path, pkg: Path,
                                                            change: Callable[[Path, Path], None],
                                                            seen: list[str]) -> None:
    """The caller removes (or swaps) what the lingering overlays write to: the next rocker must not write into
    the removed dir (lost) but into the data dir as it is now, through a new overlayfs."""
    d, host, _ = first_lingering(start, base, pkg)
    change(base, host)
    second = once(d, base, pkg, host, "second")
    assert second["seen"] == seen, "the lingering overlay was revived over a removed dir"
    assert (base / f"data/upper{host}/second").read_text() == "second", "the write was lost"
    assert "they end" in d.log_text()


def test_other_layers_end_the_lingering_share_at_once(start: Start, base: Path, pkg: Path) -> None:
    """Other overlay dirs (or ids) on a lingering data dir: nobody holds it, so the build goes ahead after its
    end (in the same work slot) instead of being refused (or waiting datashare.ENDING_GRACE); the first layers
    then build anew."""
    d = start(LONG)
    a, b = base / "a", base / "b"
    a.mkdir()
    b.mkdir()
    once(d, base, pkg, a, "first")
    mark = mark_work(base)
    once(d, base, pkg, b, "other")
    assert not mark.exists(), "other overlay dirs were given the lingering share's overlay"
    mark = mark_work(base)
    once(d, base, pkg, a, "third", gid=1)
    assert not mark.exists(), "other ids were given the lingering share's overlay"
    mark = mark_work(base)
    again = once(d, base, pkg, a, "again")
    assert not mark.exists(), "the share of gid 1 was revived for gid 0"
    assert again["seen"] == ["first", "third"]
    assert os.listdir(base / "data/work") == ["0"], "the next share took another slot (it did not wait for the end)"
    assert "in use by rocker" not in d.log_text()


def test_rm_data_ends_a_lingering_share(start: Start, base: Path, pkg: Path) -> None:
    """`rocker rm-data` right after the last rocker: the linger ends, the dir goes (not "in use")."""
    d, host, _ = first_lingering(start, base, pkg)
    assert (base / "data/work/0").exists()
    rm = subprocess.run([sys.executable, "-m", "rocker_client.cli", "rm-data", str(base / "data")],
                        capture_output=True, text=True, env={**os.environ, "ROCKER_SOCKET": d.socket}, timeout=60)
    assert rm.returncode == 0, rm.stdout + rm.stderr
    assert not (base / "data").exists()
    again = once(d, base, pkg, host, "again")  # a fresh data dir, made anew
    assert again["seen"] == []


def test_rockerd_stopping_ends_lingering_shares(start: Start, base: Path, pkg: Path) -> None:
    """SIGTERM while a data dir's overlays linger: rockerd drops them and removes the work slot before exiting."""
    d, _, _ = first_lingering(start, base, pkg)
    assert (base / "data/work/0").exists()
    d.proc.send_signal(signal.SIGTERM)
    assert d.proc.wait(30) == 0, d.log_text()
    assert not (base / "data/work").exists(), "a lingering work slot outlived rockerd"
    assert sorted(os.listdir(base / "data")) == ["upper"]
    with open("/proc/self/mountinfo") as f:
        assert not [line for line in f if str(base) in line]


def test_linger_zero_ends_the_share_with_its_last_rocker(start: Start, base: Path, pkg: Path) -> None:
    """--data-linger 0: today's behaviour: the work slot goes with the last rocker, the next builds anew."""
    d = start(0)
    host = base / "host"
    host.mkdir()
    once(d, base, pkg, host, "first")
    assert wait_until(lambda: not (base / "data/work").exists(), 5), "the work slot outlived the rocker"


def test_the_default_linger_keeps_the_share(start: Start, base: Path, pkg: Path) -> None:
    """Without the option the share lingers (2 s): a back-to-back rocker reuses the overlay."""
    d = start(None)
    host = base / "host"
    host.mkdir()
    once(d, base, pkg, host, "first")
    mark = mark_work(base)
    once(d, base, pkg, host, "second")
    assert mark.exists(), "the second rocker got an overlayfs of its own"


def test_a_killed_rockerd_leaves_the_slot_which_the_next_one_reuses(start: Start, base: Path, pkg: Path) -> None:
    """SIGKILL while a share lingers leaves work/0 (as it leaves a live rocker's); the next rockerd takes slot 0
    again (overlayfs resets a work dir at mount) and removes it when that share ends."""
    d, host, _ = first_lingering(start, base, pkg)
    d.proc.send_signal(signal.SIGKILL)
    d.proc.wait(30)
    assert os.listdir(base / "data/work") == ["0"]
    d2 = start(LONG)
    second = once(d2, base, pkg, host, "second")
    assert second["seen"] == ["first"] and os.listdir(base / "data/work") == ["0"]
    d2.proc.send_signal(signal.SIGTERM)
    assert d2.proc.wait(30) == 0, d2.log_text()
    assert not (base / "data/work").exists()


def test_a_failed_build_does_not_linger(start: Start, base: Path, pkg: Path) -> None:
    """A build that fails after its overlays were made (here: no package) undoes its dirs; its share must not
    linger on them, holding the data dir's fd and the overlays (rockerd's fds come back at once)."""
    d = start(LONG)
    (base / "warm").mkdir()
    for at in (base / "warm", base):  # the first, on another data dir: what a first build opens for good
        req = make_req(at, pkg, overlays=("/usr",))
        req.app_pkg_path = str(base / "nope.squashfs")
        fds_before = len(os.listdir(f"/proc/{d.proc.pid}/fd"))
        res = enter_rocker(req, lambda _: 0)
    assert not res.ok and "nope.squashfs" in res.detail, res.detail
    assert not (base / "data").exists(), "the failed build left its dirs"
    assert wait_until(lambda: len(os.listdir(f"/proc/{d.proc.pid}/fd")) <= fds_before, 2), \
        "rockerd kept fds of the failed build (a lingering share)"
