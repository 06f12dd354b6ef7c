"""`rocker run` as a whole process against bubblewrap's whole run (issue 21: at most 3x).

    python3 -m bench.cli_start [--socket SOCK --pkg PKG --exec-dir DIR --data-dir DIR] [-n 15]

Without a daemon it times the CLI's own start: `rocker run` up to its connect (to a socket
nobody listens on: exit 125), which is what imports and argument parsing cost; with one, the
whole `rocker run ... -- /bin/true`. Both beside `bwrap --unshare-all --ro-bind / / --proc /proc
--dev /dev /bin/true` and `python3 -I -S -c pass`; medians of n runs, interleaved.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time


def _time(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-n", type=int, default=15)
    p.add_argument("--socket")
    p.add_argument("--pkg")
    p.add_argument("--exec-dir")
    p.add_argument("--data-dir")
    a = p.parse_args(argv)
    rocker = [sys.executable, "-m", "rocker_client.cli"]
    with tempfile.TemporaryDirectory() as tmp:
        fake = os.path.join(tmp, "app.squashfs")  # passes the CLI's own look (the magic), then connect fails
        with open(fake, "wb") as f:
            f.write(b"hsqs" + bytes(92))
        cmds: dict[str, list[str]] = {
            "python -I -S -c pass": [sys.executable, "-I", "-S", "-c", "pass"],
            "rocker run (CLI start, to connect)": [*rocker, "--socket", os.path.join(tmp, "none.sock"), "run",
                                                   "--pkg", fake, "--exec-dir", f"{tmp}/e",
                                                   "--data-dir", f"{tmp}/d", "--", "/bin/true"],
        }
        if a.socket:
            cmds["rocker run ... /bin/true"] = [*rocker, "--socket", a.socket, "run", "--pkg", a.pkg, "--exec-dir",
                                                a.exec_dir, "--data-dir", a.data_dir, "--", "/bin/true"]
        bwrap = shutil.which("bwrap")
        if bwrap:
            cmds["bwrap /bin/true"] = [bwrap, "--unshare-all", "--ro-bind", "/", "/", "--proc", "/proc", "--dev",
                                       "/dev", "/bin/true"]
        times: dict[str, list[float]] = {k: [] for k in cmds}
        for _ in range(a.n):
            for name, cmd in cmds.items():
                times[name].append(_time(cmd))
    med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    base = med.get("bwrap /bin/true")
    for name, ms in med.items():
        ratio = f"  {ms / base:.1f}x bwrap" if base else ""
        print(f"{name:40s} {ms:7.1f} ms{ratio}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
