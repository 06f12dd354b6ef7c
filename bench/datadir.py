"""`python3 -m bench.datadir`: the first rocker on a data dir against a second one that joins it.

The first builds the data dir's overlays (dirs, fsmount of each overlay, the
stage); the second, started while the first lives, gets clones of them
(rockerd/create/datashare.py). Samples alternate: the first is always the
only rocker on its data dir (used before: its upper dirs exist), the second
joins a holder kept alive on another data dir. Figures are rockerd's own
create time ("created ... in X ms") and the client's enter_rocker() time,
as medians. Root only; leaves nothing behind.
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
from pathlib import Path

from rocker_client import RockerRequest, enter_rocker, request_new

from .daemon import BenchDaemon
from .run import REPO, build_package

DEFAULT_OVERLAYS = ("/usr", "/var", "/etc", "/home", "/root")


def _hold(fds: tuple[int, int]) -> int:
    os.close(fds[1])
    return len(os.read(fds[0], 1))


def _req(pkg: Path, base: Path, data: str, overlays: tuple[str, ...]) -> RockerRequest:
    req = request_new()
    req.app_id, req.uid, req.gid = 1, 0, 0
    req.app_pkg_path, req.app_exec_dir, req.app_data_dir = str(pkg), str(base / "exec"), str(base / data)
    req.app_overlay_dirs = list(overlays)
    return req


def _one(req: RockerRequest, sink: dict[str, list[float]], key: str) -> str:
    t0 = time.perf_counter()
    res = enter_rocker(req, lambda _: 0)
    sink[key].append((time.perf_counter() - t0) * 1000)
    if not res.ok:
        raise SystemExit(f"bench.datadir: {key} failed: {res.detail}")
    os.waitpid(res.app_pid, 0)
    return res.guard_pname


def measure(samples: int, overlays: tuple[str, ...]) -> dict[str, object]:
    work = Path(tempfile.mkdtemp(prefix="rocker-bench-datadir-", dir="/tmp"))
    work.chmod(0o755)
    d = BenchDaemon(work / "d", REPO, 64)
    try:
        pkg = build_package(work, "gzip")
        d.start()
        os.environ["ROCKER_SOCKET"] = d.socket
        client: dict[str, list[float]] = {"first": [], "second": []}
        names: dict[str, list[str]] = {"first": [], "second": []}
        r, w = os.pipe()
        holder = enter_rocker(_req(pkg, work, "shared", overlays), _hold, (r, w))
        if not holder.ok:
            raise SystemExit(f"bench.datadir: holder failed: {holder.detail}")
        try:
            for _ in range(3):  # warm both paths (package cache, page cache)
                _one(_req(pkg, work, "alone", overlays), {"w": []}, "w")
                _one(_req(pkg, work, "shared", overlays), {"w": []}, "w")
            for _ in range(samples):
                names["first"].append(_one(_req(pkg, work, "alone", overlays), client, "first"))
                names["second"].append(_one(_req(pkg, work, "shared", overlays), client, "second"))
        finally:
            os.close(w)
            os.close(r)
            os.waitpid(holder.app_pid, 0)
        time.sleep(0.3)
        created = d.read_log()
        daemon = {k: [created[n] for n in v if n in created] for k, v in names.items()}
        return {"samples": samples, "overlays": list(overlays), "kernel": os.uname().release,
                "daemon_create_ms_p50": {k: round(statistics.median(v), 3) for k, v in daemon.items()},
                "client_enter_ms_p50": {k: round(statistics.median(v), 3) for k, v in client.items()}}
    finally:
        d.stop()
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m bench.datadir", description=__doc__.split("\n\n")[0])
    p.add_argument("--samples", type=int, default=50, help="pairs of creates (default 50)")
    p.add_argument("--overlay", action="append", default=None, metavar="DIR",
                   help="host dir to overlay (repeatable; default /usr /var /etc /home /root)")
    p.add_argument("--out", type=Path, help="write the figures as JSON here too")
    a = p.parse_args(argv)
    res = measure(a.samples, tuple(a.overlay or DEFAULT_OVERLAYS))
    text = json.dumps(res, indent=2)
    print(text)
    if a.out:
        a.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
