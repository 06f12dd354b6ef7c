"""`rocker run`'s start (issue 21): nothing imported or built that the command does not use.

The start itself is timed by bench/cli_start.py (too noisy for a test on a shared machine); these
check what makes it: which modules a `rocker run` loads, and that the one-command parser it builds
parses as the whole one does.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from rocker_client.cli import build_parser
from rocker_client.cli.parser import command_in

ROOT = Path(__file__).resolve().parent.parent
# What a `rocker run` has no use for: slow to import, and each was once imported at every start.
NOT_FOR_RUN = ("importlib.metadata", "typing", "textwrap", "socket", "selectors", "rocker_client.cli.rockers",
               "rocker_client.cli.status", "rocker_client.cli.datadir", "rocker_client.guardname")


def _modules_after(*argv: str) -> tuple[set[str], int, str]:
    """Run the CLI in a fresh interpreter without site (-I -S: nothing preloaded); the modules it loaded."""
    code = (f"import sys; sys.path.insert(0, {str(ROOT)!r}); from rocker_client.cli import main; "
            f"rc = main({list(argv)!r}); import json; print(json.dumps([sorted(sys.modules), rc]))")
    p = subprocess.run([sys.executable, "-I", "-S", "-c", code], capture_output=True, text=True, timeout=60,
                       check=False)
    modules, rc = json.loads(p.stdout.strip().splitlines()[-1])
    return set(modules), rc, p.stderr


def test_run_loads_only_what_it_uses(tmp_path: Path) -> None:
    pkg = tmp_path / "app.squashfs"
    pkg.write_bytes(b"hsqs" + bytes(92))
    modules, rc, err = _modules_after("--socket", str(tmp_path / "none.sock"), "run", "--pkg", str(pkg),
                                      "--exec-dir", str(tmp_path / "e"), "--data-dir", str(tmp_path / "d"), "--",
                                      "/bin/true")
    assert rc == 125 and "rockerd is not running" in err, err  # it got as far as the connect
    assert not modules & set(NOT_FOR_RUN), sorted(modules & set(NOT_FOR_RUN))


def test_status_does_not_load_the_enter_path(tmp_path: Path) -> None:
    modules, rc, _ = _modules_after("--socket", str(tmp_path / "none.sock"), "status")
    assert rc == 125
    assert not modules & {"rocker_client.enter", "rocker_client.execapp", "rocker_client._job", "ctypes"}


@pytest.mark.parametrize("argv", [
    ["run", "--pkg", "p", "--overlay", "/usr", "--overlay", "/etc", "-e", "A=1", "--uid", "7", "--", "sh", "-c", "x"],
    ["--socket", "/s", "run", "--pkg", "p", "--memory", "1G", "--cpus", "0.5", "true"],
    ["--socket=/s", "exec", "-w", "/tmp", "rk-x", "--", "ls"],
    ["kill", "-s", "TERM", "rk-a", "rk-b"],
    ["ps", "--json"],
])
def test_one_command_parser_parses_as_the_whole_one(argv: list[str]) -> None:
    only = command_in(argv)
    assert only == next(a for a in argv if a in ("run", "exec", "kill", "ps"))
    assert vars(build_parser(only).parse_known_args(argv)[0]) == vars(build_parser().parse_known_args(argv)[0])


@pytest.mark.parametrize("argv", [["--sock", "/s", "run"], ["-h"], ["--version"], ["nosuch"], [], ["--socket"]])
def test_what_cannot_be_told_gets_the_whole_parser(argv: list[str]) -> None:
    """An abbreviated option (argparse takes --sock for --socket), help, or no known command."""
    assert command_in(argv) is None


# -- the C front (clients/cli): `rocker run` decided as the Python CLI decides, or handed to it --------------------

SCRIPTS = Path(sysconfig.get_path("scripts"))
BUILT_HERE = ROOT / "clients/cli/rocker"  # scripts/mutants.py builds the front here, in its copy of the tree
FRONT = BUILT_HERE if BUILT_HERE.is_file() else SCRIPTS / "rocker"
# The Python CLI with rockerd and the job left out: what `rocker run` would ask for and run, as JSON.
REFERENCE = """
import json, sys
from rocker_client.cli import main, run
seen = {}
def enter_rocker(req, app, launch, socket=None):
    seen.update(params=req.to_params(), socket=socket)
def run_job(start, env, cmd, workdir, failure, prog="rocker run"):
    start(None)
    params = {k: v for k, v in seen["params"].items() if v != []  or k == "app_overlay_dirs"}
    print(json.dumps({"params": params, "socket": seen["socket"], "cmd": cmd, "workdir": workdir,
                      "env": [list(kv) for kv in env.items()]}))
    return 0
