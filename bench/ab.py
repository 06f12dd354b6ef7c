"""`python3 -m bench.ab`: the same benchmark on two or more trees (or settings), alternating, as ratios to
the C floor of the same run.

Each arm is a checkout with its own .venv (`--arm NAME=DIR`, optionally `--arm-args NAME='...'` for
extra `python -m bench` arguments of that arm). Every round runs `python -m bench` once per arm, in a
rotated order (A B, B A, ... so no arm always goes first), the whole round under the test lock
(/tmp/rocker-tests.lock) so the suite of other checkouts does not run meanwhile and the arms of a round
see the same machine; the lock is taken per round (keep a round under ~3 minutes), not for the whole
A/B. A run measures its own C floor, so each figure is divided by the floor of the same run before runs
are compared: the machine's drift between runs cancels.

Output: per arm and series the median over runs of the run's p50 (ms or KiB) and of its ratio to the
floor; per arm against the first arm, the median and range of the paired per-round quotient of those
ratios (1.00 = same cost). JSON of everything in --out, markdown on stdout.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .report import _get

LOCK = "/tmp/rocker-tests.lock"


def _guard_pss(fig: dict[str, Any]) -> float | None:
    levels = [m for k, m in (fig.get("memory") or {}).items() if k != "0"]
    return levels[-1]["guard_pss_kib_p50"] if levels else None


def _floor_pss(anc: dict[str, Any]) -> float | None:
    return _get(anc, "floor_guard_pss", "guard_pss_kib_p50")


# series: name -> (our figure from result["figures"], its floor from result["anchors"])
Getter = Callable[[dict[str, Any]], Any]
SERIES: dict[str, tuple[Getter, Getter]] = {
    "create_daemon first rocker": (lambda f: _get(f, "create_daemon_ms", "p50"),
                                   lambda a: _get(a, "floor_c1", "create", "p50")),
    "create_daemon package mounted": (lambda f: _get(f, "warm", "create_daemon_ms", "p50"),
                                      lambda a: _get(a, "floor_shared_c1", "create", "p50")),
    "start package mounted (callable)": (lambda f: _get(f, "warm", "start_exec_ms", "p50"),
                                         lambda a: _get(a, "floor_shared_c1", "total", "p50")),
    "start package mounted (Exec)": (lambda f: _get(f, "exec_app", "warm", "start_exec_ms", "p50"),
                                     lambda a: _get(a, "floor_shared_c1", "total", "p50")),
    "start first rocker (Exec)": (lambda f: _get(f, "exec_app", "cold", "start_exec_ms", "p50"),
                                  lambda a: _get(a, "floor_c1", "total", "p50")),
    "teardown": (lambda f: _get(f, "teardown_ms", "p50"), lambda a: _get(a, "floor_c1", "teardown", "p50")),
    "guard PSS KiB": (_guard_pss, _floor_pss),
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python3 -m bench.ab", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arm", action="append", required=True, metavar="NAME=DIR",
                   help="a checkout with its .venv (repeatable; the first is the reference)")
    p.add_argument("--arm-args", action="append", default=[], metavar="NAME=ARGS",
                   help="extra `python -m bench` arguments of one arm (shell words)")
    p.add_argument("--rounds", type=int, default=6, help="rounds: one run per arm each (default 6)")
    p.add_argument("--bench-args", default="--rounds 2 --cycles 30 --concurrency 1 --tput-cycles 4 --live 50 "
                   "--live-samples 3 --settle 2 --no-c-client --alt-n 10",
                   help="`python -m bench` arguments of every run (kept short: each run holds the test lock)")
    p.add_argument("--kit", default="/work/shared/bench", help="the anchor kit (the C floor)")
    p.add_argument("--out", type=Path, required=True, help="directory for each run's JSON and the summary")
    p.add_argument("--run-timeout", type=int, default=240, help="seconds one run may take")
    a = p.parse_args(argv)
    a.arms = dict(x.split("=", 1) for x in a.arm)
    a.extra = {k: shlex.split(v) for k, v in (x.split("=", 1) for x in a.arm_args)}
    if len(a.arms) < 2 or a.rounds < 1:
        p.error("at least two arms and one round")
    return a


def _supports(tree: Path, flag: str) -> bool:
    return flag in (tree / "bench" / "run.py").read_text()


def run_one(a: argparse.Namespace, name: str, rnd: int) -> Path:
    tree = Path(a.arms[name]).resolve()
    out = a.out / f"{name}-r{rnd}.json"
    args = [*shlex.split(a.bench_args), "--kit", a.kit, "--out", str(out), *a.extra.get(name, [])]
    if _supports(tree, "--no-network-series") and "--no-network-series" not in args:
        args.append("--no-network-series")  # an older tree has no per-mode series to skip
    cmd = ["timeout", "-k", "10", str(a.run_timeout), str(tree / ".venv/bin/python"), "-m", "bench", *args]
    t0 = time.monotonic()
    r = subprocess.run(cmd, cwd=tree, capture_output=True, text=True, check=False)
    (a.out / f"{name}-r{rnd}.log").write_text(r.stderr + r.stdout)
    print(f"[ab {time.strftime('%H:%M:%S')}] round {rnd + 1} {name}: rc {r.returncode}, "
          f"{time.monotonic() - t0:.0f} s", file=sys.stderr, flush=True)
    if r.returncode != 0:
        raise SystemExit(f"{name} round {rnd + 1} failed ({r.returncode}): {r.stderr.strip()[-800:]}")
    return out


def figures_of(path: Path) -> dict[str, dict[str, float | None]]:
    d = json.loads(path.read_text())
    out: dict[str, dict[str, float | None]] = {}
    for s, (ours, floor) in SERIES.items():
        v, f = ours(d["figures"]), floor(d.get("anchors") or {})
        out[s] = {"value": v, "floor": f, "ratio": None if v is None or not f else v / f}
    return out


def _med(xs: list[float]) -> float | None:
    return statistics.median(xs) if xs else None


def summarize(a: argparse.Namespace, runs: dict[str, list[dict[str, dict[str, float | None]]]]) -> dict[str, Any]:
    names = list(a.arms)
    ref = names[0]
    out: dict[str, Any] = {"arms": a.arms, "extra": a.extra, "rounds": a.rounds, "bench_args": a.bench_args,
                           "series": {}}
    for s in SERIES:
        row: dict[str, Any] = {}
        for n in names:
            vals = [r[s]["value"] for r in runs[n] if r[s]["value"] is not None]
            rats = [r[s]["ratio"] for r in runs[n] if r[s]["ratio"] is not None]
            row[n] = {"value_median": _med(vals), "ratio_median": _med(rats), "values": vals, "ratios": rats}
            if n != ref:
                paired = [x[s]["ratio"] / y[s]["ratio"] for x, y in zip(runs[n], runs[ref], strict=True)
                          if x[s]["ratio"] and y[s]["ratio"]]
                row[n]["vs_ref"] = {"median": _med(paired), "min": min(paired, default=None),
                                    "max": max(paired, default=None), "paired": paired}
        out["series"][s] = row
    return out


def render(summary: dict[str, Any]) -> str:
    names = list(summary["arms"])
    ref = names[0]

    def f(x: float | None, fmt: str = ".2f") -> str:
        return "-" if x is None else format(x, fmt)

    head = "| series | " + " | ".join(f"{n} p50 | {n} / floor" for n in names)
    head += " | " + " | ".join(f"{n} vs {ref} (median, range)" for n in names[1:]) + " |"
    lines = [head, "|---" * (1 + 2 * len(names) + len(names) - 1) + "|"]
    for s, row in summary["series"].items():
        cells = [f"{f(row[n]['value_median'])} | {f(row[n]['ratio_median'])}x" for n in names]
        for n in names[1:]:
            v = row[n]["vs_ref"]
            cells.append(f"{f(v['median'], '.3f')} ({f(v['min'], '.2f')}..{f(v['max'], '.2f')})")
        lines.append(f"| {s} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    names = list(a.arms)
    runs: dict[str, list[dict[str, dict[str, float | None]]]] = {n: [] for n in names}
    lock = os.open(LOCK, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        for rnd in range(a.rounds):
            order = names[rnd % len(names):] + names[:rnd % len(names)]
            fcntl.flock(lock, fcntl.LOCK_EX)  # the round's runs back to back, no other suite meanwhile
            try:
                for n in order:
                    runs[n].append(figures_of(run_one(a, n, rnd)))
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
    finally:
        os.close(lock)
    summary = summarize(a, runs)
    (a.out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    text = render(summary)
    (a.out / "summary.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
