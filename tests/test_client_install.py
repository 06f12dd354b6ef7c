"""docs/operations.md, "The client for non-root users": the per-user install, followed as uid 1000.

A wheel is built from a copy of the checkout (nothing is written into the checkout), then uid
1000, with a HOME of its own and no access to this test's venv, makes a venv with the system
Python, installs the wheel offline and runs `rocker run` through a socket it may use.
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from daemon import start_daemon
from pkgbuild import HELLO_OUTPUT

ROOT = Path(__file__).resolve().parent.parent
SYSTEM_PYTHON = "/usr/bin/python3"
UID = 1000


def _setuptools_builds_the_wheel() -> bool:
    try:
        return int(importlib.metadata.version("setuptools").split(".")[0]) >= 77  # pyproject's build-system
    except importlib.metadata.PackageNotFoundError:
        return False


pytestmark = [
    pytest.mark.skipif(not os.path.exists(SYSTEM_PYTHON), reason="needs the system's /usr/bin/python3"),
    pytest.mark.skipif(not _setuptools_builds_the_wheel(),
                       reason="needs setuptools>=77 and wheel in the test venv (scripts/setup.sh installs them)"),
]


def _run(cmd: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False, **kw)  # type: ignore[call-overload]


def build_wheel(out: Path) -> Path:
    """The doc's `pip wheel --no-deps --no-build-isolation`, offline, from a copy of the checkout."""
    src = out / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info",
                                                             "__pycache__", ".pytest_cache"))
    wheels = out / "wheels"
    p = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-index", "--no-build-isolation", "-q",
              "-w", str(wheels), str(src)])
    assert p.returncode == 0, p.stdout + p.stderr
    (wheel,) = wheels.glob("rocker-*.whl")
    return wheel


def test_a_user_installs_the_client_from_a_wheel_and_runs(base: Path, pkg: Path) -> None:
    wheel = build_wheel(base / "build")
    for p in [base, *base.rglob("*")]:  # the wheel and the package readable by the user, as /srv/wheels would be
        p.chmod(p.stat().st_mode | 0o755 if p.is_dir() else p.stat().st_mode | 0o644)
    app = Path(shutil.copy(pkg, base / "hello.squashfs"))
    home = base / "home"
    home.mkdir(mode=0o700)
    os.chown(home, UID, UID)
    d = start_daemon(base / "d", "--socket-mode", "0666")
    env = {"HOME": str(home), "PATH": "/usr/bin:/bin", "ROCKER_SOCKET": d.socket,
           "XDG_RUNTIME_DIR": str(home / "run")}

    def as_user(*cmd: str) -> subprocess.CompletedProcess[str]:
        return _run(list(cmd), user=UID, group=UID, extra_groups=[], env=env, cwd=str(home),
                    stdin=subprocess.DEVNULL)

    try:
        venv = home / ".local" / "rocker"
        steps = [(SYSTEM_PYTHON, "-m", "venv", str(venv)),
                 (str(venv / "bin" / "pip"), "install", "-q", "--no-index", "--no-deps", str(wheel))]
        for step in steps:
            p = as_user(*step)
            assert p.returncode == 0, (step, p.stdout, p.stderr)
        rocker = str(venv / "bin" / "rocker")
        assert Path(rocker).read_bytes()[:4] == b"\x7fELF" and (venv / "bin" / "rocker-py").is_file(), \
            "the wheel installs the C front as rocker and the Python CLI beside it (docs/cli.md)"
        version = as_user(rocker, "--version")
        assert version.returncode == 0 and version.stdout.strip() == "rocker 0.1.0", version
        assert (venv / "share" / "man" / "man1" / "rocker.1").is_file(), "man rocker works with the venv on PATH"
        run = as_user(rocker, "run", "--pkg", str(app), "--", "sh", "-c", "hello; id -u; cat /proc/1/comm")
        assert run.returncode == 0, run.stderr
        out = run.stdout.splitlines()
        assert out[0] == HELLO_OUTPUT and out[1] == "0" and out[2].startswith("rk-"), run.stdout
        data = home / ".local" / "share" / "rocker" / "hello"
        assert data.is_dir() and data.stat().st_uid == UID, "the user's default data dir, made by the client"
    finally:
        d.stop()
