"""Load (issue #4): many rockers created, entered and torn down by 20 parallel clients.

Each client is a thread calling ``rocker_client.enter_rocker`` with a trivial app (a Python callable
returning 0), waiting for the app and then for the rocker's guard to leave.  Every client reuses its own
data dir, as a launcher starting the same app again and again would.  Afterwards: 0 failures, no rocker
left in rockerd's registry, work slots per data dir bounded (reused), rockerd's fd count back to its baseline and its
RSS flat (before/after printed); the session leak check covers mounts, loop devices and processes.

``ROCKER_SOAK=N`` sets the number of rockers (default 100; the full run is 1000, see docs/testing.md).
"""

from __future__ import annotations

import itertools
import os
import select
import statistics
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from daemon import Daemon
from rockers import make_req

from rocker_client import RockerErr, enter_rocker, wire

SOAK_N = int(os.environ.get("ROCKER_SOAK", "0") or 0) or 100
CLIENTS = int(os.environ.get("ROCKER_SOAK_CLIENTS", "0") or 0) or 20
WARMUP = 2 * CLIENTS
GUARD_EXIT_TIMEOUT = 10.0  # a guard must leave within ms of its app; this only bounds a hang
# rockerd's RSS may grow this much over the whole run (after warm-up): a per-rocker leak of 1 KiB
# would show at N=1000 only barely, so the bound scales down to flat for small runs.
RSS_GROWTH_MAX_KIB = 8 * 1024


def _app(_: object) -> int:
    return 0


