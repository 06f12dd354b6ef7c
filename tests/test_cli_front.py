"""The installed `rocker` command is the C front (clients/cli): `rocker run` without a Python process.

test_cli.py's and test_env_cwd.py's `rocker run` tests run here again, unchanged, against the
installed `rocker` instead of `python -m rocker_client.cli`: the same terminal, signal and exit-status
behaviour, the same errors (which the front leaves to the Python CLI). The tests below show which
front ran: /proc/PID/exe of `rocker run` while CMD runs.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sysconfig
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import test_cli
import test_env_cwd
from test_cli import (  # noqa: F401  (fixtures and tests collected here again, against the front)
    app_id,
    run_args,
    terminal,
    test_a_package_that_is_no_squashfs_is_refused_before_rockerd_is_asked,
    test_cmd_dies_of_sigpipe_like_outside,
    test_cmd_killed_by_a_signal_gives_128_plus_n,
    test_cmd_not_found_or_not_executable,
    test_ctrl_c_reaches_cmd_once_as_a_job,
    test_ctrl_c_reaches_cmd_once_in_a_script,
    test_ctrl_z_fg_and_ctrl_c_in_an_interactive_shell,
    test_error_for_a_bad_command_line,
    test_error_for_a_missing_package,
    test_error_when_rockerd_is_not_running,
    test_error_when_rockerd_refuses,
    test_interactive_shell_on_a_terminal,
    test_run_exits_with_cmds_status,
    test_run_finds_the_package_bin_and_starts_in_the_cwd,
    test_run_prints_the_guards_name,
    test_signal_to_rocker_run_reaches_cmd,
    test_signal_while_the_rocker_is_built_is_passed_on,
    test_version_and_console_script,
)
from test_env_cwd import (  # noqa: F401
    test_rocker_run_env_options,
    test_rocker_run_keeps_its_own_variables_out,
    test_rocker_run_refuses_a_bad_env,
)

INSTALLED = Path(sysconfig.get_path("scripts")) / "rocker"
PYTHON_CLI = INSTALLED.parent / "rocker-py"
BUILT_HERE = Path(__file__).resolve().parent.parent / "clients/cli/rocker"  # scripts/mutants.py builds it there
FRONT = BUILT_HERE if BUILT_HERE.is_file() else INSTALLED

pytestmark = [pytest.mark.usefixtures("rockerd", "the_front"),
              pytest.mark.skipif(not FRONT.is_file(), reason="no C front installed: pip install -e .")]


@pytest.fixture
def the_front(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """test_cli's and test_env_cwd's `rocker` is the installed command here."""
    monkeypatch.setattr(test_cli, "ROCKER", [str(FRONT)])
    monkeypatch.setattr(test_env_cwd, "ROCKER", [str(FRONT)])
    yield


def test_the_installed_rocker_is_the_c_front() -> None:
    assert INSTALLED.read_bytes()[:4] == b"\x7fELF", "`rocker` is not the compiled front"
    assert PYTHON_CLI.read_bytes()[:2] == b"#!", "no rocker-py (the Python CLI) beside it"


def _exe_while_cmd_runs(argv: list[str]) -> tuple[str, int]:
    """The program `rocker run` is while CMD runs, and its exit status."""
    p = subprocess.Popen([str(FRONT), *argv, "--", "sh", "-c", "echo ready; read x"], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert p.stdout is not None and p.stdout.readline() == "ready\n", p.stderr.read() if p.stderr else ""
        exe = os.readlink(f"/proc/{p.pid}/exe")
        p.communicate("\n", timeout=20)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    return exe, p.returncode


def test_rocker_run_starts_no_python(run_args: list[str]) -> None:  # noqa: F811  (the fixture)
    """The command that ran CMD is the front itself: no interpreter was exec'd on the way."""
    exe, code = _exe_while_cmd_runs(run_args)
    assert code == 0
    assert exe == str(FRONT.resolve()), f"`rocker run` ran as {exe}"


