"""Helpers for tests that play a local user (uid 1000) against rockerd: a daemon it can reach, and
scripts it runs with Debian's /usr/bin/python3 (the venv's interpreter may be unreadable for it)."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from daemon import Daemon, start_daemon

SYSTEM_PYTHON = "/usr/bin/python3"
UID = 1000

needs_system_python = pytest.mark.skipif(not os.path.exists(SYSTEM_PYTHON), reason="needs Debian's /usr/bin/python3")

# A varlink call over a raw socket, as a script's helper: no rocker_client needed where uid 1000 runs.
RAW_CALL = r"""
import array, json, os, socket
def call(sock, method, parameters=None):
    sock.sendall(json.dumps({"method": method, "parameters": parameters or {}}).encode() + b"\0")
    buf = b""
    while not buf.endswith(b"\0"):
        data, anc, _, _ = sock.recvmsg(65536, socket.CMSG_SPACE(64 * 4))
        for level, kind, fds in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                for fd in array.array("i", fds[: len(fds) - len(fds) % 4]):
                    os.close(fd)
        if not data:
            raise EOFError(buf)
        buf += data
    return json.loads(buf[:-1])
def call_once(path, method, parameters=None):
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(path)
        return call(sock, method, parameters)
"""


def reachable_daemon(base: Path, *args: str) -> Daemon:
    """A rockerd whose socket anyone can connect to, in a dir anyone can walk."""
    return start_daemon(base / "d", "--socket-mode", "0666", *args)


@pytest.fixture
def user_dirs(base: Path, pkg: Path) -> Iterator[Path]:
    """base/app.squashfs readable by all, base/u/exec and base/u/data owned by uid 1000."""
    (base / "app.squashfs").write_bytes(pkg.read_bytes())
    (base / "app.squashfs").chmod(0o644)
    for d in ("u", "u/exec", "u/data"):
        (base / d).mkdir()
        os.chown(base / d, UID, UID)
    (base / "u/data").chmod(0o700)
    yield base


def create_params(base: Path, uid: int = UID, gid: int = UID) -> dict[str, Any]:
    return {"app_id": 1, "uid": uid, "gid": gid, "app_pkg_path": str(base / "app.squashfs"),
            "app_exec_dir": str(base / "u/exec"), "app_data_dir": str(base / "u/data"), "app_overlay_dirs": []}


def run_script(script: str, *args: str, uid: int = UID, gid: int = UID, groups: list[int] | None = None,
               timeout: float = 60) -> dict[str, Any]:
    """Run RAW_CALL + script as uid:gid with these supplementary groups; its last stdout line is JSON."""
    p = subprocess.run([SYSTEM_PYTHON, "-I", "-c", RAW_CALL + script, *args], user=uid, group=gid,
                       extra_groups=groups or [], env={}, capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0 and p.stdout.strip(), p.stdout + p.stderr
    return json.loads(p.stdout.strip().splitlines()[-1])