run.enter_rocker, run.run_job = enter_rocker, run_job
sys.exit(main(sys.argv[1:]))
"""


def _decisions(argv: list[str], env: dict[str, str], cwd: Path, user: int | None = None) -> tuple[str, str]:
    """(the front's dump, or "python" where it hands over; the Python CLI's, or its error line)."""
    front = subprocess.run([str(FRONT), *argv], env={**env, "ROCKER_FRONT_DUMP": "1"}, cwd=cwd, capture_output=True,
                           text=True, timeout=30, check=False, user=user)
    assert front.returncode == 0, front
    ref = subprocess.run([sys.executable, "-c", REFERENCE, *argv], env=env, cwd=cwd, capture_output=True, text=True,
                         timeout=60, check=False, user=user)
    return front.stdout.strip(), ref.stdout.strip() if ref.returncode == 0 else f"exit {ref.returncode}: {ref.stderr}"


def _world(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    tmp_path.chmod(0o755)
    (tmp_path / "app.squashfs").write_bytes(b"hsqs" + bytes(92))
    (tmp_path / "not.squashfs").write_bytes(b"#!/bin/sh\n")
    (tmp_path / "vars").write_text("# comment\n\n  A=from file  \nB=2\nKEEP\nX=1=2\n")
    (tmp_path / "bad-vars").write_text("NO SPACES=1\n")
    (tmp_path / "wide-vars").write_text("W=\u00e9t\u00e9\r\n")
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path / "home"), "KEEP": "me", "ROCKER_SOCKET": "/env.sock",
           "ROCKER_OTHER": "x", "EMPTY": "", "LANG": "C.UTF-8"}  # a C locale: Python adds LC_CTYPE (PEP 538)
    return tmp_path, env


# Command lines the front runs itself (and must decide as the Python CLI does)
FRONT_RUNS = [
    ["run", "--pkg", "app.squashfs", "--", "true"],
    ["run", "--pkg", "app.squashfs", "true", "--pkg", "x"],
    ["--socket", "/s", "run", "--pkg=./app.squashfs", "--socket=/t", "sh", "-c", "echo $A"],
    ["--socket=/s", "run", "--pkg", "app.squashfs", "--exec-dir", "e/../x/", "--data-dir", "/d//a/./t", "-w", "/w",
     "--", "-x"],
    ["run", "--pkg", "app.squashfs", "--exec-dir", "e", "--", "--", "true"],
    ["run", "--pkg", "app.squashfs", "--data-dir", "//d", "--overlay", "/usr", "--overlay", "etc/../var", "true"],
    ["run", "--pkg", "app.squashfs", "--uid", "0", "--gid", "007", "--app-id", "42", "--seccomp", "nested", "true"],
    ["run", "--pkg", "app.squashfs", "--uid", "1000", "--seccomp=unconfined", "-w=/a=b", "-wx", "--workdir=/y", "t"],
    ["run", "--pkg", "app.squashfs", "-e", "A=1", "-eB=2", "-e=C=3", "--env=D", "--env", "KEEP", "--env", "UNSET",
     "-e", "ROCKER_SOCKET", "-e", "EMPTY", "-e", "E=", "true"],
    ["run", "--pkg", "app.squashfs", "--env-file", "vars", "-e", "A=arg", "--clear-env", "--env", "PATH=/p", "true"],
    ["run", "--pkg", "app.squashfs", "--clear-env", "true"],
    ["run", "--pkg", "app.squashfs", "--env-file=vars", "--env-file", "vars", "env"],
]
# Command lines it hands to the Python CLI: options it does not take, errors, anything argparse reads its own way
PYTHON_RUNS = [
    ["run", "--pkg", "app.squashfs", "--memory", "1G", "true"],
    ["run", "--pkg", "app.squashfs", "--network", "none", "true"],
    ["run", "--pkg", "app.squashfs", "-p", "8080:80", "true"],
    ["run", "--pkg", "app.squashfs", "--pids", "5", "true"],
    ["run", "--pkg", "app.squashfs", "--cpus", "1", "true"],
    ["run", "--pkg", "app.squashfs", "--pkg-sha256", "00", "true"],
    ["run", "--pkg", "app.squashfs", "--pk", "x", "true"],
    ["run", "--pk", "app.squashfs", "true"],
    ["run", "--pkg", "app.squashfs", "--help"],
    ["run", "--pkg", "app.squashfs", "--frobnicate", "--", "true"],
    ["run", "--pkg", "app.squashfs"],
    ["run", "--", "true"],
    ["run", "--pkg", "app.squashfs", "--uid", "me", "true"],
    ["run", "--pkg", "app.squashfs", "--uid", "-1", "true"],
    ["run", "--pkg", "app.squashfs", "--uid", "+1", "true"],
    ["run", "--pkg", "app.squashfs", "--seccomp", "none", "true"],
    ["run", "--pkg", "app.squashfs", "--clear-env=1", "true"],
    ["run", "--pkg", "app.squashfs", "--workdir", "-x", "true"],
    ["run", "--pkg", "app.squashfs", "-e", "NO SPACE=1", "true"],
    ["run", "--pkg", "app.squashfs", "-e", "=1", "true"],
    ["run", "--pkg", "app.squashfs", "--env-file", "bad-vars", "true"],
    ["run", "--pkg", "app.squashfs", "--env-file", "wide-vars", "true"],
    ["run", "--pkg", "app.squashfs", "--env-file", "missing", "true"],
    ["run", "--pkg", "not.squashfs", "true"],
    ["run", "--pkg", "missing.squashfs", "true"],
    ["run", "--pkg", ".", "true"],
    ["run", "--pkg", "app.squashfs", *[a for i in range(17) for a in ("--overlay", f"/o{i}")], "true"],
    ["-V"], ["--version"], ["ps"], ["--socket", "/s", "status"], ["--sock", "/s", "run", "--pkg", "app.squashfs", "t"],
    ["run", "--pkg", "app.squashfs", "-", "true"],
    [],
]


@pytest.mark.skipif(not FRONT.is_file(), reason="no C front installed: pip install -e . (scripts/setup.sh)")
@pytest.mark.parametrize("argv", FRONT_RUNS)
def test_the_front_runs_what_it_knows_as_the_python_cli_would(argv: list[str], tmp_path: Path) -> None:
    """The front's request, CMD, workdir and environment (its order too) are the Python CLI's."""
    cwd, env = _world(tmp_path)
    front, python = _decisions(argv, env, cwd)
    assert front != "python", "the front handed a command line it knows to the Python CLI"
    assert json.loads(front) == json.loads(python)


@pytest.mark.skipif(not FRONT.is_file(), reason="no C front installed: pip install -e . (scripts/setup.sh)")
@pytest.mark.parametrize("argv", PYTHON_RUNS)
def test_the_front_hands_over_what_it_does_not_know(argv: list[str], tmp_path: Path) -> None:
    cwd, env = _world(tmp_path)
    front, _ = _decisions(argv, env, cwd)
    assert front == "python", front


@pytest.mark.skipif(not FRONT.is_file(), reason="no C front installed: pip install -e . (scripts/setup.sh)")
@pytest.mark.parametrize("home", ["h", "h/", "/h//", None])
def test_the_front_picks_a_users_default_dirs_as_the_python_cli(base: Path, home: str | None) -> None:
    """As uid 1000: $XDG_RUNTIME_DIR, else /run/user/UID; $XDG_DATA_HOME, else $HOME/.local/share (trailing
    slashes as os.path.expanduser reads them); the dirs made with the Python CLI's modes."""
    cwd, env = _world(base)
    (base / "h").mkdir()
    os.chown(base / "h", 1000, 1000)
    if home is None:
        env.update(XDG_RUNTIME_DIR=str(base / "h/run"), XDG_DATA_HOME=str(base / "h/data"))
    else:
        env.update(HOME=f"{base}/{home}", XDG_RUNTIME_DIR="", XDG_DATA_HOME="")
    argv = ["run", "--pkg", "app.squashfs", "--", "true"] if home is None else \
        ["run", "--pkg", "app.squashfs", "--exec-dir", "e", "--", "true"]  # no /run/user/1000 made here
    front = subprocess.run([str(FRONT), *argv], env={**env, "ROCKER_FRONT_DUMP": "1"}, cwd=cwd, capture_output=True,
                           text=True, timeout=30, check=False, user=1000, group=1000, extra_groups=[])
    as_1000 = "import os\nos.geteuid = os.getuid = os.getgid = lambda: 1000\n"  # the reference runs as root
    ref = subprocess.run([sys.executable, "-c", as_1000 + REFERENCE, *argv], env=env, cwd=cwd, capture_output=True,
                         text=True, timeout=60, check=True)
    assert front.stdout.strip() != "python" and json.loads(front.stdout) == json.loads(ref.stdout), (front, ref)
    data = base / ("h/data" if home is None else "h/.local/share") / "rocker/app"
    assert data.is_dir() and data.stat().st_mode & 0o777 == 0o700 and data.stat().st_uid == 1000