def test_an_option_the_front_does_not_take_goes_to_the_python_cli(run_args: list[str], pkg: Path) -> None:  # noqa: F811
    """--pkg-sha256 is the Python CLI's: the same command line runs there, and the option takes effect."""
    digest = hashlib.sha256(pkg.read_bytes()).hexdigest()
    exe, code = _exe_while_cmd_runs([*run_args, "--pkg-sha256", digest])
    assert code == 0
    assert "python" in os.path.basename(exe), f"`rocker run --pkg-sha256` ran as {exe}"
    res = subprocess.run([str(FRONT), *run_args, "--pkg-sha256", "0" * 64, "--", "true"], capture_output=True,
                         text=True, timeout=60, check=False)
    assert res.returncode == 125, "a package whose digest is not the one given ran"
    assert "it is not the package you meant" in test_cli.one_line(res.stderr), res.stderr


def test_a_failure_before_cmd_is_worded_by_the_python_cli(tmp_path: Path, pkg: Path, rockerd: Any) -> None:
    """rockerd refuses: the front leaves the message (and the exit status) to the Python CLI."""
    res = subprocess.run([str(FRONT), "--socket", rockerd.socket, "run", "--pkg", str(pkg), "--overlay", "/proc",
                          "--", "true"], capture_output=True, text=True, timeout=60, check=False)
    assert res.returncode == 125
    assert "rockerd refused the request: --overlay /proc: must not be /proc" in test_cli.one_line(res.stderr)


# -- one request per command: a failed Create is worded by rocker-py from the front's cause --------------

class CountingDaemon:
    """A fake rockerd that answers every call with one error reply and counts the Create calls it got
    (a connection that sends no call, such as the log hint's SO_PEERCRED probe, is no call)."""

    def __init__(self, path: Path, reply: dict[str, Any]) -> None:
        self.path, self.reply, self.creates = str(path), json.dumps(reply).encode() + b"\0", 0
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(self.path)
        self.listener.listen(8)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return  # closed
            with conn:
                buf = b""
                while b"\0" not in buf and (chunk := conn.recv(65536)):
                    buf += chunk
                if b"\0" in buf:
                    self.creates += json.loads(buf[:buf.index(b"\0")])["method"] == "io.rocker.Rocker.Create"
                    conn.sendall(self.reply)

    def close(self) -> None:
        self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        self.thread.join(10)


REFUSAL = {"error": "io.rocker.Rocker.InvalidRequest",
           "parameters": {"field": "app_overlay_dirs[1]", "reason": "must not be /proc"}}
BUILD_FAILED = {"error": "io.rocker.Rocker.BuildFailed",
                "parameters": {"step": "mount package", "reason": "not a squashfs image: Invalid argument",
                               "errno": 22}}


def _both_clis(argv: list[str], sock: str, **env: str) -> list[subprocess.CompletedProcess[str]]:
    """The same failing command line through the front and through rocker-py itself."""
    return [subprocess.run([str(cli), "--socket", sock, *argv], capture_output=True, text=True, timeout=60,
                           check=False, env={**os.environ, **env}) for cli in (FRONT, PYTHON_CLI)]


@pytest.mark.parametrize("reply", [REFUSAL, BUILD_FAILED], ids=["refusal", "build-failed"])
def test_a_failed_create_is_asked_once_and_worded_as_rocker_py_words_it(
        tmp_path: Path, run_args: list[str], reply: dict[str, Any]) -> None:  # noqa: F811  (the fixture)
    """The front hands its failed Create to rocker-py with the cause: rockerd gets one Create per
    command (not two: twice in its log, any side effect twice), and the error line is rocker-py's own."""
    argv = [*run_args, "--overlay", "/usr", "--overlay", "/proc", "--", "true"]
    seen = []
    for cli in (FRONT, PYTHON_CLI):
        d = CountingDaemon(tmp_path / f"{cli.name}.sock", reply)
        try:
            res = subprocess.run([str(cli), "--socket", d.path, *argv], capture_output=True, text=True,
                                 timeout=60, check=False)
        finally:
            d.close()
        assert d.creates == 1, f"{cli.name}: {d.creates} Create calls for one `rocker run`"
        seen.append((res.returncode, test_cli.one_line(res.stderr).replace(d.path, "SOCKET")))
    assert seen[0] == seen[1], seen
    assert seen[0][0] == 125
    want = ("rockerd refused the request: --overlay /proc: must not be /proc" if reply is REFUSAL
            else "rockerd could not build the rocker: mount package: not a squashfs image: Invalid argument")
    assert want in seen[0][1], seen


