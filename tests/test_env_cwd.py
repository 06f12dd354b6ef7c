"""Where the app starts and what environment it gets: the API's cwd/env, rocker run's --env options."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from daemon import Daemon
from rockers import make_req

from rocker_client import Exec, RockerErr, enter, enter_rocker

ROCKER = [sys.executable, "-m", "rocker_client.cli"]


def _place(_: object) -> int:
    with open(os.environ["OUT"], "w") as f:
        json.dump({"cwd": os.getcwd(), "env": dict(os.environ)}, f)
    return 0


@pytest.fixture(params=["one fork", "intermediate"])
def path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Root's one-fork start, and the intermediate every non-root or threaded caller takes."""
    if request.param == "intermediate":
        monkeypatch.setattr(enter, "_single_threaded", lambda: False)
    return str(request.param)


def test_a_callable_gets_cwd_and_env(rockerd: Daemon, base: Path, pkg: Path, path: str) -> None:
    out = base / "out.json"
    res = enter_rocker(make_req(base, pkg), _place, socket=rockerd.socket, cwd="/usr/share",
                       env={"OUT": str(out), "ONLY": "this"})
    assert res.ok, res.detail
    assert os.waitstatus_to_exitcode(os.waitpid(res.app_pid, 0)[1]) == 0
    got = json.loads(out.read_text())
    assert got == {"cwd": "/usr/share", "env": {"OUT": str(out), "ONLY": "this"}}


def test_a_callable_without_cwd_and_env_starts_as_before(rockerd: Daemon, base: Path, pkg: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    out = base / "out.json"
    monkeypatch.setenv("OUT", str(out))
    res = enter_rocker(make_req(base, pkg), _place, socket=rockerd.socket)
    assert res.ok and os.waitpid(res.app_pid, 0)
    got = json.loads(out.read_text())
    assert got["env"] == dict(os.environ) and got["cwd"] == "/"


@pytest.mark.parametrize("kind", ["callable", "exec"])
def test_a_cwd_missing_inside_is_an_app_failure(rockerd: Daemon, base: Path, pkg: Path, path: str, kind: str) -> None:
    app: Any = _place if kind == "callable" else Exec("/bin/true")
    res = enter_rocker(make_req(base, pkg), app, socket=rockerd.socket, cwd="/no/such/dir")
    assert res.err_no == RockerErr.app_exec_failed and res.cause is not None, res
    assert res.cause.step.startswith("chdir") and "No such file or directory" in res.detail, res


def test_an_exec_app_gets_cwd_and_env(rockerd: Daemon, base: Path, pkg: Path) -> None:
    out = base / "out.txt"
    app = Exec("/bin/sh", ["sh", "-c", 'echo "$(pwd) $ONLY $HOME" > "$OUT"'], env={"OUT": str(out), "ONLY": "x"},
               cwd="/usr/share")
    res = enter_rocker(make_req(base, pkg), app, socket=rockerd.socket)
    assert res.ok, res.detail
    assert os.waitstatus_to_exitcode(os.waitpid(res.app_pid, 0)[1]) == 0
    assert out.read_text() == "/usr/share x \n"  # no HOME: the env is the one given
    res = enter_rocker(make_req(base, pkg), Exec("/bin/sh", ["sh", "-c", 'pwd > "$OUT"']), socket=rockerd.socket,
                       cwd="/etc", env={"OUT": str(out)})  # enter_rocker's fill in the Exec's
    assert res.ok and os.waitpid(res.app_pid, 0)
    assert out.read_text() == "/etc\n"


def _env_of(args: list[str], *extra: str, env: dict[str, str] | None = None,
            cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*ROCKER, *args, *extra, "--", "env", "-0"], capture_output=True, text=True, timeout=60,
                          env=env, cwd=cwd, check=False)


def _parsed(res: subprocess.CompletedProcess[str]) -> dict[str, str]:
    assert res.returncode == 0, res.stderr
    return dict(item.split("=", 1) for item in res.stdout.split("\0") if item)


@pytest.fixture
def run_args(base: Path, pkg: Path) -> list[str]:
    return ["run", "--pkg", str(pkg), "--exec-dir", str(base / "exec"), "--data-dir", str(base / "data")]


def test_rocker_run_keeps_its_own_variables_out(rockerd: Daemon, run_args: list[str]) -> None:
    mine = {"PATH": "/usr/bin:/bin", "ROCKER_SOCKET": rockerd.socket, "ROCKER_EXEC_LIB": "", "KEEP": "me"}
    got = _parsed(_env_of(run_args, env=mine))
    assert "ROCKER_SOCKET" not in got and "ROCKER_EXEC_LIB" not in got and got["KEEP"] == "me"
    got = _parsed(_env_of(run_args, "--env", "ROCKER_SOCKET", "-e", "ROCKER_APP=1", "--env", "UNSET_HERE", env=mine))
    assert got["ROCKER_SOCKET"] == rockerd.socket and got["ROCKER_APP"] == "1" and "UNSET_HERE" not in got


def test_rocker_run_env_options(rockerd: Daemon, run_args: list[str], base: Path) -> None:
    mine = {"PATH": "/usr/bin:/bin", "ROCKER_SOCKET": rockerd.socket, "KEEP": "me", "A": "mine"}
    (base / "app.env").write_text("# settings\n\nA=from file\nB=x=y\nKEEP\n")
    (base / "more.env").write_text("B=second file\n")
    got = _parsed(_env_of(run_args, "--env-file", str(base / "app.env"), "--env-file", str(base / "more.env"),
                          "-e", "C=", env=mine))
    assert (got["A"], got["B"], got["C"], got["KEEP"]) == ("from file", "second file", "", "me")
    assert got["PATH"] == f"{base / 'exec'}/bin:/usr/bin:/bin"
    got = _parsed(_env_of(run_args, "--clear-env", "-e", "ONLY=1", env=mine))
    assert got == {"ONLY": "1", "PATH": f"{base / 'exec'}/bin:{os.defpath}"}


@pytest.mark.parametrize(("option", "says"), [
    (["--env", "=x"], "--env: '=x' is not NAME=VALUE"),
    (["--env-file", "BAD"], "line 2: 'NO SPACES=1' is not NAME=VALUE"),
    (["--env-file", "/no/such.env"], "--env-file /no/such.env: No such file or directory"),
])
def test_rocker_run_refuses_a_bad_env(rockerd: Daemon, run_args: list[str], base: Path, option: list[str],
                                      says: str) -> None:
    (base / "bad.env").write_text("OK=1\nNO SPACES=1\n")
    res = _env_of(run_args, *[o.replace("BAD", str(base / "bad.env")) for o in option])
    assert res.returncode == 2 and says in res.stderr and len(res.stderr.splitlines()) == 1, res.stderr
