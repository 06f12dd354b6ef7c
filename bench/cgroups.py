"""`python3 -m bench.cgroups`: what a rocker's cgroup costs: create and start p50 with limits on and
off (two rockerds, one with --cgroups none, calls interleaved), and the kernel memory (Slab in
/proc/meminfo) per idle rocker with and without its cgroup. Hold the test lock while it runs.
Results and the commands: bench/README.md, "Results"."""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rocker_client import Exec, enter_rocker, request_new, wire


def _daemon(work: Path, *args: str) -> tuple[subprocess.Popen[bytes], str]:
    work.mkdir(parents=True)
    sock = str(work / "rockerd.sock")
    log = open(work / "log", "wb")  # noqa: SIM115 (the daemon's stderr for its life)
    p = subprocess.Popen([sys.executable, "-m", "rockerd", "--socket", sock, "--state-dir", str(work / "state"),
                          "--log-level", "WARNING", "--max-rockers-per-uid", "4096", *args], stderr=log)
    deadline = time.monotonic() + 30
    while not os.path.exists(sock):
        if time.monotonic() > deadline or p.poll() is not None:
            raise SystemExit(f"rockerd did not start: {(work / 'log').read_text()}")
        time.sleep(0.05)
    return p, sock


def _slab_kib() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("Slab:"):
            return int(line.split()[1])
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--cycles", type=int, default=200, help="create+start cycles per mode")
    ap.add_argument("--warmup", type=int, default=5, help="cycles per mode not counted")
    ap.add_argument("--pause", type=float, default=0.0,
                    help="ms idle after each cycle: a rocker started after a pause pays a full RCU grace period "
                         "for its first cgroup move (cgroup_threadgroup_rwsem), one started right after another "
                         "mostly does not")
    ap.add_argument("--idle", type=int, default=100, help="idle rockers for the slab figure")
    ap.add_argument("--idle-rounds", type=int, default=2, help="slab rounds per mode (alternating)")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-cg-", dir="/tmp"))
    tmp.chmod(0o755)
    daemons = []
    held: list[tuple[str, Any]] = []
    try:
        (tmp / "pkg/bin").mkdir(parents=True)
        subprocess.run(["mksquashfs", str(tmp / "pkg"), str(tmp / "app.squashfs"), "-quiet", "-noappend"],
                       check=True, stdout=subprocess.DEVNULL)
        modes = {}
        for mode, extra in (("off", ["--cgroups", "none"]), ("on", ["--default-memory", "1G", "--default-cpus",
                                                                     "1"])):
            p, sock = _daemon(tmp / mode, *extra)
            daemons.append(p)
            modes[mode] = sock

        def request(mode: str, data: str) -> object:
            req = request_new()
            req.uid = req.gid = 1000  # an app launcher's app: its cgroup.procs chowned to it on v1
            req.app_pkg_path = str(tmp / "app.squashfs")
            req.app_exec_dir, req.app_data_dir = str(tmp / mode / "exec"), str(tmp / mode / data)
            req.app_overlay_dirs = ["/usr"]
            return req

        times: dict[str, dict[str, list[float]]] = {m: {"create": [], "start": []} for m in modes}
        real_call = wire.call
        last = [0.0]

        def timed(*a: object, **k: object) -> object:
            t0 = time.perf_counter()
            try:
                return real_call(*a, **k)  # type: ignore[arg-type]
            finally:
                last[0] = time.perf_counter() - t0

        wire.call = timed  # type: ignore[assignment]
        for i in range(args.warmup + args.cycles):
            for mode in (("off", "on") if i % 2 else ("on", "off")):
                t0 = time.perf_counter()
                res = enter_rocker(request(mode, f"data{i % 8}"), Exec("/bin/true"), socket=modes[mode])  # type: ignore[arg-type]
                t1 = time.perf_counter()
                if not res.ok:
                    raise SystemExit(f"{mode}: {res.detail}")
                os.waitpid(res.app_pid, 0)
                time.sleep(args.pause / 1000)
                if i >= args.warmup:
                    times[mode]["create"].append(last[0] * 1000)
                    times[mode]["start"].append((t1 - t0) * 1000)
        wire.call = real_call  # type: ignore[assignment]
        for mode in modes:
            c, s = times[mode]["create"], times[mode]["start"]
            print(f"limits {mode:3}: create (client round trip) p50 {statistics.median(c):.2f} ms, start "
                  f"(enter_rocker() returned: create + join + exec) p50 {statistics.median(s):.2f} ms "
                  f"({len(c)} cycles)")
        med = {m: {k: statistics.median(v) for k, v in t.items()} for m, t in times.items()}
        print(f"difference (on - off): create {med['on']['create'] - med['off']['create']:+.2f} ms, "
              f"start {med['on']['start'] - med['off']['start']:+.2f} ms")
        slab: dict[str, list[float]] = {m: [] for m in modes}
        for rep in range(args.idle_rounds):  # the modes alternate; Slab drifts with the rest of the machine
            for mode in (("off", "on") if rep % 2 else ("on", "off")):
                time.sleep(1)
                before = _slab_kib()
                for i in range(args.idle):  # each its own data dir, as apps have
                    res = enter_rocker(request(mode, f"idle{i}"), Exec("/bin/sleep", ["sleep", "600"]),  # type: ignore[arg-type]
                                       socket=modes[mode])
                    if not res.ok:
                        raise SystemExit(f"{mode}: idle rocker {i}: {res.detail}")
                    held.append((modes[mode], res))
                time.sleep(2)
                slab[mode].append((_slab_kib() - before) / args.idle)
                _release(held)
        for mode in modes:
            print(f"limits {mode:3}: Slab +{statistics.median(slab[mode]):.0f} KiB per idle rocker "
                  f"({args.idle} rockers; rounds: {', '.join(f'{x:.0f}' for x in slab[mode])})")
        print(f"difference (on - off): Slab {statistics.median(slab['on']) - statistics.median(slab['off']):+.0f} "
              "KiB per idle rocker")
        time.sleep(1)
    finally:
        _release(held)
        for p in daemons:
            p.terminate()
            p.wait()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


def _release(held: list[tuple[str, Any]]) -> None:
    """Kill the held rockers (their apps sleep) and reap the apps."""
    for sock, res in held:
        try:
            _, fds = wire.call(sock, "io.rocker.Rocker.Kill", {"guard_pname": res.guard_pname})
            for fd in fds:
                os.close(fd)
        except Exception as e:  # go on with the others; the app's wait says if it ended
            print(f"kill {res.guard_pname}: {e}", file=sys.stderr)
        os.waitpid(res.app_pid, 0)
    held.clear()


if __name__ == "__main__":
    sys.exit(main())