@pytest.mark.parametrize("how", ["no-socket", "refused"])
def test_an_unreachable_rockerd_is_worded_as_rocker_py_words_it(tmp_path: Path, run_args: list[str],  # noqa: F811
                                                               how: str) -> None:
    """No socket (ENOENT) or nobody listening on it (ECONNREFUSED): the errno comes over from the front."""
    sock = tmp_path / "rockerd.sock"
    with socket.socket(socket.AF_UNIX) as s:
        if how == "refused":
            s.bind(str(sock))  # bound, never listening
        front, py = _both_clis([*run_args, "--", "true"], str(sock))
    assert (front.returncode, front.stderr) == (py.returncode, py.stderr)
    assert front.returncode == 125
    assert f"rockerd is not running ({'no socket at' if how == 'no-socket' else 'nothing listens on'} {sock})" \
        in test_cli.one_line(front.stderr)


def test_a_real_build_failure_is_worded_as_rocker_py_words_it(tmp_path: Path, rockerd: Any) -> None:
    """A package that starts like a squashfs image but is none: the front takes it, rockerd cannot mount it."""
    bad = tmp_path / "bad.squashfs"
    bad.write_bytes(b"hsqs" + b"\0" * 4092)
    argv = ["run", "--pkg", str(bad), "--exec-dir", str(tmp_path / "e"), "--data-dir", str(tmp_path / "d"),
            "--uid", "0", "--gid", "0", "--", "true"]
    front, py = _both_clis(argv, rockerd.socket)
    assert (front.returncode, front.stderr) == (py.returncode, py.stderr)
    assert front.returncode == 125 and "rockerd could not build the rocker" in test_cli.one_line(front.stderr)


def test_a_malformed_handover_is_refused_without_asking(tmp_path: Path, run_args: list[str]) -> None:  # noqa: F811
    """rocker-py never asks rockerd when ROCKER_FRONT_FAILURE is there but unreadable; the front drops one
    it inherited (it would stand for a Create that never happened)."""
    d = CountingDaemon(tmp_path / "rockerd.sock", REFUSAL)
    try:
        for bad in ("{", "[]", '{"err_no": 0, "kind": "x", "reason": "", "field": "", "step": "", "errno": 0}',
                    '{"err_no": 2, "kind": "connect", "reason": "", "field": "", "step": ""}'):
            res = subprocess.run([str(PYTHON_CLI), "--socket", d.path, *run_args, "--", "true"], capture_output=True,
                                 text=True, timeout=60, check=False, env={**os.environ, "ROCKER_FRONT_FAILURE": bad})
            assert res.returncode == 125
            assert "$ROCKER_FRONT_FAILURE is malformed" in test_cli.one_line(res.stderr), (bad, res.stderr)
        assert d.creates == 0
        stale = json.dumps({"err_no": 3, "kind": "connect", "reason": "", "field": "", "step": "", "errno": 2})
        res = subprocess.run([str(FRONT), "--socket", d.path, *run_args, "--network", "none", "--", "true"],
                             capture_output=True, text=True, timeout=60, check=False,
                             env={**os.environ, "ROCKER_FRONT_FAILURE": stale})
        assert "rockerd refused the request" in test_cli.one_line(res.stderr), res.stderr  # asked, not the stale one
        assert d.creates == 1
    finally:
        d.close()
