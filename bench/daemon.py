"""The benchmark's own rockerd: a private socket, state dir and log file.

The state dir goes on a tmpfs when there is one (/run, else /dev/shm), as rockerd's
default /run/rocker/state is on a systemd machine: a record written to ext4 costs
0.14 ms per create here, to tmpfs 0.02 ms.

The daemon logs its own create time ("created NAME (guard pid P) ... in X ms",
measured from the Create call's arrival at the service to its reply); the
benchmark reads those lines back by guard name.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from . import proc

CREATED = re.compile(r" created (rk-\S+) \(guard pid (\d+)\) .* in ([0-9.]+) ms$")


class BenchDaemon:
    def __init__(self, workdir: Path, repo: Path, max_rockers: int, extra: tuple[str, ...] = (),
                 module: tuple[str, ...] = ("rockerd",)) -> None:
        self.extra = extra
        self.module = module  # `python -m` this (bench.steptimes runs rockerd with timers of its own)
        workdir.mkdir(parents=True, exist_ok=True)
        self.workdir = workdir
        self.repo = repo
        self.socket = str(workdir / "rockerd.sock")
        self.log_path = workdir / "rockerd.log"
        self.max_rockers = max_rockers
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_pos = 0
        self.created_ms: dict[str, float] = {}
        self.state_dir = tempfile.mkdtemp(prefix="rocker-bench-state-", dir=_tmpfs() or str(workdir))

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> None:
        cmd = [sys.executable, "-m", *self.module, "--socket", self.socket, "--state-dir", self.state_dir,
               "--log-level", "INFO", "--max-rockers", str(self.max_rockers),
               "--max-rockers-per-uid", str(self.max_rockers), *self.extra]
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(self.repo), env.get("PYTHONPATH")) if p)
        for var in ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "NOTIFY_SOCKET", "JOURNAL_STREAM", "WATCHDOG_USEC",
                    "WATCHDOG_PID", "ROCKER_SOCKET"):
            env.pop(var, None)  # a plain daemon on our socket, logging lines to our file
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(cmd, cwd=self.repo, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20 * float(os.environ.get("ROCKER_TEST_TIME_SCALE", "1"))  # >1: emulated VM
        while not os.path.exists(self.socket):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"rockerd did not start:\n{self.log_text()}")
            time.sleep(0.02)

    def stop(self) -> int | None:
        """SIGTERM (rockers still alive keep running: end them first), then wait; drop the state dir."""
        if self.proc is None:
            shutil.rmtree(self.state_dir, ignore_errors=True)
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.state_dir, ignore_errors=True)
        shutil.rmtree(self.state_dir + "-net", ignore_errors=True)
        return self.proc.returncode

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def read_log(self) -> dict[str, float]:
        """Parse the lines written since the last call; returns (and keeps) name -> create ms."""
        with open(self.log_path, "rb") as f:
            f.seek(self._log_pos)
            data = f.read()
        end = data.rfind(b"\n") + 1  # leave a half-written last line for next time
        self._log_pos += end
        for line in data[:end].decode(errors="replace").splitlines():
            m = CREATED.search(line)
            if m:
                self.created_ms[m.group(1)] = float(m.group(3))
        return self.created_ms

    def rss_kib(self) -> int:
        return proc.status_kib(self.pid, "VmRSS")

    def pss_kib(self) -> int:
        return proc.rollup(self.pid).get("Pss", 0)

    def fd_count(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def children(self) -> list[int]:
        """Its rockers' guards: its children but the spare guards (rockerd/create/spareguards.py),
        which wait for a Create and go with rockerd."""
        kids = proc.children(self.pid)
        if not kids:
            return kids
        try:
            from rocker_client import wire

            reply, fds = wire.call(self.socket, "io.rocker.Rocker.List", {})
        except Exception:
            return kids
        for fd in fds:
            os.close(fd)
        live = {r["guard_pid"] for r in reply["rockers"]}
        return [k for k in kids if k in live]


def _tmpfs() -> str | None:
    """/run or /dev/shm if it is a tmpfs (where rockerd's state lives on a systemd machine)."""
    try:
        with open("/proc/self/mounts") as f:
            types = {fields[1]: fields[2] for fields in (line.split() for line in f) if len(fields) > 2}
    except OSError:
        return None
    return next((d for d in ("/run", "/dev/shm") if types.get(d) == "tmpfs" and os.access(d, os.W_OK)), None)
