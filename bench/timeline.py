"""`python3 -m bench.timeline`: when each part of a Create on a data dir starts and ends, on which thread.

bench.steptimes says how long each step takes; on a data dir the build runs on
three threads at once (the loop, the spawn thread's clone, the dir thread's
steps), and what the Create waits for is the order in which they finish and
the hops between them. This runs bench.datadir's samples (first rocker on a
data dir, second joining one) against a rockerd started through this module
(`--daemon`), which stamps (perf_counter_ns) the start and end of every step,
dir step, the guard's start on its thread and the C call in it, relative to
the Create's arrival, and prints per kind the median start and end of each
part, in order of start. Hold the test lock while it runs.
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
from collections.abc import Callable
from pathlib import Path
from typing import Any

OUT_ENV = "ROCKER_BENCH_TIMELINE"


def _patch_daemon(out_path: str) -> None:
    from rockerd import create, service
    from rockerd.create import dirsteps, handoff

    row: dict[str, Any] = {}
    lock = threading.Lock()
    origin = [0]

    def stamp(label: str, t0: int, t1: int) -> None:
        with lock:
            row.setdefault(label, ((t0 - origin[0]) / 1e6, (t1 - origin[0]) / 1e6,
                                   threading.current_thread().name.split("_")[0]))

    def timed(label: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*a: Any, **k: Any) -> Any:
            t0 = time.perf_counter_ns()
            try:
                return fn(*a, **k)
            finally:
                stamp(label, t0, time.perf_counter_ns())
        return wrapper

    def timed_async(label: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        async def wrapper(*a: Any, **k: Any) -> Any:
            t0 = time.perf_counter_ns()
            try:
                return await fn(*a, **k)
            finally:
                stamp(label, t0, time.perf_counter_ns())
        return wrapper

    real_run_steps, real_plain = create.run_steps, dirsteps.run_plain_steps

    async def run_steps(steps: Any, ctx: Any, release: Any = None) -> None:
        for st in steps:
            t0 = time.perf_counter_ns()
            await real_run_steps([st], ctx, release=release)
            stamp("step " + type(st).__name__, t0, time.perf_counter_ns())
        with lock:
            row["joined"] = bool(getattr(ctx, "joined", False))

    def run_plain_steps(steps: Any, ctx: Any) -> None:
        for st in steps:
            t0 = time.perf_counter_ns()
            real_plain([st], ctx)
            stamp("  dir " + type(st).__name__, t0, time.perf_counter_ns())

    create.run_steps, dirsteps.run_plain_steps = run_steps, run_plain_steps  # type: ignore[assignment]
    for name, label in (("_start_guard", "  spawn thread: _start_guard"),  # before the C thread
                        ("start_guard", "    start_guard (C clone, maps)"),
                        ("loopback_up", "  lo up"),
                        ("_guard_started", "  C thread done: the loop hears of it"),  # with the C thread
                        ("Starting", "  C thread started (spec, eventfd, thread)"),
                        ("open_ns_fds", "  open ns fds"), ("send_mounts", "  send mounts")):
        if hasattr(handoff, name):
            setattr(handoff, name, timed(label, getattr(handoff, name)))
    handoff.wait_ready = timed_async("  wait ready", handoff.wait_ready)
    for name in ("_cgroup_for",):
        setattr(service.RockerService, name, timed(name, getattr(service.RockerService, name)))
    service.parse_request = timed("parse request", service.parse_request)
    service.entry.entry_reply = timed("entry reply", service.entry.entry_reply)
    real_create = service.RockerService.create

    async def create_timed(self: Any, call: Any) -> Any:
        with lock:
            row.clear()
        origin[0] = t0 = time.perf_counter_ns()
        try:
            return await real_create(self, call)
        finally:
            stamp("total", t0, time.perf_counter_ns())
            with lock:
                line = json.dumps(row)
            with open(out_path, "a") as f:
                f.write(line + "\n")

    service.RockerService.create = create_timed  # type: ignore[method-assign]


def daemon_main(argv: list[str]) -> int:
    _patch_daemon(os.environ[OUT_ENV])
    from rockerd.main import main

    return main(argv)


def report(rows: list[dict[str, Any]]) -> str:
    out = []
    for kind, joined in (("first", False), ("second", True)):
        mine = [r for r in rows if r.get("joined") is joined]
        starts: dict[str, list[float]] = defaultdict(list)
        ends: dict[str, list[float]] = defaultdict(list)
        where: dict[str, str] = {}
        for r in mine:
            for k, v in r.items():
                if isinstance(v, list):
                    starts[k].append(v[0])
                    ends[k].append(v[1])
                    where[k] = v[2]
        out.append(f"{kind} rocker on a data dir, {len(mine)} creates; median ms from the Create's arrival:")
        out.append(f"  {'part':42} {'start':>7} {'end':>7} {'took':>7}  thread")
        for k in sorted(starts, key=lambda k: statistics.median(starts[k])):
            s, e = statistics.median(starts[k]), statistics.median(ends[k])
            took = statistics.median([b - a for a, b in zip(starts[k], ends[k], strict=True)])
            out.append(f"  {k:42} {s:7.3f} {e:7.3f} {took:7.3f}  {where[k]}")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--daemon"]:
        return daemon_main(argv[1:])
    from . import datadir

    p = argparse.ArgumentParser(prog="python3 -m bench.timeline", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--samples", type=int, default=30)
    p.add_argument("--rockerd-arg", action="append", default=[], metavar="ARG")
    a = p.parse_args(argv)
    with tempfile.NamedTemporaryFile(prefix="rocker-timeline-", suffix=".jsonl", dir="/tmp") as tf:
        os.environ[OUT_ENV] = tf.name
        datadir.measure(a.samples, datadir.DEFAULT_OVERLAYS, rockerd_args=tuple(a.rockerd_arg),
                        module=("bench.timeline", "--daemon"))
        rows = [json.loads(x) for x in Path(tf.name).read_text().splitlines()]
    print(report(rows[-2 * a.samples:]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
