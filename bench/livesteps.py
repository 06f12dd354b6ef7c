"""`python3 -m bench.livesteps --levels 0,100,1000`: what grows in a Create with N idle rockers alive, step by step.

bench.steptimes' per-step timers (and, in the network job, one per netlink request and sysctl) in a
rockerd that holds N idle rockers (bridged by default), the same cold create (first rocker of its
package; the idle rockers hold a copy) measured `--samples` times at each level and once more at 0
after all are released. Prints the median of each part per level and the ratio of the top level to
0 (pooled before and after). Root only; hold the test lock (1,000 live: about 2 minutes).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from . import steptimes

NET = "net: "


def _patch_network(note_to: str) -> None:
    """Timers on the bridged rocker's network job, one per request (run on its spawn thread)."""
    from rockerd.network import Network, netns, rtnl, veth

    lines: list[str] = []

    def note(label: str, t0: float) -> None:
        lines.append(json.dumps({NET + label: (time.perf_counter() - t0) * 1000}))

    real_attach = Network._attach

    def attach(self: Any, *a: Any) -> None:
        """The lines are written here, as root (the requests inside run as the app's uid)."""
        t0 = time.perf_counter()
        try:
            real_attach(self, *a)
        finally:
            note("whole attach (link + ports + record)", t0)
            with open(note_to, "a") as f:
                f.write("\n".join(lines) + "\n")
            lines.clear()

    real_batch, real_index, real_off, real_in = rtnl.Rtnl.batch, rtnl.Rtnl.link_index, veth.ipv6_off, netns.rtnl_in

    def batch(self: Any, requests: Any) -> None:
        t0 = time.perf_counter()
        try:
            real_batch(self, requests)
        finally:
            what = requests[0][0]
            note("veth pair (RTM_NEWLINK)" if what.startswith("veth") else
                 "inside batch (lo, eth0, addr, route)" if what == "lo up" else what.split()[0], t0)

    def link_index(self: Any, name: str) -> int:
        t0 = time.perf_counter()
        try:
            return real_index(self, name)
        finally:
            note(f"link index of {name}", t0)

    def ipv6_off(link: str) -> None:
        t0 = time.perf_counter()
        try:
            real_off(link)
        finally:
            note("host end disable_ipv6", t0)

    class _In:
        def __init__(self, *a: Any) -> None:
            self.cm = real_in(*a)

        def __enter__(self) -> Any:
            t0 = time.perf_counter()
            r = self.cm.__enter__()
            note("socket in the rocker's netns (setns + socket)", t0)
            return r

        def __exit__(self, *exc: Any) -> Any:
            return self.cm.__exit__(*exc)

    rtnl.Rtnl.batch, rtnl.Rtnl.link_index = batch, link_index  # type: ignore[method-assign]
    veth.ipv6_off, veth.rtnl_in = ipv6_off, _In  # type: ignore[assignment]
    Network._attach = attach  # type: ignore[method-assign]


def _patch_dir_waits(note_to: str) -> None:
    """Each wait of the dir steps' driver (the thread's job; a retry's, after an ending holder's end)."""
    from rockerd.create import dirsteps

    real = dirsteps.done_within
    count = [0]

    async def done_within(job: Any, timeout: float) -> bool:
        t0 = time.perf_counter()
        try:
            return await real(job, timeout)
        finally:
            count[0] += 1
            with open(note_to, "a") as f:
                f.write(json.dumps({f"{NET}dirs wait #{count[0]}": (time.perf_counter() - t0) * 1000}) + "\n")

    def reset(*a: Any) -> None:
        count[0] = 0

    dirsteps.done_within = done_within  # type: ignore[assignment]
    real_hd = dirsteps.HostDirs.execute

    async def execute(self: Any, ctx: Any) -> None:
        reset()
        await real_hd(self, ctx)

    dirsteps.HostDirs.execute = execute  # type: ignore[method-assign]


def daemon_main(argv: list[str]) -> int:
    out = os.environ[steptimes.OUT_ENV]
    steptimes._patch_daemon(out)
    _patch_network(out)
    _patch_dir_waits(out)
    from rockerd.main import main

    return main(argv)


def _rows(path: Path) -> list[dict[str, float]]:
    """The daemon's lines: a create's row, then the network job's lines folded into the row after them."""
    rows: list[dict[str, float]] = []
    pending: dict[str, float] = {}
    for line in path.read_text().splitlines():
        d = json.loads(line)
        if all(k.startswith(NET) for k in d):
            for k, v in d.items():
                pending[k] = pending.get(k, 0.0) + v
        else:
            d.update(pending)
            pending = {}
            rows.append(d)
    return rows


