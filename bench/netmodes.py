"""`python3 -m bench.netmodes`: create and start p50 of network modes side by side, strictly alternating.

One rockerd; each sample runs one measured cycle (bench/ours.py: the first rocker of its package, the
app blocks until the benchmark has its stamps, teardown waited for) per mode, the modes' order flipped
every sample (none host, host none, ...), so both see the same noise. Prints per mode rockerd's own create
p50 (its log line), the client's round trip and the start (first line of the app, and its main()), and the
median of the paired differences against the first mode. Root only; hold the test lock while it runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
from pathlib import Path
from typing import Any

from . import ours
from .quick import bench_setup

KEYS = ("create_daemon_ms", "create_client_ms", "start_first_line_ms", "start_exec_ms")


def measure(modes: list[str], samples: int, warm: bool,
            rockerd_args: tuple[str, ...] = ()) -> dict[str, list[dict[str, Any]]]:
    rows: dict[str, list[dict[str, Any]]] = {m: [] for m in modes}
    with bench_setup("netmodes", rockerd_args) as s:
        setups = {m: dataclasses.replace(s, network=m) for m in modes}
        holder = ours.hold_one(s, "holder") if warm else None
        try:
            for m in modes:  # warm-up
                ours.measured_cycle(setups[m], loop_goes=not warm)
            for i in range(samples):
                for m in (modes if i % 2 == 0 else modes[::-1]):
                    r = ours.measured_cycle(setups[m], loop_goes=not warm)
                    rows[m].append(r if r is not None else {})
        finally:
            if holder is not None:
                holder.release()
        created = s.daemon.read_log()
        if s.errors:
            print("errors:", *s.errors[:5], sep="\n  ", file=sys.stderr)
    for m in modes:
        for r in rows[m]:
            r["create_daemon_ms"] = created.get(r.get("name", ""))
    return rows


def report(rows: dict[str, list[dict[str, Any]]]) -> str:
    modes = list(rows)
    ref = modes[0]
    out = ["| mode | " + " | ".join(f"{k.removesuffix('_ms')} p50 ms" for k in KEYS) + " | samples |",
           "|---" * (len(KEYS) + 2) + "|"]
    for m in modes:
        cells = []
        for k in KEYS:
            v = [r[k] for r in rows[m] if r.get(k) is not None]
            cells.append(f"{statistics.median(v):.2f}" if v else "-")
        out.append(f"| {m} | " + " | ".join(cells) + f" | {len(rows[m])} |")
    for m in modes[1:]:
        cells = []
        for k in KEYS:
            d = [x[k] - y[k] for x, y in zip(rows[m], rows[ref], strict=True)
                 if x.get(k) is not None and y.get(k) is not None]
            cells.append(f"{statistics.median(d):+.2f}" if d else "-")
        out.append(f"| {m} - {ref}, paired median | " + " | ".join(cells) + " | |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m bench.netmodes", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--modes", default="none,host", help="comma-separated network modes (the first: reference)")
    p.add_argument("--samples", type=int, default=150, help="cycles per mode")
    p.add_argument("--warm", action="store_true", help="keep the package mounted by another rocker meanwhile")
    p.add_argument("--rockerd-arg", action="append", default=[], metavar="ARG",
                   help="extra argument for the benchmark's rockerd (repeatable; e.g. --rockerd-arg=--cgroups=none)")
    p.add_argument("--out", type=Path, default=None, help="JSON of every cycle")
    a = p.parse_args(argv)
    rows = measure(a.modes.split(","), a.samples, a.warm, tuple(a.rockerd_arg))
    if a.out:
        a.out.write_text(json.dumps(rows) + "\n")
    print(report(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
