"""`rocker run`'s start (issue 21): nothing imported or built that the command does not use.

The start itself is timed by bench/cli_start.py (too noisy for a test on a shared machine); these
check what makes it: which modules a `rocker run` loads, and that the one-command parser it builds
parses as the whole one does.
"""

from __future__ import annotations

import json
import subprocess
import sys
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
