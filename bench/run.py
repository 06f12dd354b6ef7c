"""`python3 -m bench`: measure rocker against its anchors, in one run, on this machine.

Rounds interleave every benchmark in shuffled order (the VM is noisy); p50/p99
are pooled over all rounds, throughput is the median of the per-round rates.
The idle-memory phase (N rockers alive) runs once, after the rounds.
Results: a table on stdout, JSON in --out. See docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import cclient, ours, proc
from .anchors import Anchors, find_kit
from .daemon import BenchDaemon
from .report import OTHER_LAUNCHERS, compare, render
from .stats import median_of, summary

REPO = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve().parent
DEFAULT_OVERLAYS = ["/usr", "/var", "/etc", "/home", "/root"]  # the anchors' 5 dirs

START_SERIES = ("start_exec_ms", "enter_return_ms", "create_daemon_ms", "teardown_guard_ms")
NET_MODES = ("none", "host", "bridge")
# the benchmark's bridge: addresses from the benchmarking range, a name of its own (no packet leaves it)
BRIDGE_ARGS = ("--bridge-subnet", "198.18.64.0/18", "--bridge-name", "rkbench0", "--bridge-dns", "198.18.64.1")
REF_BRIDGE_ARGS = ("--bridge-subnet", "198.18.128.0/18", "--bridge-name", "rkbench1", "--bridge-dns", "198.18.128.1")
CC, PX = "c_client:", "exec_app:"  # series prefixes: a launcher's figure key and a colon (report.OTHER_LAUNCHERS)
CYCLE_SERIES = ("start_first_line_ms", "start_exec_ms", "enter_return_ms", "create_client_ms", "create_daemon_ms",
                "client_before_wire_ms", "reply_to_first_line_ms", "teardown_guard_ms", "teardown_ms",
                "teardown_forgot_ms")


def _ints(text: str) -> list[int]:
    try:
        vals = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not vals or any(v < 1 for v in vals):
        raise argparse.ArgumentTypeError("values must be >= 1")
    return vals


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python3 -m bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    p.add_argument("--cycles", type=int, default=20, help="measured start/create/teardown cycles per round")
    p.add_argument("--tput-cycles", type=int, default=32,
                   help="whole cycles per round and concurrency level (at least 2 per launcher)")
    p.add_argument("--concurrency", type=_ints, default=[1, 2, 8, 32], metavar="C,C,...")
    p.add_argument("--live", type=_ints, default=[100, 1000], metavar="N,N,...",
                   help="idle rockers kept alive for the memory and create-at-N-live figures")
    p.add_argument("--live-samples", type=int, default=30, help="create samples at each live level")
    p.add_argument("--settle", type=float, default=3.0, help="seconds idle rockers settle before memory is read")
    p.add_argument("--floor-n", type=int, default=100, help="C floor cycles per anchor run and round")
    p.add_argument("--alt-n", type=int, default=20, help="bwrap / crun runs per round")
    p.add_argument("--no-anchors", action="store_true", help="skip the anchors even if the kit is present")
    p.add_argument("--no-c-client", action="store_true",
                   help="skip the series launched through the C client (clients/c)")
    p.add_argument("--kit", type=Path, default=None, help="anchor kit (default: ../shared/bench next to the repo)")
    p.add_argument("--overlay", action="append", default=None, metavar="DIR",
                   help=f"host dir to overlay (repeatable; default {' '.join(DEFAULT_OVERLAYS)})")
    p.add_argument("--uid", type=int, default=1000)
    p.add_argument("--gid", type=int, default=1000)
    p.add_argument("--comp", default="gzip", help="package compression (default gzip, as the floor's package)")
    p.add_argument("--seed", type=int, default=1, help="seed of the per-round shuffle")
    p.add_argument("--out", type=Path, default=None,
                   help="JSON results (default bench/results/rocker-bench-<time>.json)")
    p.add_argument("--markdown", type=Path, default=None, help="also write the tables as markdown here")
    p.add_argument("--tmp", default="/tmp", help="parent of the temporary work dir")
    p.add_argument("--network", choices=("none", "host", "bridge"), default=None,
                   help="network mode of every rocker of the run but the per-mode series (default: rockerd's, none)")
    p.add_argument("--seccomp", choices=("default", "complain", "unconfined"), default=None,
                   help="syscall filter profile of every rocker (default: rockerd's default filter)")
    p.add_argument("--rockerd-arg", action="append", default=[], metavar="ARG",
                   help="extra argument for the benchmark's rockerd (repeatable; e.g. --rockerd-arg=--cgroups=none)")
    p.add_argument("--no-network-series", action="store_true",
                   help="skip the cycles with network none, host and bridge (net_MODE: series)")
    p.add_argument("--keep", action="store_true", help="keep the work dir (logs, packages) for inspection")
    a = p.parse_args(argv)
    if a.rounds < 1 or a.cycles < 1 or a.tput_cycles < 1 or a.live_samples < 1:
        p.error("--rounds, --cycles, --tput-cycles and --live-samples must be >= 1")
    return a


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def build_package(workdir: Path, comp: str) -> Path:
    """Our package: bench/app.c, static, as bin/app in a squashfs."""
    root = workdir / "pkgroot"
    (root / "bin").mkdir(parents=True)
    root.chmod(0o755)
    (root / "bin").chmod(0o755)
    cc = shutil.which("cc") or shutil.which("gcc") or "cc"
    app = root / "bin" / "app"
    _run([cc, "-static", "-Os", *cclient.WARN, "-o", str(app), str(HERE / "app.c")])
    if shutil.which("strip"):
        _run(["strip", str(app)])
    pkg = workdir / "app.squashfs"
    _run(["mksquashfs", str(root), str(pkg), "-comp", comp, "-noappend", "-quiet", "-all-root"])
    return pkg


def _run(cmd: list[str]) -> None:
    r = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({r.returncode}): {(r.stderr or r.stdout).strip()[-500:]}")


def versions(anchors: Anchors | None) -> dict[str, str]:
    import rockerd

    v = {"kernel": platform.release(), "cpus": str(os.cpu_count()), "python": platform.python_version(),
         "rocker": rockerd.__version__}
    try:
        v["debian"] = Path("/etc/debian_version").read_text().strip()
    except OSError:
        pass
    r = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                       check=False)
    if r.returncode == 0:
        v["commit"] = r.stdout.strip()
    if anchors:
        v.update(anchors.versions)
    return v


class Bench:
    def __init__(self, a: argparse.Namespace) -> None:
        self.a = a
        self.series: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
        self.rates: dict[str, list[float]] = defaultdict(list)
        self.errors: dict[str, int] = defaultdict(int)

    def add(self, name: str, rnd: int, values: list[float | None]) -> None:
        self.series[name][rnd] += [v for v in values if v is not None]

    def rounds_of(self, name: str) -> list[list[float]]:
        return [v for _, v in sorted(self.series.get(name, {}).items())]

    def summ(self, name: str) -> dict[str, Any] | None:
        return summary(self.rounds_of(name))

    # ------------------------------------------------------------ one item of a round
    def cycle_item(self, s: ours.Setup, rnd: int, warm: bool = False, prefix: str = "") -> None:
        """Measured cycles one at a time; warm: another rocker of the package stays alive meanwhile."""
        rows = self._rows_with_create(s, warm, lambda: [
            r for r in (ours.measured_cycle(s, loop_goes=not warm) for _ in range(self.a.cycles)) if r is not None])
        prefix = prefix or ("warm:" if warm else "")
        for key in CYCLE_SERIES:
            self.add(prefix + key, rnd, [r.get(key) for r in rows])
        self.errors[prefix + "cycle"] += self.a.cycles - len(rows)
        self.errors[prefix + "teardown_timeout"] += sum(1 for r in rows if r.get("teardown_ms") is None)

    @staticmethod
    def _rows_with_create(s: ours.Setup, warm: bool, run: Callable[[], list[dict[str, Any]]]) -> list[dict[str, Any]]:
        """run()'s rows, each with rockerd's own create time (from its log, by guard name)."""
        holder = ours.hold_one(s, "holder") if warm else None
        try:
            rows = run()
        finally:
            if holder is not None:
                holder.release()
        created = s.daemon.read_log()
        for r in rows:
            r["create_daemon_ms"] = created.get(r["name"])
        return rows

    def tput_item(self, s: ours.Setup, rnd: int, conc: int) -> None:
        self._add_tput("", s, rnd, conc, ours.throughput(s, conc, max(self.a.tput_cycles, 2 * conc)))

    def c_tput_item(self, s: ours.Setup, launcher: Path, rnd: int, conc: int) -> None:
        self._add_tput(CC, s, rnd, conc, cclient.throughput(s, launcher, conc, max(self.a.tput_cycles, 2 * conc)))

    def exec_tput_item(self, s: ours.Setup, rnd: int, conc: int) -> None:
        self._add_tput(PX, s, rnd, conc, ours.throughput(s, conc, max(self.a.tput_cycles, 2 * conc), exec_app=True))

    def _add_tput(self, prefix: str, s: ours.Setup, rnd: int, conc: int, res: dict[str, Any]) -> None:
        """prefix "": Python launchers, callable app; PX: the same with an Exec app; CC: C launchers."""
        created = s.daemon.read_log()
        rows = res["rows"]
        self.add(f"{prefix}cycle_c{conc}_ms", rnd, [r["cycle_ms"] for r in rows])
        self.add(f"{prefix}create_client_c{conc}_ms", rnd, [r.get("create_client_ms") for r in rows])
        self.add(f"{prefix}create_daemon_c{conc}_ms", rnd, [created.get(r["name"]) for r in rows])
        self.add(f"{prefix}guard_after_exit_c{conc}_ms", rnd, [r["guard_after_exit_ms"] for r in rows])
        if res["cycles"]:
            self.rates[f"{prefix}c{conc}"].append(res["cycles_per_s"])
        self.errors[f"{prefix}throughput_c{conc}"] += res["errors"]

    def c_start_item(self, s: ours.Setup, launcher: Path, rnd: int, warm: bool) -> None:
        """C client start latency, with the package kept mounted by another rocker (as bwrap's is)
        or each the first rocker of its package."""
        self._add_start(CC, rnd, warm, self._rows_with_create(
            s, warm, lambda: cclient.start_cycles(s, launcher, self.a.cycles, cold=not warm)))

    def exec_start_item(self, s: ours.Setup, rnd: int, warm: bool) -> None:
        """The same with a Python launcher and an Exec app (no fork of the launcher)."""
        self._add_start(PX, rnd, warm, self._rows_with_create(
            s, warm, lambda: ours.exec_start_cycles(s, self.a.cycles, cold=not warm)))

    def _add_start(self, prefix: str, rnd: int, warm: bool, rows: list[dict[str, Any]]) -> None:
        which = "warm:" if warm else "cold:"
        for key in START_SERIES:
            self.add(prefix + which + key, rnd, [r.get(key) for r in rows])
        self.errors[prefix + which + "start"] += self.a.cycles - len(rows)

    def floor_item(self, anchors: Anchors, rnd: int, key: str, conc: int, shared: bool) -> None:
        res = anchors.floor(self.a.floor_n, conc, shared)
        for phase in ("total", "create", "enter_run", "teardown"):
            self.add(f"{key}_{phase}", rnd, res.get(phase, []))
        self.rates[key].append(res["cycles_per_s"])

    def alt_item(self, anchors: Anchors, rnd: int) -> None:
        for name, samples in anchors.alt(self.a.alt_n, 3, rnd).items():
            self.add(name, rnd, samples)

    # ------------------------------------------------------------ figures
    def figures(self, hold: dict[str, Any] | None, concs: list[int]) -> dict[str, Any]:
        fig: dict[str, Any] = {k: self.summ(k) for k in CYCLE_SERIES}
        fig["warm"] = {k: self.summ("warm:" + k) for k in CYCLE_SERIES}
        tput: dict[str, Any] = {}
        for c in concs:
            rates = self.rates.get(f"c{c}", [])
            tput[str(c)] = {"cycles_per_s": median_of(rates, 2), "round_rates": rates,
                            "cycle_ms": self.summ(f"cycle_c{c}_ms"),
                            "create_client_ms": self.summ(f"create_client_c{c}_ms"),
                            "create_daemon_ms": self.summ(f"create_daemon_c{c}_ms"),
                            "guard_after_exit_ms": self.summ(f"guard_after_exit_c{c}_ms"),
                            "errors": self.errors.get(f"throughput_c{c}", 0)}
        fig["throughput"] = tput
        for key, _ in OTHER_LAUNCHERS:
            p = key + ":"
            if not any(k.startswith(p) for k in self.series):
                continue
            other = {str(c): {"cycles_per_s": median_of(self.rates.get(f"{p}c{c}", []), 2),
                              "round_rates": self.rates.get(f"{p}c{c}", []),
                              "cycle_ms": self.summ(f"{p}cycle_c{c}_ms"),
                              "create_daemon_ms": self.summ(f"{p}create_daemon_c{c}_ms"),
                              "guard_after_exit_ms": self.summ(f"{p}guard_after_exit_c{c}_ms"),
                              "errors": self.errors.get(f"{p}throughput_c{c}", 0)} for c in concs}
            fig[key] = {"warm": {k: self.summ(f"{p}warm:" + k) for k in START_SERIES},
                        "cold": {k: self.summ(f"{p}cold:" + k) for k in START_SERIES}, "throughput": other}
        if hold is not None:
            fig["memory"] = hold["levels"]
            fig["release_all"] = hold.get("release_all")
            keys = ("create_client_ms", "create_daemon_ms", "start_exec_ms", "teardown_guard_ms", "teardown_ms")
            for fkey in ("create_at_live", "create_at_live_ref"):
                by_level = hold.get(fkey, {})
                cal: dict[str, Any] = {}
                for label, rows in by_level.items():
                    cal[label] = {k: summary([[r[k] for r in rows if r.get(k) is not None]]) for k in keys}
                base = by_level.get("0", []) + by_level.get("0_after", [])
                cal["0_pooled"] = {k: summary([[r[k] for r in base if r.get(k) is not None]]) for k in keys}
                fig[fkey] = cal
        return fig

    def anchor_figures(self, anchors: Anchors | None, floor_pss: dict[str, Any] | None) -> dict[str, Any]:
        if anchors is None:
            return {}
        out: dict[str, Any] = {}
        for key in ("floor_c1", "floor_c2", "floor_shared_c1"):
            if key in self.rates:
                out[key] = {ph: self.summ(f"{key}_{ph}") for ph in ("total", "create", "enter_run", "teardown")}
                out[key]["cycles_per_s"] = median_of(self.rates[key], 2)
                out[key]["round_rates"] = self.rates[key]
        for key in ("bwrap_premounted", "bwrap_python", "crun"):
            if key in self.series:
                out[key] = self.summ(key)
        if floor_pss:
            out["floor_guard_pss"] = floor_pss
        out["skipped"] = anchors.skipped
        return out


def run(a: argparse.Namespace) -> dict[str, Any]:
    if os.geteuid() != 0:
        raise SystemExit("bench: run as root (rockerd builds namespaces and mounts)")
    for tool in ("mksquashfs",):
        if not shutil.which(tool):
            raise SystemExit(f"bench: {tool} is missing (apt-get install -y squashfs-tools)")
    if not (shutil.which("cc") or shutil.which("gcc")):
        raise SystemExit("bench: a C compiler is needed (apt-get install -y gcc libc6-dev)")
    concs = a.concurrency
    live = sorted(a.live)
    max_live = max(live)
    nofile = proc.raise_nofile(2 * max_live + 4 * max(concs) + 1024)
    if nofile < max_live + 256:
        log(f"RLIMIT_NOFILE is {nofile}: live levels above {nofile - 256} may fail (raise the hard limit)")
    workdir = Path(tempfile.mkdtemp(prefix="rocker-bench-", dir=a.tmp))
    workdir.chmod(0o755)  # the apps run as uid 1000 and must reach the exec dir
    log(f"work dir {workdir}")
    result: dict[str, Any] = {"args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()},
                              "workdir": str(workdir)}
    daemon: BenchDaemon | None = None
    daemons: list[BenchDaemon] = []
    nsw = proc.NsWatch()
    anchors: Anchors | None = None
    b = Bench(a)
    t_start = time.monotonic()
    try:
        pkg = build_package(workdir, a.comp)
        hold_pkg = workdir / "app-idle.squashfs"  # the same bytes, another package to rockerd
        shutil.copyfile(pkg, hold_pkg)
        daemon = BenchDaemon(workdir, REPO, max_rockers=max_live + 4 * max(concs) + 64,
                             extra=(*BRIDGE_ARGS, *a.rockerd_arg))
        daemons.append(daemon)
        daemon.start()
        os.environ["ROCKER_SOCKET"] = daemon.socket
        ours.install_wire_timer()
        s = ours.Setup(workdir, pkg, str(workdir / "exec"), a.overlay or DEFAULT_OVERLAYS, a.uid, a.gid, daemon, nsw,
                       hold_pkg, network=a.network, seccomp=a.seccomp)
        if not nsw.supported:
            log("this kernel has no namespace file handles: teardown waits for the loop device only")
        kit = None if a.no_anchors else (a.kit.resolve() if a.kit else find_kit(REPO))
        if kit is not None and (kit / "src" / "limit.c").is_file():
            log(f"anchors from {kit}: building into the work dir")
            anchors = Anchors(kit, workdir / "anchor", log)
            anchors.build()
            for why in anchors.skipped:
                log(f"anchor skipped: {why}")
        elif not a.no_anchors:
            log("anchor kit not found (../shared/bench): rocker's figures only")
        result["versions"] = versions(anchors)
        result["anchors_kit"] = str(kit) if anchors else None

        log("warm-up")
        for _ in range(2):
            ours.measured_cycle(s, "cycle")
        ours.throughput(s, 1, 2)
        launcher: Path | None = None
        if not a.no_c_client:
            launcher, why = cclient.build(workdir)
            if launcher is None:
                log(f"C client series skipped: {why}")
            else:
                cclient.throughput(s, launcher, 1, 2)
        if anchors:
            anchors.floor(10)
        s.errors.clear()
        daemon.read_log()

        items: list[tuple[str, Any]] = [("ours cycle", lambda r: b.cycle_item(s, r)),
                                        ("ours cycle, package mounted", lambda r: b.cycle_item(s, r, warm=True))]
        items.append(("ours Exec start, package mounted", lambda r: b.exec_start_item(s, r, True)))
        items.append(("ours Exec start, first rocker", lambda r: b.exec_start_item(s, r, False)))
        if not a.no_network_series:
            for mode in NET_MODES:
                ms = dataclasses.replace(s, network=mode)
                items.append((f"ours cycle, network {mode}", lambda r, ms=ms, mode=mode: b.cycle_item(
                    ms, r, prefix=f"net_{mode}:")))
        for c in concs:
            items.append((f"ours throughput c={c}", lambda r, c=c: b.tput_item(s, r, c)))
            items.append((f"ours Exec throughput c={c}", lambda r, c=c: b.exec_tput_item(s, r, c)))
        if launcher is not None:
            cl = launcher
            items.append(("C client start, package mounted", lambda r: b.c_start_item(s, cl, r, True)))
            items.append(("C client start, first rocker", lambda r: b.c_start_item(s, cl, r, False)))
            for c in concs:
                items.append((f"C client throughput c={c}", lambda r, c=c: b.c_tput_item(s, cl, r, c)))
        if anchors:
            an = anchors
            items += [("floor c=1", lambda r: b.floor_item(an, r, "floor_c1", 1, False)),
                      ("floor c=2", lambda r: b.floor_item(an, r, "floor_c2", 2, False)),
                      ("floor shared c=1", lambda r: b.floor_item(an, r, "floor_shared_c1", 1, True))]
            if an.alt_commands():
                items.append(("bwrap + crun", lambda r: b.alt_item(an, r)))
        for rnd in range(a.rounds):
            order = list(items)
            random.Random(a.seed * 1000 + rnd).shuffle(order)
            log(f"round {rnd + 1}/{a.rounds}: {', '.join(n for n, _ in order)}")
            for _, fn in order:
                fn(rnd)

        log(f"idle rockers: {', '.join(map(str, live))} live")
        floor_pss: dict[str, Any] = {}

        def at_level(level: int) -> dict[str, Any]:
            if anchors and level == live[0] and not floor_pss:
                floor_pss.update(anchors.hold_pss(level, a.settle))
            return {}

        ref = BenchDaemon(workdir / "ref", REPO, max_rockers=64, extra=(*REF_BRIDGE_ARGS, *a.rockerd_arg))
        daemons.append(ref)
        ref.start()
        hold = ours.hold_phase(s, live, a.live_samples, a.settle, at_level, log, ref)
        for key, d in (("create_at_live", daemon), ("create_at_live_ref", ref)):
            created = d.read_log()
            for rows in hold[key].values():
                for r in rows:
                    r["create_daemon_ms"] = created.get(r["name"])
        result["figures"] = b.figures(hold, concs)
        result["anchors"] = b.anchor_figures(anchors, floor_pss or None)
        result["comparisons"], result["targets"] = compare(result["figures"], result["anchors"], live[-1])
        result["errors"] = {"counts": dict(b.errors), "first": s.errors}
        result["network"] = {mode: {k: b.summ(f"net_{mode}:{k}") for k in ("create_daemon_ms", "start_first_line_ms")}
                             for mode in NET_MODES if not a.no_network_series}
        result["raw"] = {k: b.rounds_of(k) for k in sorted(b.series)}
    finally:
        result["leftovers"] = cleanup(workdir, daemons, a.keep)
        nsw.close()
        result["duration_s"] = round(time.monotonic() - t_start, 1)
    return result


def cleanup(workdir: Path, daemons: list[BenchDaemon], keep: bool) -> list[str]:
    """End what we started (by PID), check nothing is left, remove the work dir."""
    left: list[str] = []
    spared = {d.pid for d in daemons if d.proc is not None}
    # our own children besides the daemon: apps (CLONE_PARENT) and workers; zombies get reaped here
    for k in [k for k in proc.children(os.getpid()) if k not in spared]:
        try:
            os.waitpid(k, os.WNOHANG)
        except ChildProcessError:
            pass
    kids = [k for k in proc.children(os.getpid()) if k not in spared]
    left += [f"process {k} ({proc.comm(k)}) still running under the benchmark: killed" for k in kids]
    for k in kids:
        try:
            os.kill(k, signal.SIGKILL)
            os.waitpid(k, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
    for daemon in daemons:
        if daemon.proc is None:
            continue
        deadline = time.monotonic() + 15
        while daemon.proc.poll() is None and daemon.children() and time.monotonic() < deadline:
            time.sleep(0.05)
        if daemon.proc.poll() is None:
            for g in daemon.children():
                left.append(f"guard {g} ({proc.comm(g)}) alive 15 s after its apps: killed")
                try:
                    os.kill(g, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.2)
        rc = daemon.stop()
        if rc not in (0, None):
            left.append(f"rockerd exited with {rc}")
        if "Traceback" in daemon.log_text():
            left.append("rockerd logged a Traceback (see its log; rerun with --keep)")
    prefix = str(workdir) + "/"
    proc.poll_until(lambda: not proc.loops_backed_by(prefix), 10, step=0.01)
    left += [f"loop device still attached: {x}" for x in proc.loops_backed_by(prefix)]
    left += [f"mount still there: {x}" for x in proc.mounts_under(prefix)]
    if keep:
        log(f"kept the work dir {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return left


def default_out() -> Path:
    return HERE / "results" / f"rocker-bench-{time.strftime('%Y%m%d-%H%M%S')}.json"


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    out = a.out or default_out()
    try:
        result = run(a)
    except SystemExit:
        raise
    except BaseException:
        traceback.print_exc()
        return 1
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    text = render(result)
    print(text)
    if a.markdown:
        a.markdown.write_text(text + "\n")
    log(f"results: {out} ({result['duration_s']} s)")
    for x in result["leftovers"]:
        log(f"LEFTOVER: {x}")
    return 1 if result["leftovers"] else 0


if __name__ == "__main__":
    sys.exit(main())

