"""Fixtures that run a real rockerd on a private socket."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass
class Daemon:
    proc: subprocess.Popen[bytes]
    socket: str
    log: Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self._let_ended_rockers_go()
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


    def _let_ended_rockers_go(self, timeout: float = 1.0) -> None:
        """A test that reaped its app and stops rockerd at once would stop it before the guard (which
        follows its app within milliseconds) has gone: rockerd keeps a live rocker's cgroup for its next
        start to adopt, so that cgroup would outlive the test. Wait, briefly, for the list to empty;
        rockers a test keeps on purpose (restarts) only cost it the timeout."""
        from rocker_client import wire

        deadline = time.monotonic() + timeout * float(os.environ.get("ROCKER_TEST_TIME_SCALE", "1"))
        while time.monotonic() < deadline:
            try:
                reply, fds = wire.call(self.socket, "io.rocker.Rocker.List", {})
            except Exception:
                return
            for fd in fds:
                os.close(fd)
            if not reply.get("rockers"):
                return
            time.sleep(0.02)


def _accepts(path: str) -> bool:
    """A stale socket file of a killed daemon exists too: only a connect tells."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(path)
        return True
    except OSError:
        return False
    finally:
        s.close()


def use_kernel_paths(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """For fixtures with params ["fast", "forced"]: this kernel's fast paths, or every fallback
    forced (the paths Debian 12's 6.1 takes)."""
    from rockerd import kernel

    if request.param == "forced":
        monkeypatch.setenv(kernel.FORCE_ENV, "all")
    else:
        monkeypatch.delenv(kernel.FORCE_ENV, raising=False)


def spare_args(args: tuple[str, ...]) -> tuple[str, ...]:
    """Spare guards (rockerd/create/spareguards.py) outlive the Create that made them, so a
    per-test leak check would count a session daemon's as the test's: they are off unless a test
    turns them on (tests/test_spare_guards.py) or ROCKER_TEST_SPARES=1 runs the suite with them."""
    if any(a.startswith("--spare-guards") for a in args) or os.environ.get("ROCKER_TEST_SPARES") == "1":
        return args
    return ("--spare-guards", "0", *args)


def start_daemon(workdir: Path, *args: str, pass_fds: tuple[int, ...] = ()) -> Daemon:
    workdir.mkdir(parents=True, exist_ok=True)
    sock = str(workdir / "rockerd.sock")
    log = workdir / "rockerd.log"
    cmd = [sys.executable, "-m", "rockerd", "--socket", sock, "--state-dir", str(workdir / "state"),
           "--log-level", "DEBUG", *spare_args(args)]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, pass_fds=pass_fds)
    deadline = time.monotonic() + 15 * float(os.environ.get("ROCKER_TEST_TIME_SCALE", "1"))  # >1: emulated VM
    while not _accepts(sock):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            raise RuntimeError(f"rockerd did not start:\n{log.read_text()}")
        time.sleep(0.02)
    return Daemon(proc, sock, log)


@pytest.fixture(scope="session")
def rockerd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """One daemon for the session; tests that need to break a daemon use `own_rockerd`."""
    d = start_daemon(tmp_path_factory.mktemp("rockerd"))
    old = os.environ.get("ROCKER_SOCKET")
    os.environ["ROCKER_SOCKET"] = d.socket
    yield d
    d.stop()
    if old is None:
        os.environ.pop("ROCKER_SOCKET", None)
    else:
        os.environ["ROCKER_SOCKET"] = old
    assert d.proc.returncode == 0, f"rockerd exited with {d.proc.returncode}:\n{d.log_text()}"
    assert "Traceback" not in d.log_text(), d.log_text()


@pytest.fixture
def own_rockerd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Daemon]:
    d = start_daemon(tmp_path / "own-rockerd")
    monkeypatch.setenv("ROCKER_SOCKET", d.socket)
    yield d
    d.stop()
