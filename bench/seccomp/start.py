"""`python -m bench.seccomp.start`: start p50 with and without the syscall filter, in one run.

The same rockerd, package and launcher (Python + Exec app, package kept mounted by another
rocker: the like-for-like case of docs/benchmarks.md) start apps under `--seccomp default` and
`unconfined` in interleaved, shuffled rounds, beside the C floor (the anchor kit's `limit full`:
its create + enter_run phases are its start). Pooled medians; ratios to the C floor.
Root only; holds nothing of the test lock itself (wrap it: docs/testing.md).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import sys
import tempfile
from pathlib import Path
from typing import Any

from .. import ours, proc
from ..anchors import Anchors, find_kit
from ..daemon import BenchDaemon
from ..run import DEFAULT_OVERLAYS, REPO, build_package, cleanup, log
from ..stats import median_of, ratio

PROFILES = ("default", "unconfined")


@dataclasses.dataclass
class FilteredSetup(ours.Setup):
    """bench's Setup whose requests name a seccomp profile."""

    seccomp: str = "default"

    def request(self, label: str, pkg: Path | None = None) -> Any:
        req = super().request(label, pkg)
        req.seccomp = self.seccomp
        return req


def _starts(s: FilteredSetup, n: int) -> list[float]:
    """n Exec starts (enter_rocker -> the app's main()), another rocker holding the package meanwhile."""
    holder = ours.hold_one(s, "holder")
    try:
        return [r["start_exec_ms"] for r in ours.exec_start_cycles(s, n)]
    finally:
        if holder is not None:
            holder.release()


def run(a: argparse.Namespace) -> dict[str, Any]:
    if os.geteuid() != 0:
        raise SystemExit("bench.seccomp.start: run as root")
    workdir = Path(tempfile.mkdtemp(prefix="rocker-bench-seccomp-"))
    workdir.chmod(0o755)
    daemons: list[BenchDaemon] = []
    samples: dict[str, list[float]] = {p: [] for p in (*PROFILES, "floor")}
    rounds: dict[str, list[float | None]] = {p: [] for p in samples}
    out: dict[str, Any] = {}
    try:
        pkg = build_package(workdir, "zstd")
        daemon = BenchDaemon(workdir, REPO, max_rockers=64)
        daemons.append(daemon)
        daemon.start()
        os.environ["ROCKER_SOCKET"] = daemon.socket
        base = FilteredSetup(workdir, pkg, str(workdir / "exec"), list(DEFAULT_OVERLAYS), a.uid, a.uid, daemon,
                             proc.NsWatch())
        setups = {p: dataclasses.replace(base, seccomp=p, errors=base.errors) for p in PROFILES}
        kit = a.kit.resolve() if a.kit else find_kit(REPO)
        anchors = None
        if kit is not None and (kit / "src" / "limit.c").is_file():
            anchors = Anchors(kit, workdir / "anchor", log)
            anchors.build()
        else:
            log("no anchor kit (--kit): no C floor")
        for p in PROFILES:  # warm-up, not counted
            _starts(setups[p], 3)
        for rnd in range(a.rounds):
            items = [*PROFILES, *(["floor"] if anchors else [])]
            random.shuffle(items)
            for item in items:
                if item == "floor":
                    assert anchors is not None
                    f = anchors.floor(a.cycles)
                    got = [c + e for c, e in zip(f["create"], f["enter_run"], strict=True)]
                else:
                    got = _starts(setups[item], a.cycles)
                samples[item] += got
                rounds[item].append(median_of(got, 3))
            log(f"round {rnd + 1}/{a.rounds}: " + ", ".join(f"{k} {v[-1]}" for k, v in rounds.items() if v))
        p50 = {k: median_of(v, 3) for k, v in samples.items()}
        out = {"p50_ms": p50, "round_p50_ms": rounds, "n": {k: len(v) for k, v in samples.items()},
               "filter_cost_ms": None if None in (p50["default"], p50["unconfined"])
               else round(p50["default"] - p50["unconfined"], 3),  # type: ignore[operator]
               "ratio_to_floor": {p: ratio(p50[p], p50["floor"]) for p in PROFILES},
               "errors": base.errors}
    finally:
        out["leftovers"] = cleanup(workdir, daemons, keep=False)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.seccomp.start", description=__doc__)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--cycles", type=int, default=20, help="starts per profile (and C floor cycles) per round")
    ap.add_argument("--uid", type=int, default=1000, help="the apps' uid (default 1000)")
    ap.add_argument("--kit", type=Path, help="anchor kit (default: ../shared/bench next to the repo)")
    a = ap.parse_args(argv)
    res = run(a)
    json.dump(res, sys.stdout, indent=1)
    print()
    return 1 if res.get("leftovers") or res.get("errors") else 0


if __name__ == "__main__":
    raise SystemExit(main())
