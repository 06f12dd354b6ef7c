"""rocker's figures through the C client (clients/c): the same cycles, launched by a C program.

The Python launcher's own costs (a fork of a ~20 MB interpreter, copy-on-write
faults, Python's at-fork handlers: about 1.3 ms a cycle) are the caller's, not
rocker's; the C floor's launcher is C. launcher.c drives librocker_client, linked
statically, so these series hold rocker against its anchors with the same kind
of caller. Each launcher is its own process: `conc` of them for throughput.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

from . import ours

HERE = Path(__file__).resolve().parent
CLIENT_SRC = HERE.parent / "clients" / "c"
# rocker's one warning set for C (setup.py WARN, clients/c/Makefile; tests/test_c_warnings.py keeps them equal)
WARN = ["-std=gnu11", "-Wall", "-Wextra", "-Werror", "-Wshadow", "-Wmissing-prototypes", "-Wstrict-prototypes"]


def build(workdir: Path) -> tuple[Path | None, str]:
    """Compile the C client and the launcher into workdir; (None, why) when that cannot be done."""
    make, cc = shutil.which("make"), shutil.which("cc") or shutil.which("gcc")
    if not make or not cc:
        return None, "the C client needs make and cc"
    out = workdir / "cclient"
    launcher = out / "launcher"
    try:
        subprocess.run([make, "-s", "-C", str(CLIENT_SRC), f"O={out}"], check=True, capture_output=True)
        subprocess.run([cc, "-O2", *WARN, f"-I{CLIENT_SRC}", "-o", str(launcher),
                        str(HERE / "launcher.c"), str(out / "librocker_client.a")], check=True, capture_output=True)
    except subprocess.CalledProcessError as e:
        return None, f"building the C client launcher failed: {e.stderr.decode(errors='replace').strip()[:300]}"
    return launcher, ""


def _run(s: ours.Setup, launcher: Path, mode: str, labels: list[str], per: int) -> tuple[list[list[str]], int]:
    """Start one launcher per label, release them together; their lines and the start time (ns)."""
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()
    procs: list[subprocess.Popen[bytes]] = []
    t0 = 0
    try:
        for label in labels:
            cmd = [str(launcher), mode, str(per), str(s.pkg), s.exec_dir, s.data_dir(label), s.app_path, str(s.uid),
                   str(s.gid), str(ready_w), str(go_r), *s.overlays]
            procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                          pass_fds=(ready_w, go_r)))
        os.close(ready_w)
        ready_w = -1
        t0 = ours.release_together(ready_r, go_w, len(procs))
        go_w = -1
        lines: list[list[str]] = []
        for p in procs:
            out, err = p.communicate(timeout=300)
            if p.returncode != 0:
                s.error(f"C launcher {mode}", f"exit {p.returncode}: {err.decode(errors='replace').strip()[:200]}")
            lines += [ln.split() for ln in out.decode(errors="replace").splitlines() if ln.strip()]
        procs.clear()
    finally:
        for fd in (ready_r, ready_w, go_r, go_w):
            if fd >= 0:
                os.close(fd)
        for p in procs:
            p.kill()
            p.wait()
    return lines, t0


def _errors(s: ours.Setup, where: str, lines: list[list[str]]) -> list[list[str]]:
    good = [ln for ln in lines if ln[0] != "error"]
    for ln in lines:
        if ln[0] == "error":
            s.error(where, f"ROCKER_enter_rocker failed: err_no {ln[1] if len(ln) > 1 else '?'}")
    return good


def throughput(s: ours.Setup, launcher: Path, conc: int, total: int) -> dict[str, Any]:
    """`conc` C launchers doing whole cycles back to back; the shape of ours.throughput's result."""
    per = max(1, math.ceil(total / conc))
    lines, t0 = _run(s, launcher, "tput", [f"c{k}" for k in range(conc)], per)
    good = _errors(s, f"C client throughput c={conc}", lines)
    rows = []
    for name, *ts in good:
        a, ret, exit_, end = (int(x) for x in ts)
        rows.append({"name": name, "enter_return_ms": ours.ms(a, ret), "cycle_ms": ours.ms(a, end),
                     "guard_after_exit_ms": ours.ms(exit_, end), "end_ns": end})
    wall = (max(r["end_ns"] for r in rows) - t0) / 1e9 if rows else 0.0
    return {"conc": conc, "cycles": len(rows), "errors": len(lines) - len(good), "wall_s": round(wall, 4),
            "cycles_per_s": round(len(rows) / wall, 2) if wall > 0 else 0.0, "rows": rows}


def start_cycles(s: ours.Setup, launcher: Path, n: int, cold: bool = False) -> list[dict[str, Any]]:
    """n cycles one at a time: ROCKER_enter_rocker() called -> the app's main() in the package.

    cold: each the first rocker of its package: one launcher run per cycle, and before the next,
    rockerd has handled the end (the launcher runs its cycles back to back otherwise)."""
    if cold:
        lines = []
        for _ in range(n):
            got, _ = _run(s, launcher, "start", ["cstart"], 1)
            lines += got
            for ln in got:
                if ln[0] != "error":
                    ours.wait_forgotten(s, ln[0])
    else:
        lines, _ = _run(s, launcher, "start", ["cstart"], n)
    rows = []
    for name, *ts in _errors(s, "C client start", lines):
        a, ret, main, exit_, end = (int(x) for x in ts)
        if main <= 0:
            s.error("C client start", f"{name}: the app wrote no timestamp")
            continue
        rows.append({"name": name, "start_exec_ms": ours.ms(a, main), "enter_return_ms": ours.ms(a, ret),
                     "teardown_guard_ms": ours.ms(exit_, end)})
    return rows
