"""Helpers for tests that run code inside a real rocker."""

from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from rocker_client import RockerRequest, RockerResult, enter_rocker, request_new


@pytest.fixture
def base() -> Iterator[Path]:
    """A world-traversable dir (pytest's tmp dirs are 0700 root: a uid-1000 app could not reach them)."""
    d = Path(tempfile.mkdtemp(prefix="rocker-test-", dir="/tmp"))
    d.chmod(0o755)
    yield d
    _remove_tree(d)


def _remove_tree(d: Path, within: float = 5.0) -> None:
    """Retried while rockerd may still be removing a rocker's work dirs in it (a name gone under the
    walk is not an error); what still cannot go after that (a mount left inside) is reported."""
    deadline = time.monotonic() + within
    while True:
        try:
            shutil.rmtree(d)
            return
        except OSError:
            if not d.exists():
                return
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.05)


# The app's capability set as docs/security.md states it: Docker's default less CAP_MKNOD and CAP_NET_RAW
# (numbers from linux/capability.h). Written out here, not imported: the tests check the code against it.
APP_CAPS = {"CAP_CHOWN": 0, "CAP_DAC_OVERRIDE": 1, "CAP_FOWNER": 3, "CAP_FSETID": 4, "CAP_KILL": 5, "CAP_SETGID": 6,
            "CAP_SETUID": 7, "CAP_SETPCAP": 8, "CAP_NET_BIND_SERVICE": 10, "CAP_SYS_CHROOT": 18,
            "CAP_AUDIT_WRITE": 29, "CAP_SETFCAP": 31}
APP_CAP_MASK = sum(1 << c for c in APP_CAPS.values())


def make_req(base: Path, pkg: Path, *, uid: int = 0, gid: int = 0, overlays: tuple[str, ...] = ("/usr",),
             app_id: int = 7) -> RockerRequest:
    req = request_new()
    req.app_id, req.uid, req.gid = app_id, uid, gid
    req.app_pkg_path = str(pkg)
    req.app_exec_dir = str(base / "exec")
    req.app_data_dir = str(base / "data")
    req.app_overlay_dirs = list(overlays)
    return req


@dataclass
class Run:
    res: RockerResult
    report: dict[str, Any]
    status: int  # the app's wait status once released, -1 until then (or if it never started)


def errno_of(fn: Callable[[], object]) -> int:
    try:
        fn()
    except OSError as e:
        return e.errno or -1
    return 0


@contextmanager
def live_app(req: RockerRequest, probe: Callable[[], dict[str, Any]]) -> Iterator[Run]:
    """Run `probe` as the app; it reports JSON through a pipe, then waits until released on exit."""
    rep_r, rep_w = os.pipe()
    rel_r, rel_w = os.pipe()

    def app(_: object) -> int:
        os.close(rep_r)
        os.close(rel_w)
        try:
            rep = probe()
        except BaseException as e:
            rep = {"probe_error": repr(e)}
        os.write(rep_w, json.dumps(rep).encode())
        os.close(rep_w)
        os.read(rel_r, 1)
        return 0

    res = enter_rocker(req, app)
    os.close(rep_w)
    os.close(rel_r)
    run = Run(res, {}, -1)
    try:
        if res.ok:
            chunks = []
            while chunk := os.read(rep_r, 65536):
                chunks.append(chunk)
            run.report = json.loads(b"".join(chunks) or b"{}")
        yield run
    finally:
        os.close(rep_r)
        os.close(rel_w)
        if res.ok:
            try:
                run.status = os.waitpid(res.app_pid, 0)[1]
            except ChildProcessError:  # the test reaped it
                pass


def run_app(req: RockerRequest, probe: Callable[[], dict[str, Any]],
            while_alive: Callable[[RockerResult], None] | None = None) -> Run:
    """live_app, released as soon as it has reported (and `while_alive` has looked at it)."""
    with live_app(req, probe) as run:
        if run.res.ok and while_alive:
            while_alive(run.res)
    return run


def wait_until(cond: Callable[[], object], timeout: float) -> bool:
    """Whether `cond()` comes true within `timeout` s (scaled by ROCKER_TEST_TIME_SCALE: the emulated VM)."""
    deadline = time.monotonic() + timeout * float(os.environ.get("ROCKER_TEST_TIME_SCALE", "1"))
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def wait_gone(pid: int, timeout: float) -> float | None:
    """Seconds until /proc/PID is gone (or a zombie), None if it outlived `timeout`."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                if f.read().rsplit(b")", 1)[1].split()[0] == b"Z":
                    return time.monotonic() - t0
        except (FileNotFoundError, ProcessLookupError):  # ESRCH: it went between open and read
            return time.monotonic() - t0
        time.sleep(0.01)
    return None


def lo_works() -> bool:
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(1)
        with socket.create_connection(srv.getsockname(), timeout=2):
            return True


def proc_pids() -> list[int]:
    return sorted(int(p) for p in os.listdir("/proc") if p.isdigit())


__all__ = ["Run", "base", "errno", "errno_of", "live_app", "lo_works", "make_req", "proc_pids", "run_app", "wait_gone"]
