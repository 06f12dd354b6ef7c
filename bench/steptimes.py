"""`python3 -m bench.steptimes`: where rockerd's Create spends its time, step by step (perf_counter).

Starts the benchmark's rockerd through this module (`--daemon`), which wraps, in the daemon process
only, the Create handler, the cgroup set-up, each step of the build (rockerd.create.STEPS, awaited work
included: the wait for the guard's ready is GuardReady) and each of the dir steps on their worker
thread, and writes one JSON line per Create. The driver then runs `--samples` Exec starts with the
package kept mounted (the like-for-like series of the main benchmark) and prints the median of every
part. Hold the test lock while it runs. Needs the step runner (main since session 6).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

OUT_ENV = "ROCKER_BENCH_STEPTIMES"
ENDED = "previous rocker's end: "


def _patch_daemon(out_path: str) -> None:
    """Wrap the Create path's parts in this (the daemon's) process; one JSON line per Create."""
    from rockerd import create, service
    from rockerd.create import dirsteps

    current: dict[str, float] = {}
    lock = threading.Lock()

    ended: dict[str, float] = {}  # the end of the rocker before, which may run while the next Create waits

    def note(label: str, ms: float) -> None:
        with lock:
            into = ended if label.startswith(ENDED) else current
            into[label] = into.get(label, 0.0) + ms

    real_run_steps, real_plain = create.run_steps, dirsteps.run_plain_steps

    marks: dict[str, float] = {}

    async def run_steps(steps: Any, ctx: Any, release: Any = None) -> None:
        for st in steps:
            t0 = time.perf_counter()
            await real_run_steps([st], ctx, release=release)
            t1 = time.perf_counter()
            note("step " + st.describe(), (t1 - t0) * 1000)
            if isinstance(st, dirsteps.HostDirs) and "thread_start" in marks:  # the hop to the thread and back
                note("  dir thread: submit -> its first step", (marks.pop("thread_start") - t0) * 1000)
                note("  dir thread: its last step -> loop resumes", (t1 - marks.pop("thread_end")) * 1000)

    def run_plain_steps(steps: Any, ctx: Any) -> None:
        marks["thread_start"] = time.perf_counter()
        try:
            for st in steps:
                t0 = time.perf_counter()
                real_plain([st], ctx)
                note("  dir step " + st.describe(), (time.perf_counter() - t0) * 1000)
        finally:
            marks["thread_end"] = time.perf_counter()

    create.run_steps, dirsteps.run_plain_steps = run_steps, run_plain_steps  # type: ignore[assignment]

    def timed_method(cls: Any, name: str, label: str) -> None:
        real = getattr(cls, name)
        static = isinstance(getattr(cls, "__dict__", {}).get(name), staticmethod)

        def wrapper(*a: Any, **k: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return real(*a, **k)
            finally:
                note(label, (time.perf_counter() - t0) * 1000)
        setattr(cls, name, staticmethod(wrapper) if static else wrapper)

    timed_method(service.RockerService, "_cgroup_for", "cgroup prepare")
    timed_method(service, "parse_request", "parse request")
    timed_method(service.journal, "event", "journal event (log line)")
    timed_method(service.Network, "plan", "network plan")
    timed_method(service.Network, "setup", "network setup (a bridged rocker's: on a spawn thread)")
    timed_method(service.CgroupManager, "started", "cgroup started (limits)")
    timed_method(service.Registry, "add", "registry add")
    # the end of the previous rocker, handled on the loop (where the next Create may wait for it)
    timed_method(service.RockerService, "_ended", ENDED + "all")
    timed_method(service.PackageCache, "release", ENDED + "package release")
    timed_method(service.DataShares, "leave", ENDED + "data share leave")
    timed_method(service.StateDir, "remove", ENDED + "state record removed")
    timed_method(service.CgroupManager, "ended", ENDED + "cgroup removed")
    from rockerd.create import datashare
    if hasattr(datashare, "remove_work_slot") and hasattr(datashare, "Stage"):  # main at 60351ed
        timed_method(datashare, "remove_work_slot", ENDED + "  work slot removed (rm -r work/N)")
        timed_method(datashare.Stage, "drop", ENDED + "  staged overlays dropped (on the stage thread)")
    timed_method(service.StateDir, "save", "state record")
    timed_method(service.entry, "entry_reply", "entry reply")
    real_create = service.RockerService.create

    async def create_timed(self: Any, call: Any) -> Any:
        with lock:
            current.clear()
        t0 = time.perf_counter()
        try:
            return await real_create(self, call)
        finally:
            with lock:
                row = dict(current, total=(time.perf_counter() - t0) * 1000)
                row.update(ended)
                ended.clear()
            with open(out_path, "a") as f:
                f.write(json.dumps(row) + "\n")

    service.RockerService.create = create_timed  # type: ignore[method-assign]


def daemon_main(argv: list[str]) -> int:
    _patch_daemon(os.environ[OUT_ENV])
    from rockerd.main import main

    return main(argv)


def _patch_client() -> dict[str, list[float]]:
    """Time, in this (the launcher's) process, the parts of enter_rocker after the wire call."""
    from rocker_client import enter, execapp

    client: dict[str, list[float]] = defaultdict(list)

    def timed(mod: Any, name: str, label: str) -> None:
        real = getattr(mod, name)

        def wrapper(*a: Any, **k: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return real(*a, **k)
            finally:
                client[label].append((time.perf_counter() - t0) * 1000)
        setattr(mod, name, wrapper)

    timed(enter.wire, "call", "client: wire call (Create)")
    if hasattr(enter, "read_filter"):
        timed(enter, "read_filter", "client: read the syscall filter")
    timed(execapp, "start", "client: Exec start (join, exec) until exec'd")
    return client


def driver(a: argparse.Namespace) -> int:
    from . import ours
    from .quick import bench_setup

    client = _patch_client()

    with tempfile.NamedTemporaryFile(prefix="rocker-steps-", suffix=".jsonl", dir="/tmp") as tf:
        out = Path(tf.name)
        os.environ[OUT_ENV] = str(out)
        with bench_setup("steps", tuple(a.rockerd_arg), ("bench.steptimes", "--daemon"), a.seccomp, a.keep) as s:
            holder = ours.hold_one(s, "holder")
            ours.exec_start_cycles(s, 5)  # warm-up
            out.write_text("")
            rows = []
            for _ in range(a.samples):  # back to back, as the main benchmark's series, unless --pause
                rows += ours.exec_start_cycles(s, 1)
                time.sleep(a.pause / 1000)
            if holder is not None:
                holder.release()
        starts = [r["start_exec_ms"] for r in rows if r.get("start_exec_ms") is not None]
        builds = [json.loads(x) for x in out.read_text().splitlines()]
    parts: dict[str, list[float]] = defaultdict(list)
    for b in builds:
        for k, v in b.items():
            parts[k].append(v)
    print(f"{len(builds)} creates, package mounted; median ms (perf_counter inside rockerd):")
    for k, v in parts.items():
        print(f"  {k:45} {statistics.median(v):7.3f}   (n={len(v)})")
    for k, v in client.items():
        print(f"  {k:45} {statistics.median(v[-a.samples:]):7.3f}")
    print(f"  {'start_exec (enter_rocker -> main())':45} {statistics.median(starts):7.3f}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--daemon"]:
        return daemon_main(argv[1:])
    p = argparse.ArgumentParser(prog="python3 -m bench.steptimes", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--samples", type=int, default=100)
    p.add_argument("--seccomp", default=None, help="the request's seccomp profile")
    p.add_argument("--rockerd-arg", action="append", default=[], metavar="ARG")
    p.add_argument("--pause", type=float, default=0.0, help="ms between cycles (0: back to back)")
    p.add_argument("--keep", action="store_true")
    return driver(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
