"""`python3 -m bench.datadir`: the first rocker on a data dir against a second one that joins it.

The first builds the data dir's overlays (dirs, fsmount of each overlay, the
stage); the second, started while the first lives, gets clones of them
(rockerd/create/datashare.py). Samples alternate: the first is always the
only rocker on its data dir (used before: its upper dirs exist), the second
joins a holder kept alive on another data dir. Figures are rockerd's own
create time ("created ... in X ms") and the client's enter_rocker() time,
as medians. Root only; leaves nothing behind.

With `--arm NAME=DIR` (repeatable) each arm is a checkout whose rockerd is
started from it (its own daemon, data dirs and holder); the arms' samples
interleave (rotated order each round), so a busy machine weighs on every arm
alike, and with two arms the median of the paired per-round differences
(second arm minus first) is printed too. Hold the test lock while it runs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from rocker_client import RockerRequest, RockerResult, enter_rocker, request_new

from .daemon import BenchDaemon
from .run import REPO, build_package

DEFAULT_OVERLAYS = ("/usr", "/var", "/etc", "/home", "/root")
KINDS = ("first", "second")


def _hold(fds: tuple[int, int]) -> int:
    os.close(fds[1])
    return len(os.read(fds[0], 1))


def _req(pkg: Path, base: Path, data: str, overlays: tuple[str, ...]) -> RockerRequest:
    req = request_new()
    req.app_id, req.uid, req.gid = 1, 0, 0
    req.app_pkg_path, req.app_exec_dir, req.app_data_dir = str(pkg), str(base / "exec"), str(base / data)
    req.app_overlay_dirs = list(overlays)
    return req


@dataclass
class Arm:
    name: str
    repo: Path
    daemon: BenchDaemon
    base: Path
    holder: RockerResult | None = None
    pipe: tuple[int, int] | None = None
    client: dict[str, list[float]] = field(default_factory=lambda: {k: [] for k in KINDS})
    names: dict[str, list[str]] = field(default_factory=lambda: {k: [] for k in KINDS})

    def one(self, pkg: Path, kind: str, overlays: tuple[str, ...], record: bool = True) -> None:
        """A first rocker on the data dir "alone", or a second one joining the holder on "shared"."""
        os.environ["ROCKER_SOCKET"] = self.daemon.socket
        req = _req(pkg, self.base, "alone" if kind == "first" else "shared", overlays)
        t0 = time.perf_counter()
        res = enter_rocker(req, lambda _: 0)
        ms = (time.perf_counter() - t0) * 1000
        if not res.ok:
            raise SystemExit(f"bench.datadir: {self.name} {kind} failed: {res.detail}")
        os.waitpid(res.app_pid, 0)
        if record:
            self.client[kind].append(ms)
            self.names[kind].append(res.guard_pname)

    def hold(self, pkg: Path, overlays: tuple[str, ...]) -> None:
        os.environ["ROCKER_SOCKET"] = self.daemon.socket
        self.pipe = os.pipe()
        self.holder = enter_rocker(_req(pkg, self.base, "shared", overlays), _hold, self.pipe)
        if not self.holder.ok:
            raise SystemExit(f"bench.datadir: {self.name} holder failed: {self.holder.detail}")

    def let_go(self) -> None:
        """Close our ends of the holder's pipe (a later arm's holder, forked after, has a copy of the
        write end too: every arm lets go before any holder is waited for)."""
        if self.pipe is not None:
            os.close(self.pipe[1])
            os.close(self.pipe[0])
            self.pipe = None

    def reap(self) -> None:
        if self.holder is not None and self.holder.ok:
            os.waitpid(self.holder.app_pid, 0)
        self.holder = None

    def daemon_ms(self) -> dict[str, list[float]]:
        created = self.daemon.read_log()
        return {k: [created.get(n, float("nan")) for n in v] for k, v in self.names.items()}


def _release(arms: list[Arm]) -> None:
    for arm in arms:
        arm.let_go()
    for arm in arms:
        arm.reap()


def _p50(v: list[float]) -> float:
    v = [x for x in v if x == x]
    return round(statistics.median(v), 3) if v else float("nan")


def measure(samples: int, overlays: tuple[str, ...], arms: dict[str, Path] | None = None,
            rockerd_args: tuple[str, ...] = (), module: tuple[str, ...] = ("rockerd",)) -> dict[str, object]:
    """`module`: how each arm's rockerd is run (`python -m` these; bench.timeline wraps it)."""
    work = Path(tempfile.mkdtemp(prefix="rocker-bench-datadir-", dir="/tmp"))
    work.chmod(0o755)
    arms = arms or {"this": REPO}
    started: list[Arm] = []
    try:
        pkg = build_package(work, "gzip")
        for name, repo in arms.items():
            base = work / name
            base.mkdir()
            base.chmod(0o755)
            arm = Arm(name, repo, BenchDaemon(base / "d", repo, 64, extra=rockerd_args, module=module), base)
            started.append(arm)
            arm.daemon.start()
            arm.hold(pkg, overlays)
        for _ in range(3):  # warm both paths (package cache, page cache)
            for arm in started:
                for kind in KINDS:
                    arm.one(pkg, kind, overlays, record=False)
        for i in range(samples):
            for arm in started[i % len(started):] + started[:i % len(started)]:
                for kind in KINDS:
                    arm.one(pkg, kind, overlays)
        _release(started)
        time.sleep(0.3)
        res: dict[str, object] = {"samples": samples, "overlays": list(overlays), "kernel": os.uname().release,
                                  "rockerd_args": list(rockerd_args)}
        daemon = {arm.name: arm.daemon_ms() for arm in started}
        for arm in started:
            res[arm.name] = {"repo": str(arm.repo),
                             "daemon_create_ms_p50": {k: _p50(v) for k, v in daemon[arm.name].items()},
                             "client_enter_ms_p50": {k: _p50(v) for k, v in arm.client.items()}}
        if len(started) == 2:
            a, b = started[0].name, started[1].name
            res[f"paired {b} - {a}"] = {
                "daemon_create_ms_p50": {k: _p50([y - x for x, y in zip(daemon[a][k], daemon[b][k], strict=True)])
                                         for k in KINDS},
                "client_enter_ms_p50": {k: _p50([y - x for x, y in zip(started[0].client[k], started[1].client[k],
                                                                       strict=True)]) for k in KINDS}}
        return res
    finally:
        _release(started)
        for arm in started:
            arm.daemon.stop()
        shutil.rmtree(work, ignore_errors=True)


