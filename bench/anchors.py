"""The anchors: the kit in ../shared/bench (the C floor, bubblewrap, crun), built into our work dir.

The kit's sources are only read: limit.c is compiled with BASE pointing into
the benchmark's temporary work dir, where its package, data dirs and crun
bundle are made the way the kit's build.sh makes them. Every run happens in
this process's rounds, interleaved with rocker's own.

    floor   `limit full -n N [-c 2] [--shared]`: create + enter + run + teardown
            with raw syscalls; per-phase samples and cycles/s
    alt     bubblewrap on a package mounted beforehand, and crun (user ns,
            5 overlays, no cgroups), each run timed from spawn to exit, in a
            private mount namespace holding the pre-mounted package; beside
            them (ours, not the kit's) bubblewrap running a fresh Python, the
            comparison for an app that is Python code
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from rocker_sys import mount as m
from rocker_sys import ns

from . import proc

DIRS = ("usr", "var", "etc", "home", "root")
SLOTS = 100  # data slots: `limit hold -n 100` uses one per guard


def find_kit(repo: Path) -> Path | None:
    kit = (repo / ".." / "shared" / "bench").resolve()
    return kit if (kit / "src" / "limit.c").is_file() else None


class Anchors:
    def __init__(self, kit: Path, base: Path, log: Any = print) -> None:
        self.kit = kit
        self.base = base
        self.log = log
        self.limit = base / "bin" / "limit"
        self.bwrap = shutil.which("bwrap")
        self.crun = shutil.which("crun")
        self.versions: dict[str, str] = {}
        self.skipped: list[str] = []

    # ------------------------------------------------------------ build
    def build(self) -> None:
        b, kit = self.base, self.kit
        for d in ("bin", "pkg/root/bin", "mnt/exec", "mnt/shared", "data", "crun", "crun-state"):
            (b / d).mkdir(parents=True, exist_ok=True)
        cc = shutil.which("gcc") or shutil.which("cc") or "cc"
        _run([cc, "-O2", "-Wall", f'-DBASE="{b}"', "-o", str(self.limit), str(kit / "src" / "limit.c")])
        _run([cc, "-O2", "-static", "-o", str(b / "pkg/root/bin/app"), str(kit / "src" / "app.c")])
        if shutil.which("strip"):
            _run(["strip", str(b / "pkg/root/bin/app")])
        for d in ("usr", "var", "etc", "home", "root", "proc", "dev", "tmp", "execdir"):
            (b / "pkg/root" / d).mkdir(exist_ok=True)
        for p in (b / "pkg", b / "pkg/root", b / "pkg/root/bin"):
            p.chmod(0o755)
        _run(["mksquashfs", str(b / "pkg/root"), str(b / "pkg/app-gzip.squashfs"), "-comp", "gzip", "-noappend",
              "-quiet", "-all-root"])
        os.symlink("app-gzip.squashfs", b / "pkg/app.squashfs")
        for s in range(SLOTS):
            for d in DIRS:
                (b / f"data/s{s}/.upper/{d}").mkdir(parents=True, exist_ok=True)
                (b / f"data/s{s}/.work/{d}").mkdir(parents=True, exist_ok=True)
        _run(["chown", "-R", "1000:1000", str(b / "data")])
        for d in (b, b / "mnt", b / "mnt/exec"):
            d.chmod(0o755)
        if self.crun:
            env = dict(os.environ, ANCHOR_WORK=str(b))
            _run([sys.executable, str(kit / "src" / "mkcrun.py"), "userns"], env=env)
        else:
            self.skipped.append("crun: not installed (apt-get install -y crun)")
        if not self.bwrap:
            self.skipped.append("bwrap: not installed (apt-get install -y bubblewrap)")
        for name, cmd in (("bwrap", [self.bwrap, "--version"]), ("crun", [self.crun, "--version"])):
            if cmd[0]:
                r = subprocess.run(cmd, capture_output=True, text=True, check=False)
                self.versions[name] = (r.stdout or r.stderr).splitlines()[0] if (r.stdout or r.stderr) else "?"

    # ------------------------------------------------------------ the C floor
    def floor(self, n: int, conc: int = 1, shared: bool = False) -> dict[str, Any]:
        """One `limit full` run: {series: samples in ms, "wall_s", "cycles_per_s"}."""
        cmd = [str(self.limit), "full", "-n", str(n)]
        if conc > 1:
            cmd += ["-c", str(conc)]
        if shared:
            cmd.append("--shared")
        r = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=600)
        if r.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({r.returncode}): {r.stderr.strip()[-500:]}")
        out: dict[str, Any] = {}
        for line in r.stdout.splitlines():
            d = json.loads(line)
            out[d["series"]] = [x / 1000 for x in d["us"]]
            if d["series"] == "total":
                out["wall_s"] = d["wall_s"]
                out["cycles_per_s"] = round(d["n"] / d["wall_s"], 2)
        return out

    def hold_pss(self, n: int, settle: float) -> dict[str, Any]:
        """PSS of the floor's idle guards (`limit hold -n N`: full rockers kept alive)."""
        n = min(n, SLOTS)
        p = subprocess.Popen([str(self.limit), "hold", "-n", str(n)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             text=True)
        assert p.stdin is not None and p.stdout is not None
        pids: list[int] = []
        try:
            for line in p.stdout:
                if line.strip() == "READY":
                    break
                pids.append(int(line))
            time.sleep(settle)
            pss = sorted(proc.rollup(x).get("Pss", 0) for x in pids)
        finally:
            p.stdin.close()
            p.wait(60)
        return {"live": len(pids), "guard_pss_kib_p50": pss[len(pss) // 2] if pss else None}

    # ------------------------------------------------------------ bubblewrap and crun
    def alt_commands(self) -> dict[str, list[str]]:
        b = self.base
        cmds: dict[str, list[str]] = {}
        if self.bwrap:
            sandbox = [self.bwrap, "--unshare-user", "--uid", "0", "--gid", "0", "--unshare-pid", "--unshare-net",
                       "--unshare-uts", "--unshare-ipc", "--ro-bind", "/", "/", "--proc", "/proc"]
            bw = [*sandbox]
            for d in DIRS:
                bw += ["--bind", f"{b}/data/s8/.upper/{d}", f"/{d}"]
            cmds["bwrap_premounted"] = [*bw, "--ro-bind", f"{b}/mnt/shared", f"{b}/mnt/exec", f"{b}/mnt/exec/bin/app"]
            # Not the kit's: what running Python code under bubblewrap takes (a fresh interpreter of the
            # launcher's Python, nothing imported); the host's dirs stay visible, or it would find no stdlib.
            cmds["bwrap_python"] = [*sandbox, os.path.realpath(sys.executable), "-I", "-S", "-c", "pass"]
        if self.crun and (b / "crun" / "config.json").exists():
            cmds["crun"] = [self.crun, "--root", f"{b}/crun-state", "--cgroup-manager=disabled", "run", "--bundle",
                            f"{b}/crun", f"rkbench{os.getpid()}"]
        return cmds

    def alt(self, n: int, warmup: int, rnd: int) -> dict[str, list[float]]:
        """Time each alternative n times (after warmup runs) in a private mount namespace of a child."""
        cmds = self.alt_commands()
        if not cmds:
            return {}
        names = sorted(cmds)
        names = names[rnd % len(names):] + names[:rnd % len(names)]
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: never returns
            code = 1
            try:
                os.close(r)
                out = _alt_child(self.base, {k: cmds[k] for k in names}, n, warmup)
                os.write(w, json.dumps(out).encode())
                code = 0
            except BaseException as e:
                try:
                    os.write(w, json.dumps({"error": repr(e)}).encode())
                except BaseException:
                    pass
            finally:
                os._exit(code)
        os.close(w)
        chunks = []
        while chunk := os.read(r, 1 << 16):
            chunks.append(chunk)
        os.close(r)
        os.waitpid(pid, 0)
        res = json.loads(b"".join(chunks) or b"{}")
        if "error" in res:
            raise RuntimeError(f"anchor run of bwrap/crun failed: {res['error']}")
        for name, why in res.pop("_failed", {}).items():
            note = f"{name}: fails on this kernel ({why})"
            if note not in self.skipped:
                self.skipped.append(note)
        return res


def _alt_child(b: Path, cmds: dict[str, list[str]], n: int, warmup: int) -> dict[str, Any]:
    """In a private mount namespace (dies with this process, and the package's loop device with it)."""
    ns.unshare(ns.CLONE_NEWNS)
    m.make_rprivate("/")
    # crun refuses hybrid cgroup v1/v2 hosts; this is our private namespace only
    subprocess.run(["umount", "/sys/fs/cgroup/unified"], capture_output=True, check=False)
    _run(["mount", "-t", "squashfs", "-o", "loop,ro", f"{b}/pkg/app.squashfs", f"{b}/mnt/shared"])
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    devnull = [(os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
               (os.POSIX_SPAWN_OPEN, 1, "/dev/null", os.O_WRONLY, 0),
               (os.POSIX_SPAWN_OPEN, 2, "/dev/null", os.O_WRONLY, 0)]
    out: dict[str, Any] = {}
    for name, argv in cmds.items():
        samples, failures = [], 0
        for i in range(warmup + n):
            t0 = time.monotonic_ns()
            pid = os.posix_spawn(argv[0], argv, env, file_actions=devnull)
            _, status = os.waitpid(pid, 0)
            t1 = time.monotonic_ns()
            if status != 0:
                failures += 1
                if failures > 3:  # a comparison this kernel refuses (crun's overlay in a userns on 6.1): skip it
                    tail = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
                    out.setdefault("_failed", {})[name] = f"status {status}: {tail.stderr.strip()[-400:]}"
                    break
                continue
            if i >= warmup:
                samples.append((t1 - t0) / 1e6)
        if name not in out.get("_failed", {}):
            out[name] = samples
    return out


def _run(cmd: list[str], env: dict[str, str] | None = None) -> None:
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({r.returncode}): {(r.stderr or r.stdout).strip()[-500:]}")
