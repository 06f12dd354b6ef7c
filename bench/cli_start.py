"""`rocker run` as a whole process against bubblewrap's whole run (issue 21: at most 3x).

    sudo .venv/bin/python -m bench.cli_start [-n 15] [--rocker PATH] [--socket SOCK --pkg PKG]

Times, interleaved, medians of n runs: `rocker run --pkg PKG -- /bin/true` whole (as root, with
its own rockerd on a private socket and an empty package, unless --socket/--pkg name a running
one), by the installed `rocker` (the C front, clients/cli) and by the Python CLI (`rocker-py`, what
`rocker` was before the front); the Python CLI's own start: `rocker-py run` up to its connect, to a
socket nobody listens on (exit 125: interpreter, imports and argument parsing); `bwrap --unshare-all
--ro-bind / / --proc /proc --dev /dev /bin/true`; and the interpreter alone (`python -I -S -c pass`,
the floor of any Python CLI). The commands timed are those beside this interpreter (what `pip
install` put on PATH), else `python -m rocker_client.cli` for both; --rocker names another front.
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
from pathlib import Path

from .daemon import BenchDaemon

REPO = Path(__file__).resolve().parent.parent


def _time(cmd: list[str]) -> tuple[float, int, bytes]:
    t0 = time.perf_counter()
    p = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False)
    return time.perf_counter() - t0, p.returncode, p.stderr


def rocker_command(given: str | None, name: str = "rocker") -> list[str]:
    if given:
        return [given]
    script = Path(sys.executable).parent / name
    return [str(script)] if script.is_file() else [sys.executable, "-m", "rocker_client.cli"]


def empty_package(tmp: Path) -> Path:
    root = tmp / "pkgroot"
    (root / "bin").mkdir(parents=True)
    pkg = tmp / "app.squashfs"
    subprocess.run(["mksquashfs", str(root), str(pkg), "-noappend", "-quiet", "-no-progress", "-all-root"],
                   check=True, capture_output=True)
    return pkg


def commands(tmp: Path, rocker: list[str], python_cli: list[str], socket: str | None,
             pkg: str | None) -> dict[str, list[str]]:
    fake = tmp / "fake.squashfs"  # passes the CLI's own look (the magic), then connect fails
    fake.write_bytes(b"hsqs" + bytes(92))
    cmds: dict[str, list[str]] = {
        "python -I -S -c pass": [sys.executable, "-I", "-S", "-c", "pass"],
        "rocker-py run (Python CLI start)": [*python_cli, "--socket", str(tmp / "none.sock"), "run", "--pkg",
                                             str(fake), "--exec-dir", f"{tmp}/e", "--data-dir", f"{tmp}/d", "--",
                                             "/bin/true"],
    }
    if socket and pkg:
        for name, cli in (("rocker", rocker), ("rocker-py", python_cli)):  # each its own dirs: no rocker waits
            cmds[f"{name} run ... /bin/true (whole)"] = [*cli, "--socket", socket, "run", "--pkg", pkg, "--exec-dir",
                                                         f"{tmp}/{name}/exec", "--data-dir", f"{tmp}/{name}/data",
                                                         "--", "/bin/true"]  # for the last one's end on the same dir
        # root's app runs as nobody by default; as root, like bubblewrap's /bin/true here (rockerd's cost differs)
        cmds["rocker run --uid 0 ... (whole)"] = [*rocker, "--socket", socket, "run", "--pkg", pkg, "--exec-dir",
                                                  f"{tmp}/exec0", "--data-dir", f"{tmp}/data0", "--uid", "0", "--gid",
                                                  "0", "--", "/bin/true"]
    bwrap = shutil.which("bwrap")
    if bwrap:
        cmds["bwrap /bin/true (whole)"] = [bwrap, "--unshare-all", "--ro-bind", "/", "/", "--proc", "/proc", "--dev",
                                           "/dev", "/bin/true"]
    return cmds


def measure(cmds: dict[str, list[str]], n: int) -> dict[str, float]:
    """Median ms per command; a whole run that fails stops the benchmark (it would time an error)."""
    times: dict[str, list[float]] = {k: [] for k in cmds}
    for _ in range(n):
        for name, cmd in cmds.items():
            took, rc, err = _time(cmd)
            if rc != 0 and "whole" in name:
                raise SystemExit(f"{name}: exit {rc}: {' '.join(cmd)}: {err.decode(errors='replace').strip()}")
            times[name].append(took)
    return {k: statistics.median(v) * 1e3 for k, v in times.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-n", type=int, default=15)
    p.add_argument("--rocker", help="the rocker command to time (default: the `rocker` beside python, the C front)")
    p.add_argument("--socket", help="a running rockerd's socket (default: start one, as root)")
    p.add_argument("--pkg", help="the package for the whole run (default: an empty one)")
    a = p.parse_args(argv)
    rocker, python_cli = rocker_command(a.rocker), rocker_command(None, "rocker-py")
    with tempfile.TemporaryDirectory(prefix="rocker-cli-start-") as name:
        tmp = Path(name)
        tmp.chmod(0o755)  # root's app runs as nobody, which must reach the exec dir
        daemon = None
        socket, pkg = a.socket, a.pkg
        if socket is None and os.geteuid() == 0 and shutil.which("mksquashfs"):
            daemon = BenchDaemon(tmp / "daemon", REPO, max_rockers=64)
            daemon.start()
            socket = daemon.socket
        if socket and pkg is None and shutil.which("mksquashfs"):
            pkg = str(empty_package(tmp))
        try:
            med = measure(commands(tmp, rocker, python_cli, socket, pkg), a.n)
        finally:
            if daemon is not None:
                daemon.stop()
    base = med.get("bwrap /bin/true (whole)")
    print(f"{' '.join(rocker)} and {' '.join(python_cli)}; medians of {a.n}, interleaved")
    for name, ms in med.items():
        ratio = f"  {ms / base:.1f}x bwrap" if base else ""
        print(f"{name:42s} {ms:7.1f} ms{ratio}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