def _arms(specs: list[str] | None) -> dict[str, Path] | None:
    if not specs:
        return None
    arms = {}
    for s in specs:
        name, sep, d = s.partition("=")
        if not sep or not name or not d:
            raise SystemExit(f"bench.datadir: --arm {s!r}: want NAME=DIR")
        arms[name] = Path(d).resolve()
    return arms


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m bench.datadir", description=__doc__.split("\n\n")[0])
    p.add_argument("--samples", type=int, default=50, help="pairs of creates (default 50)")
    p.add_argument("--overlay", action="append", default=None, metavar="DIR",
                   help="host dir to overlay (repeatable; default /usr /var /etc /home /root)")
    p.add_argument("--arm", action="append", metavar="NAME=DIR",
                   help="a checkout whose rockerd to measure (repeatable; samples interleave; default: this one)")
    p.add_argument("--rockerd-arg", action="append", default=[], metavar="ARG",
                   help="an argument for every rockerd (e.g. --rockerd-arg=--cgroups=none)")
    p.add_argument("--out", type=Path, help="write the figures as JSON here too")
    a = p.parse_args(argv)
    res = measure(a.samples, tuple(a.overlay or DEFAULT_OVERLAYS), _arms(a.arm), tuple(a.rockerd_arg))
    text = json.dumps(res, indent=2)
    print(text)
    if a.out:
        a.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