@dataclass
class Stats:
    failures: list[str] = field(default_factory=list)
    enter_ms: list[float] = field(default_factory=list)
    guard_exit_ms: list[float] = field(default_factory=list)
    names: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def fail(self, what: str) -> None:
        with self.lock:
            self.failures.append(what)


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return int(next(ln for ln in f if ln.startswith("VmRSS:")).split()[1])


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _guard_pidfd(pid: int, name: str) -> int | None:
    """A pidfd of the guard, or None if it is gone already (checked by name: its PID may be reused)."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return None
    try:
        with open(f"/proc/{pid}/comm") as f:
            comm = f.read().strip()
    except OSError:
        comm = ""
    if comm != name[:15]:  # exited and the number went to someone else before pidfd_open
        os.close(pidfd)
        return None
    return pidfd


def one_rocker(i: int, client: int, base: Path, pkg: Path, stats: Stats) -> None:
    req = make_req(base, pkg, overlays=("/usr",), app_id=i)
    req.app_data_dir = str(base / f"data-{client:02d}")
    t0 = time.perf_counter()
    res = enter_rocker(req, _app)
    t1 = time.perf_counter()
    if res.err_no != RockerErr.success:
        stats.fail(f"#{i}: enter_rocker: {res.err_no.name}: {res.detail}")
        return
    pidfd = _guard_pidfd(res.guard_pid, res.guard_pname)
    try:
        _, status = os.waitpid(res.app_pid, 0)
        t_app = time.perf_counter()
        if status != 0:
            stats.fail(f"#{i}: app exited with status {status:#x}")
        if pidfd is not None and not select.select([pidfd], [], [], GUARD_EXIT_TIMEOUT)[0]:
            stats.fail(f"#{i}: guard {res.guard_pname} (pid {res.guard_pid}) still there "
                       f"{GUARD_EXIT_TIMEOUT:g} s after its app exited")
        t_guard = time.perf_counter()
    finally:
        if pidfd is not None:
            os.close(pidfd)
    with stats.lock:
        stats.enter_ms.append((t1 - t0) * 1000)
        stats.guard_exit_ms.append((t_guard - t_app) * 1000)
        if res.guard_pname in stats.names:
            stats.failures.append(f"#{i}: guard name {res.guard_pname} given twice")
        stats.names.add(res.guard_pname)


def run_clients(n: int, base: Path, pkg: Path) -> Stats:
    stats = Stats()
    counter = itertools.count()
    counter_lock = threading.Lock()

    def client(k: int) -> None:
        while True:
            with counter_lock:
                i = next(counter)
            if i >= n:
                return
            try:
                one_rocker(i, k, base, pkg, stats)
            except Exception as e:  # a failure of this rocker, not of the whole run
                stats.fail(f"#{i}: {type(e).__name__}: {e}")

    threads = [threading.Thread(target=client, args=(k,), name=f"soak-client-{k}") for k in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return stats


def live_rockers(path: str) -> list[str]:
    reply, fds = wire.call(path, "io.rocker.Rocker.List", {})
    for fd in fds:
        os.close(fd)
    return [r["guard_pname"] for r in reply["rockers"]]


MAX_SLOTS = 3  # work slots per data dir: each client runs one rocker at a time, the next may start as one ends


def wait_idle(d: Daemon, base: Path, fds0: int | None, timeout: float = 30.0) -> tuple[list[str], list[str], int]:
    """Wait until the registry is empty and (if given) fds are back; report data dirs with too many work slots.

    Work slots are reused, not removed (rockerd/create/workslots.py): their number per data dir must stay
    bounded by the concurrency on it, not grow with the number of rockers.
    """
    deadline = time.monotonic() + timeout
    while True:
        live = live_rockers(d.socket)
        work = sorted(str(p) for p in base.glob("data-*/work") if len(list(p.iterdir())) > MAX_SLOTS)
        fds = fd_count(d.proc.pid)
        if (not live and (fds0 is None or fds <= fds0)) or time.monotonic() > deadline:
            return live, work, fds
        time.sleep(0.1)


def _pct(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1] if len(values) > 1 else values[0]


@pytest.mark.timeout(max(300, SOAK_N))
def test_soak(own_rockerd: Daemon, base: Path, pkg: Path) -> None:
    pid = own_rockerd.proc.pid
    warm = run_clients(WARMUP, base, pkg)
    assert warm.failures == [], warm.failures[:10]
    live, work, _ = wait_idle(own_rockerd, base, None)
    assert live == [] and work == [], (live, work)
    rss0, fds0 = rss_kib(pid), fd_count(pid)

    t0 = time.monotonic()
    stats = run_clients(SOAK_N, base, pkg)
    elapsed = time.monotonic() - t0
    live, work, fds1 = wait_idle(own_rockerd, base, fds0)
    rss1 = rss_kib(pid)

    print(f"\n[soak] {SOAK_N} rockers by {CLIENTS} clients in {elapsed:.1f} s ({SOAK_N / elapsed:.1f}/s), "
          f"{len(stats.failures)} failures")
    print(f"[soak] enter_rocker ms: median {_pct(stats.enter_ms, 50):.1f}, p95 {_pct(stats.enter_ms, 95):.1f}, "
          f"max {max(stats.enter_ms, default=0):.1f}")
    print(f"[soak] guard gone after its app, ms: median {_pct(stats.guard_exit_ms, 50):.1f}, "
          f"p95 {_pct(stats.guard_exit_ms, 95):.1f}, max {max(stats.guard_exit_ms, default=0):.1f}")
    print(f"[soak] rockerd pid {pid}: RSS {rss0} KiB -> {rss1} KiB ({rss1 - rss0:+d} KiB), fds {fds0} -> {fds1}")

    assert stats.failures == [], f"{len(stats.failures)} failures, e.g.:\n" + "\n".join(stats.failures[:20])
    assert len(stats.names) == SOAK_N
    assert live == [], f"rockerd still lists {len(live)} rockers: {live[:10]}"
    assert work == [], f"work slots grew with the number of rockers: {work[:10]}"
    assert fds1 <= fds0, f"rockerd holds {fds1 - fds0} more fds than before the run"
    assert rss1 - rss0 < RSS_GROWTH_MAX_KIB, f"rockerd's RSS grew by {rss1 - rss0} KiB over {SOAK_N} rockers"
    log = own_rockerd.log_text()
    assert log.count("] INFO created rk-") == WARMUP + SOAK_N
    assert log.count("] INFO ended rk-") == WARMUP + SOAK_N
    for bad in ("Traceback", " ERROR ", " WARNING "):
        assert bad not in log, f"{bad!r} in rockerd's log:\n{log[max(0, log.find(bad) - 1500):][:3000]}"
    own_rockerd.stop()
    assert own_rockerd.proc.returncode == 0