def driver(a: argparse.Namespace) -> int:
    from . import ours, proc
    from .quick import bench_setup

    levels = sorted(set(a.levels))
    top = max(levels)
    proc.raise_nofile(2 * top + 1024)
    args = ("--default-network", a.network, "--max-rockers", str(top + 64), "--max-rockers-per-uid", str(top + 64),
            *a.rockerd_arg)
    with tempfile.NamedTemporaryFile(prefix="rocker-livesteps-", suffix=".jsonl", dir="/tmp") as tf:
        out = Path(tf.name)
        os.environ[steptimes.OUT_ENV] = str(out)
        per: dict[str, list[dict[str, float]]] = {}
        with bench_setup("livesteps", args, ("bench.livesteps", "--daemon"), None, a.keep) as s0:
            hold_pkg = s0.workdir / "app-idle.squashfs"
            shutil.copyfile(s0.pkg, hold_pkg)
            s = dataclasses.replace(s0, hold_pkg=hold_pkg, network=a.network)
            hold_r, hold_w = os.pipe()

            def hold_app(_: object) -> None:
                os.dup2(hold_r, 0)
                os.execv(s.app_path, ["app", "w"])

            held: list[tuple[int, int | None]] = []

            def samples(label: str) -> None:
                ours.measured_cycle(s, "live")  # warm-up: the data dir exists after the first one
                out.write_text("")
                for _ in range(a.samples):
                    ours.measured_cycle(s, "live")
                    time.sleep(a.pause / 1000)
                per[label] = _rows(out)
                print(f"  {label}: {len(per[label])} creates", file=sys.stderr)

            try:
                for level in levels:
                    t = time.monotonic()
                    while len(held) < level:
                        res = ours.enter_rocker(s.request(f"h{len(held)}", s.hold_pkg), hold_app)
                        if not res.ok:
                            raise SystemExit(f"idle rocker #{len(held)}: {res.err_no.name}: {res.detail}")
                        held.append((res.app_pid, proc.open_pidfd(res.guard_pid)))
                    print(f"  {level} live (built in {time.monotonic() - t:.1f} s)", file=sys.stderr)
                    time.sleep(a.settle)
                    samples(str(level))
                os.close(hold_w)
                hold_w = -1
                for pid, fd in held:
                    os.waitpid(pid, 0)
                    if fd is not None:
                        proc.wait_pidfd(fd, 30)
                        os.close(fd)
                held.clear()
                time.sleep(a.settle)
                if levels[0] == 0:
                    samples("0_after")
            finally:
                if hold_w >= 0:
                    os.close(hold_w)
                os.close(hold_r)
                for pid, fd in held:
                    os.waitpid(pid, 0)
                    if fd is not None:
                        proc.wait_pidfd(fd, 30)
                        os.close(fd)
    report(per, levels)
    return 0


def report(per: dict[str, list[dict[str, float]]], levels: list[int]) -> None:
    if "0_after" in per:
        per["0_pooled"] = per["0"] + per["0_after"]
    cols = [str(x) for x in levels] + [c for c in ("0_after", "0_pooled") if c in per]
    meds: dict[str, dict[str, float]] = defaultdict(dict)
    for c in cols:
        parts: dict[str, list[float]] = defaultdict(list)
        for row in per[c]:
            for k, v in row.items():
                parts[k].append(v)
        for k, v in parts.items():
            meds[k][c] = statistics.median(v)
    base = "0_pooled" if "0_pooled" in per else cols[0]
    top = str(levels[-1])
    print(f"median ms per create, by live rockers; last column: {top} live - {base}")
    print(f"  {'part':55}" + "".join(f"{c:>10}" for c in cols) + f"{'grows':>10}")
    for k, m in sorted(meds.items(), key=lambda kv: -kv[1].get(top, 0)):
        grow = m.get(top, 0) - m.get(base, 0)
        print(f"  {k[:55]:55}" + "".join(f"{m.get(c, float('nan')):10.3f}" for c in cols) + f"{grow:+10.3f}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--daemon"]:
        return daemon_main(argv[1:])
    p = argparse.ArgumentParser(prog="python3 -m bench.livesteps", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--levels", type=lambda v: [int(x) for x in v.split(",")], default=[0, 100, 1000])
    p.add_argument("--samples", type=int, default=40)
    p.add_argument("--network", default="bridge", choices=("none", "host", "bridge"))
    p.add_argument("--settle", type=float, default=2.0, help="seconds after building a level")
    p.add_argument("--pause", type=float, default=0.0, help="ms between samples")
    p.add_argument("--rockerd-arg", action="append", default=[], metavar="ARG")
    p.add_argument("--keep", action="store_true")
    return driver(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
