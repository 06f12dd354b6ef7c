"""The `rocker` command, run as a user runs it: a subprocess, a pty for the interactive cases.

Also checks that the generated docs are current and that docs/quickstart.md's
"run your own app" commands work verbatim.
"""

from __future__ import annotations

import hashlib
import json
import os
import pty
import re
import secrets
import select
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from rockers import wait_gone

import rockerd as rockerd_pkg
from rocker_client import cli as cli_module
from rocker_client import wire
from rocker_client.cli import common as cli_common

ROOT = Path(__file__).resolve().parent.parent
ROCKER = [sys.executable, "-m", "rocker_client.cli"]
SCRIPTS = sysconfig.get_path("scripts")
NAME = re.compile(r"rk-[a-z0-9]{8}")

pytestmark = pytest.mark.usefixtures("rockerd")


def rocker(*args: str, env: dict[str, str] | None = None, timeout: float = 60, cwd: Path | None = None,
           stdin: Any = subprocess.DEVNULL) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*ROCKER, *args], capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd,
                          stdin=stdin, check=False)


def one_line(stderr: str) -> str:
    """An error is one line, prefixed with the command's name."""
    lines = stderr.strip("\n").split("\n")
    assert len(lines) == 1 and lines[0].startswith("rocker"), f"not one line: {stderr!r}"
    return lines[0]


@pytest.fixture
def app_id(rockerd: Any) -> Iterator[int]:
    """An app id only this test uses; rockers of it still alive at the end are killed and waited for."""
    aid = 1_000_000 + secrets.randbelow(1_000_000_000)
    yield aid
    for r in live(rockerd.socket, aid):
        try:
            wire.call(rockerd.socket, "io.rocker.Rocker.Kill", {"guard_pname": r["guard_pname"]})
        except wire.RemoteError:
            pass
        wait_gone(r["guard_pid"], 5)


def live(sock: str, aid: int) -> list[dict[str, Any]]:
    reply, _ = wire.call(sock, "io.rocker.Rocker.List", {})
    return [r for r in reply["rockers"] if r["app_id"] == aid]


@pytest.fixture
def run_args(base: Path, pkg: Path, app_id: int) -> list[str]:
    return ["run", "--pkg", str(pkg), "--exec-dir", str(base / "exec"), "--data-dir", str(base / "data"),
            "--app-id", str(app_id), "--uid", "0", "--gid", "0"]  # root's apps are nobody's by default


def wait_for(what: str, predicate: Any, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def ns_inode(pid: int) -> int:
    return os.stat(f"/proc/{pid}/ns/pid").st_ino


class Pty:
    """A program on a new pseudo-terminal that is its controlling terminal (as in a terminal window)."""

    def __init__(self, argv: list[str], env: dict[str, str] | None = None) -> None:
        pid, fd = pty.fork()
        if pid == 0:
            try:
                os.execvpe(argv[0], argv, env or os.environ)
            finally:
                os._exit(127)
        self.pid, self.fd, self.out, self.pos = pid, fd, b"", 0
        self.status: int | None = None

    def _read(self, timeout: float) -> bool:
        ready, _, _ = select.select([self.fd], [], [], timeout)
        if not ready:
            return True
        try:
            data = os.read(self.fd, 65536)
        except OSError:  # EIO: every process on the terminal is gone
            return False
        self.out += data
        return bool(data)

    def expect(self, pattern: bytes, timeout: float = 15.0) -> re.Match[bytes]:
        """Wait until pattern shows up in what came after the previous match."""
        regex, deadline, more = re.compile(pattern), time.monotonic() + timeout, True
        while True:
            m = regex.search(self.out, self.pos)
            if m:
                self.pos = m.end()
                return m
            left = deadline - time.monotonic()
            if left <= 0 or not more:
                shown = self.out.decode(errors="replace")
                raise AssertionError(f"never saw {pattern!r}; the terminal showed:\n{shown}")
            more = self._read(min(left, 0.2))

    def send(self, data: bytes) -> None:
        os.write(self.fd, data)

    def wait(self, timeout: float = 15.0) -> int:
        deadline = time.monotonic() + timeout
        while self.status is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.status = os.waitstatus_to_exitcode(status)
                break
            if time.monotonic() > deadline:
                raise AssertionError(f"still running; the terminal showed:\n{self.out.decode(errors='replace')}")
            self._read(0.05)
        return self.status

    def close(self) -> None:
        """Kill whatever still runs in the terminal's session (our processes only), then reap."""
        if self.status is None:
            for entry in os.listdir("/proc"):
                try:
                    with open(f"/proc/{entry}/stat", "rb") as f:
                        fields = f.read().rsplit(b")", 1)[1].split()
                    if entry.isdigit() and int(fields[3]) == self.pid:
                        os.kill(int(entry), signal.SIGKILL)
                except (OSError, IndexError, ValueError):
                    continue
            self.wait(10)
        os.close(self.fd)


@pytest.fixture
def terminal() -> Iterator[list[Pty]]:
    ptys: list[Pty] = []
    yield ptys
    for p in ptys:
        p.close()


# -- the manual -----------------------------------------------------------------------------------

@pytest.mark.parametrize("command", [[], ["run"], ["exec"], ["ps"], ["inspect"], ["kill"], ["status"]])
def test_every_help_reads_like_a_man_page(command: list[str]) -> None:
    res = rocker(*command, "--help")
    assert res.returncode == 0, res.stderr
    text = res.stdout
    usage, _, rest = text.partition("\n\n")
    assert usage.startswith(f"usage: rocker {' '.join(command)}".rstrip())
    description = rest.split("\n\n", 1)[0]
    assert len(description.split()) >= 12, f"no description: {description!r}"
    for section in ("options:", "examples:", "exit status:"):
        assert f"\n{section}\n" in text, f"no {section} section in `rocker {' '.join(command)} --help`"
    assert re.search(r"^  rocker .+", text.split("examples:", 1)[1], re.M), "examples show no command line"
    assert re.search(r"^  (0|CMD's) ", text.split("exit status:", 1)[1], re.M)
    assert max(len(line) for line in text.splitlines()) <= 90, "help lines wider than a terminal"


def test_version_and_console_script() -> None:
    res = rocker("--version")
    assert res.returncode == 0 and res.stdout.strip() == f"rocker {rockerd_pkg.__version__}", res
    script = shutil.which("rocker", path=SCRIPTS)
    assert script, f"no `rocker` console script in {SCRIPTS}: install the project (pip install -e .)"
    res = subprocess.run([script, "--version"], capture_output=True, text=True, check=False, timeout=30)
    assert res.returncode == 0 and res.stdout.startswith("rocker "), res


# -- rocker run -----------------------------------------------------------------------------------

def test_run_prints_the_guards_name(run_args: list[str], rockerd: Any) -> None:
    res = rocker(*run_args, "--", "cat", "/proc/1/comm")
    assert res.returncode == 0, res.stderr
    name = res.stdout.strip()
    assert NAME.fullmatch(name), res.stdout
    assert f"created {name} " in rockerd.log_text(), "the daemon built no rocker of that name"
    wait_for(f"{name} to end", lambda: name not in rocker("ps").stdout)


def test_run_finds_the_package_bin_and_starts_in_the_cwd(run_args: list[str], base: Path) -> None:
    res = rocker(*run_args, "--", "sh", "-c", "hello; pwd; echo \"$PATH\"", cwd=base)
    assert res.returncode == 0, res.stderr
    hello, cwd, path = res.stdout.splitlines()
    assert hello == "hello from rocker"
    assert cwd == str(base)
    assert path.startswith(f"{base / 'exec'}/bin:")
    res = rocker(*run_args, "--workdir", "/", "--", "pwd")
    assert res.stdout == "/\n", res


@pytest.mark.parametrize(("script", "status"), [("exit 0", 0), ("exit 7", 7), ("exit 255", 255),
                                                 ("kill -KILL $$", 128 + 9), ("kill -TERM $$", 128 + 15)])
def test_run_exits_with_cmds_status(run_args: list[str], script: str, status: int) -> None:
    res = rocker(*run_args, "--", "sh", "-c", script)
    assert res.returncode == status, res.stderr


def test_signal_to_rocker_run_reaches_cmd(run_args: list[str]) -> None:
    cmd = 'trap "echo got TERM; exit 5" TERM; echo ready; while :; do sleep 0.05; done'
    p = subprocess.Popen([*ROCKER, *run_args, "--", "sh", "-c", cmd], stdin=subprocess.DEVNULL,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert p.stdout is not None and p.stdout.readline() == "ready\n"
        p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=20)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert out == "got TERM\n", err
    assert p.returncode == 5


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1])
def test_cmd_killed_by_a_signal_gives_128_plus_n(run_args: list[str], sig: signal.Signals) -> None:
    p = subprocess.Popen([*ROCKER, *run_args, "--", "sh", "-c", "echo ready; exec sleep 60"],
                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert p.stdout is not None and p.stdout.readline() == "ready\n"
        p.send_signal(sig)
        p.wait(20)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 128 + sig, p.stderr.read() if p.stderr else ""


class HeldProxy:
    """A socket in front of rockerd that holds each call until released (fds of the reply passed through)."""

    def __init__(self, target: str, path: Path) -> None:
        self.target, self.path = target, str(path)
        self.listener = socket.socket(socket.AF_UNIX)
        self.listener.bind(self.path)
        self.listener.listen(1)
        self.called, self.release = threading.Event(), threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.listener.accept()
        with conn, socket.socket(socket.AF_UNIX) as up:
            request = b""
            while not request.endswith(b"\0"):
                request += conn.recv(65536)
            self.called.set()
            self.release.wait(30)
            up.connect(self.target)
            up.sendall(request)
            reply = b""
            while not reply.endswith(b"\0"):
                data, fds, _, _ = socket.recv_fds(up, 65536, 16)
                conn.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, bytes(memoryview(
                    __import__("array").array("i", fds))))] if fds else [])
                for fd in fds:
                    os.close(fd)
                reply += data

    def close(self) -> None:
        self.release.set()
        self.thread.join(10)
        self.listener.close()


def test_signal_while_the_rocker_is_built_is_passed_on(run_args: list[str], rockerd: Any, tmp_path: Path) -> None:
    """A SIGTERM that arrives before CMD exists is held and given to CMD, not lost or fatal to rocker run alone."""
    proxy = HeldProxy(rockerd.socket, tmp_path / "held.sock")
    try:
        p = subprocess.Popen([*ROCKER, "--socket", proxy.path, *run_args, "--", "sleep", "60"],
                             stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert proxy.called.wait(20), "rocker run never called rockerd"
            p.send_signal(signal.SIGTERM)  # rocker run is inside enter_rocker, waiting for the reply
            time.sleep(0.2)
            proxy.release.set()
            p.wait(20)
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
    finally:
        proxy.close()
    assert p.returncode == 128 + signal.SIGTERM, (p.returncode, p.stderr.read() if p.stderr else "")


def test_cmd_dies_of_sigpipe_like_outside(run_args: list[str]) -> None:
    """Python ignores SIGPIPE; CMD must not inherit that (`yes` would print an error and exit 1)."""
    p = subprocess.Popen([*ROCKER, *run_args, "--", "yes"], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    assert p.stdout is not None and p.stdout.readline() == b"y\n"
    p.stdout.close()
    p.wait(20)
    assert p.returncode == 128 + signal.SIGPIPE, p.stderr.read() if p.stderr else b""


def test_cmd_not_found_or_not_executable(run_args: list[str]) -> None:
    res = rocker(*run_args, "--", "no-such-command-in-rocker")
    assert res.returncode == 127
    assert "no-such-command-in-rocker: command not found in the rocker" in one_line(res.stderr)
    res = rocker(*run_args, "--", "/etc/passwd")
    assert res.returncode == 126
    assert "/etc/passwd: cannot execute in the rocker" in one_line(res.stderr)


# -- the terminal ---------------------------------------------------------------------------------

def test_interactive_shell_on_a_terminal(run_args: list[str], terminal: list[Pty]) -> None:
    t = Pty([*ROCKER, *run_args, "--", "sh"])
    terminal.append(t)
    t.send(b"[ -t 0 ] && [ -t 1 ] && echo on-a-$((1+1))-tty\n")
    t.expect(rb"on-a-2-tty\r?\n")  # the output, not the echo of what was typed
    t.send(b"echo $((6*7))\n")
    t.expect(rb"\b42\r?\n")
    t.send(b"exit 3\n")
    assert t.wait() == 3


# CMD says which process group it is in and which group has the terminal (as its PID namespace sees
# them: 0 for a group outside it), counts the SIGINTs it gets while sleeping, and reports the count.
COUNT_INTS = ('echo "groups $(cut -d" " -f5,8 /proc/$$/stat)"; '
              'n=0; trap "n=\\$((n+1))" INT; echo ready; sleep 3; echo "count=$n"')


def test_ctrl_c_reaches_cmd_once_as_a_job(run_args: list[str], terminal: list[Pty]) -> None:
    """Started from a terminal: CMD has the terminal, ^C goes to it alone, and rocker run does not repeat it."""
    t = Pty([*ROCKER, *run_args, "--", "sh", "-c", COUNT_INTS])
    terminal.append(t)
    t.expect(rb"groups 2 2\r?\n")  # a group of its own (PID 2's), which has the terminal
    t.expect(b"ready")
    t.send(b"\x03")
    t.expect(rb"count=(\d+)")
    assert t.out.split(b"count=")[1][:1] == b"1", t.out
    assert t.wait() == 0


def test_ctrl_c_reaches_cmd_once_in_a_script(run_args: list[str], terminal: list[Pty]) -> None:
    """Run from a script: CMD stays in the script's process group, ^C reaches everyone once."""
    script = f"{shlex.join([*ROCKER, *run_args, '--', 'sh', '-c', COUNT_INTS])}; echo after=$?"
    t = Pty(["bash", "-c", script])
    terminal.append(t)
    t.expect(rb"groups 0 0\r?\n")  # the script's group (outside the rocker), which has the terminal
    t.expect(b"ready")
    t.send(b"\x03")
    t.expect(rb"count=1\r?\n")
    t.wait()


def test_ctrl_z_fg_and_ctrl_c_in_an_interactive_shell(run_args: list[str], terminal: list[Pty]) -> None:
    env = {**os.environ, "PS1": "PROMPT> ", "TERM": "dumb", "INPUTRC": "/dev/null"}
    t = Pty(["bash", "--norc", "--noprofile", "-i"], env)
    terminal.append(t)
    t.expect(b"PROMPT> ")
    t.send(shlex.join([*ROCKER, *run_args, "--", "sh", "-c", "echo started-$((40+2)); exec sleep 60"]).encode()
           + b"\n")
    t.expect(b"started-42")  # CMD's output, not the shell's echo of the command line
    t.send(b"\x1a")  # ^Z: CMD stops, rocker run follows, the shell shows the job stopped
    t.expect(rb"Stopped")
    t.expect(b"PROMPT> ")
    t.send(b"fg\n")
    time.sleep(1.0)  # rocker run continues CMD and hands it the terminal
    t.send(b"\x03")
    t.expect(b"PROMPT> ")
    t.send(b"echo status=$?\n")
    t.expect(rb"status=130")
    t.send(b"exit\n")
    assert t.wait() == 0


# -- ps, inspect, kill, status --------------------------------------------------------------------

@pytest.fixture
def busy_rocker(run_args: list[str], rockerd: Any, app_id: int) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """A rocker with four processes: guard, sh and two sleeps."""
    p = subprocess.Popen([*ROCKER, *run_args, "--", "sh", "-c", "sleep 60 & sleep 60 & wait"],
                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        def four() -> str | None:
            rs = live(rockerd.socket, app_id)
            if not rs:
                return None
            return rs[0]["guard_pname"] if len([p for p in os.listdir("/proc") if p.isdigit() and _in_ns(
                int(p), rs[0]["guard_pid"])]) == 4 else None

        yield p, wait_for("the rocker's four processes", four)
    finally:
        if p.poll() is None:
            p.kill()
        p.wait(20)


def _in_ns(pid: int, guard: int) -> bool:
    try:
        return ns_inode(pid) == ns_inode(guard)
    except OSError:
        return False


def test_ps_and_inspect_agree_with_the_daemon(busy_rocker: tuple[subprocess.Popen[str], str], rockerd: Any) -> None:
    _, name = busy_rocker
    res = rocker("ps", "--json")
    assert res.returncode == 0, res.stderr
    listed = {r["guard_pname"]: r for r in json.loads(res.stdout)}
    daemon, _ = wire.call(rockerd.socket, "io.rocker.Rocker.List", {})
    assert set(listed) >= {name}
    for r in daemon["rockers"]:
        if r["guard_pname"] in listed:
            live = ("processes", "usage")  # read at another moment: the cgroup's counters move on
            assert {k: v for k, v in listed[r["guard_pname"]].items() if k not in live} == \
                {k: v for k, v in r.items() if k not in live}
    mine = listed[name]
    assert mine["processes"] == 4

    table = rocker("ps").stdout.splitlines()
    assert table[0].split() == ["NAME", "APP", "ID", "UID", "GUARD", "PID", "AGE", "PROCS", "MEM", "CPU", "PACKAGE"]
    row = next(line.split() for line in table if line.startswith(name))
    assert row[1:4] == [str(mine["app_id"]), str(mine["uid"]), str(mine["guard_pid"])]
    assert row[5] == "4" and row[-1] == mine["app_pkg_path"]

    res = rocker("inspect", name)
    assert res.returncode == 0, res.stderr
    info = json.loads(res.stdout)
    assert {k: v for k, v in info.items() if k not in ("processes", "pids", "usage")} == \
        {k: v for k, v in mine.items() if k not in ("processes", "usage")}  # usage: live figures
    assert info["processes"] == 4 and len(info["pids"]) == 4 and info["pids"][0] == mine["guard_pid"]
    assert all(ns_inode(pid) == ns_inode(mine["guard_pid"]) for pid in info["pids"])


@pytest.mark.parametrize(("args", "status"), [((), 128 + signal.SIGKILL), (("-s", "TERM"), 128 + signal.SIGTERM),
                                              (("--signal", "15"), 128 + signal.SIGTERM)])
def test_kill_ends_the_rocker(busy_rocker: tuple[subprocess.Popen[str], str], args: tuple[str, ...],
                              status: int) -> None:
    p, name = busy_rocker
    res = rocker("kill", *args, name)
    assert res.returncode == 0 and res.stderr == "", res
    p.wait(20)
    assert p.returncode == status
    wait_for(f"{name} to go", lambda: rocker("inspect", name).returncode == 1)
    res = rocker("kill", name)
    assert res.returncode == 1
    assert f"no live rocker is called '{name}'" in one_line(res.stderr)


def test_kill_is_one_call(busy_rocker: tuple[subprocess.Popen[str], str], rockerd: Any,
                          monkeypatch: pytest.MonkeyPatch) -> None:
    """rockerd signals through the guard's pidfd, which cannot hit a reused PID: no List, no /proc check."""
    p, name = busy_rocker
    calls: list[str] = []
    real = cli_common.Daemon.call

    def counted(self: Any, method: str, parameters: Any = None) -> Any:
        calls.append(method)
        return real(self, method, parameters)

    monkeypatch.setattr(cli_common.Daemon, "call", counted)
    assert cli_module.main(["--socket", rockerd.socket, "kill", name]) == 0
    assert calls == ["io.rocker.Rocker.Kill"]
    p.wait(20)


def test_status(rockerd: Any) -> None:
    res = rocker("status")
    assert res.returncode == 0, res.stderr
    assert f"running, version {rockerd_pkg.__version__}" in res.stdout
    assert f"socket:      {rockerd.socket}" in res.stdout
    info = json.loads(rocker("status", "--json").stdout)
    assert info["daemon"]["product"] == "rockerd" and info["socket"] == rockerd.socket
    assert info["rockers"] == len(wire.call(rockerd.socket, "io.rocker.Rocker.List", {})[0]["rockers"])


def test_socket_option_overrides_the_environment(rockerd: Any, tmp_path: Path) -> None:
    env = {**os.environ, "ROCKER_SOCKET": str(tmp_path / "nothing.sock")}
    assert subprocess.run([*ROCKER, "status"], env=env, capture_output=True, check=False).returncode == 125
    for args in (["--socket", rockerd.socket, "status"], ["status", "--socket", rockerd.socket]):
        res = subprocess.run([*ROCKER, *args], env=env, capture_output=True, text=True, check=False)
        assert res.returncode == 0 and rockerd.socket in res.stdout, res


# -- errors ---------------------------------------------------------------------------------------

def test_error_when_rockerd_is_not_running(tmp_path: Path, pkg: Path) -> None:
    missing = tmp_path / "rockerd.sock"
    for args in (["ps"], ["status"], ["run", "--pkg", str(pkg), "--", "true"]):
        res = rocker("--socket", str(missing), *args)
        assert res.returncode == 125, res
        line = one_line(res.stderr)
        assert line.startswith(f"rocker: rockerd is not running (no socket at {missing})"), line
        assert "`systemctl start rockerd.socket`" in line and f"`rockerd --socket {missing}`" in line
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(missing))
    stale.close()  # a socket file nobody listens on: what a crashed daemon leaves
    res = rocker("--socket", str(missing), "run", "--pkg", str(pkg), "--", "true")
    assert res.returncode == 125
    assert f"rockerd is not running (nothing listens on {missing})" in one_line(res.stderr)


def test_error_for_a_missing_package(base: Path) -> None:
    res = rocker("run", "--pkg", str(base / "nope.squashfs"), "--", "true")
    assert res.returncode == 125
    line = one_line(res.stderr)
    assert f"package {base / 'nope.squashfs'} not found" in line and "rocker pack" in line, line
    res = rocker("run", "--pkg", str(base), "--", "true")
    assert res.returncode == 125
    assert "is a directory: pack it into an image first" in one_line(res.stderr)


def test_a_package_that_is_no_squashfs_is_refused_before_rockerd_is_asked(base: Path) -> None:
    """No daemon listens on this socket: the answer comes from the client's own look at the file."""
    (base / "app.squashfs").write_bytes(b"#!/bin/sh\necho not an image\n")
    res = rocker("--socket", str(base / "nobody.sock"), "run", "--pkg", str(base / "app.squashfs"), "--", "true")
    assert res.returncode == 125
    assert "is not a squashfs image: make one with `rocker pack DIR -o APP.squashfs`" in one_line(res.stderr)


def _tree(root: Path, mtime: int) -> None:
    (root / "bin").mkdir(parents=True)
    (root / "bin/hello").write_text("#!/bin/sh\necho hello\n")
    (root / "bin/hello").chmod(0o755)
    (root / "share").mkdir()
    for i in range(20):
        (root / f"share/f{i:02d}").write_text(str(i) * i)
    os.chown(root / "share/f03", 1000, 1000)
    for p in [root, *root.rglob("*")]:
        os.utime(p, (mtime, mtime), follow_symlinks=False)


def test_pack_makes_a_reproducible_root_owned_package(base: Path) -> None:
    """Two trees that differ in times only pack to the same bytes; every file is root's in the image."""
    _tree(base / "a", 1_000_000)
    _tree(base / "b", 2_000_000)
    digests = []
    for name in ("a", "b"):
        res = rocker("pack", str(base / name), "-o", str(base / f"{name}.squashfs"))
        assert res.returncode == 0 and res.stderr == "", res
        digests.append(hashlib.sha256((base / f"{name}.squashfs").read_bytes()).hexdigest())
    assert digests[0] == digests[1]
    assert (base / "a.squashfs").read_bytes()[:4] == b"hsqs"
    listing = subprocess.run(["unsquashfs", "-lln", str(base / "a.squashfs")], capture_output=True, text=True,
                             check=True).stdout
    owners = {line.split()[1] for line in listing.splitlines() if line[:1] in "-dl" and len(line.split()) > 5}
    assert owners == {"0/0"}, listing
    assert "squashfs-root/share/f03" in listing and not list(base.glob("*.tmp*"))
    res = rocker("pack", str(base / "a" / "bin/hello"), "-o", str(base / "x.squashfs"))
    assert res.returncode == 125 and "is not a directory" in one_line(res.stderr)
    assert not (base / "x.squashfs").exists()


@pytest.mark.parametrize(("args", "says"), [
    (["run", "--pkg", "x.squashfs", "--frobnicate", "--", "true"],
     "rocker run: unknown option or extra argument: --frobnicate: see `rocker run --help`"),
    (["run", "--pkg", "x.squashfs"], "rocker run: no CMD given"),
    (["run", "--", "true"], "rocker run: the following arguments are required: --pkg"),
    (["run", "--pkg", "x.squashfs", "--uid", "me", "--", "true"], "rocker run: argument --uid: not a number"),
    (["frob"], "rocker: unknown command 'frob': the commands are run, exec, ps, inspect, kill, pack, diff, rm-data, "
               "status"),
    (["kill", "-s", "NOPE", "rk-x"], "rocker kill: unknown signal 'NOPE'"),
    (["inspect"], "rocker inspect: the following arguments are required: NAME"),
    ([], "rocker: no command given"),
])
def test_error_for_a_bad_command_line(args: list[str], says: str) -> None:
    res = rocker(*args)
    assert res.returncode == 2, res
    assert one_line(res.stderr).startswith(says), res.stderr
    assert "--help" in res.stderr


def test_error_when_rockerd_refuses(run_args: list[str]) -> None:
    res = rocker(*run_args, "--overlay", "/usr", "--overlay", "/proc", "--", "true")
    assert res.returncode == 125
    assert "rockerd refused the request: --overlay /proc: must not be /proc" in one_line(res.stderr)


# -- the docs -------------------------------------------------------------------------------------

def test_generated_docs_are_current() -> None:
    res = subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_docs.py"), "--check"], capture_output=True,
                         text=True, check=False, timeout=60)
    assert res.returncode == 0, res.stderr


def quickstart_section(title: str) -> str:
    """The ```sh blocks of one '## ' section of docs/quickstart.md, in order."""
    text = (ROOT / "docs" / "quickstart.md").read_text()
    sections = re.split(r"^## ", text, flags=re.M)
    section = next((s for s in sections if s.split("\n", 1)[0].rstrip().endswith(title)), None)
    assert section is not None, f"docs/quickstart.md has no section '{title}'"
    blocks = re.findall(r"^```sh\n(.*?)^```$", section, flags=re.M | re.S)
    return "\n".join(blocks)


QUICKSTART_DRIVER = """\
set -eu
# A private view of /run and /var/lib: rockerd's defaults land there, not on this host.
mount -t tmpfs -o mode=0755 rocker-quickstart /run
mount -t tmpfs -o mode=0755 rocker-quickstart /var/lib
rockerd --socket /run/rocker/rockerd.sock 2>"$RQ_LOG" &
DAEMON=$!
trap 'kill "$DAEMON"; wait "$DAEMON" || true' EXIT
for _ in $(seq 300); do [ -S /run/rocker/rockerd.sock ] && break; sleep 0.05; done
sh -eux "$RQ_SCRIPT"
"""


def test_quickstart_runs_verbatim(tmp_path: Path) -> None:
    """docs/quickstart.md's 'run your own app' commands, as written, with rockerd at its default socket.

    rockerd and the commands run in a mount namespace of their own with tmpfs on /run and
    /var/lib, so the default exec and data dirs (/run/rocker/apps/hello, /var/lib/rocker/hello)
    are used for real without touching the host's.
    """
    script = quickstart_section("Package and run your own app")
    assert "rocker pack" in script and "rocker run" in script
    (tmp_path / "quickstart.sh").write_text(script)
    note = Path("/etc/rocker-quickstart.txt")
    assert not note.exists(), f"{note} exists before the test"
    data_dir_existed = Path("/var/lib/rocker/hello").exists()
    env = {k: v for k, v in os.environ.items() if k != "ROCKER_SOCKET"}
    env.update(PATH=f"{SCRIPTS}:{os.environ['PATH']}", TMPDIR=str(tmp_path), RQ_SCRIPT=str(tmp_path / "quickstart.sh"),
               RQ_LOG=str(tmp_path / "rockerd.log"))
    p = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "bash", "-c", QUICKSTART_DRIVER],
                         env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    try:
        assert not note.exists(), "the quickstart's write reached the host's /etc"
    finally:
        note.unlink(missing_ok=True)
    assert Path("/var/lib/rocker/hello").exists() == data_dir_existed
    log = (tmp_path / "rockerd.log").read_text() if (tmp_path / "rockerd.log").exists() else ""
    assert p.returncode == 0, f"stdout:\n{out}\nstderr:\n{err}\nrockerd:\n{log}"
    hellos = re.findall(r"^hello from (rk-[a-z0-9]{8}): uid 0, PID 2, and PID 1 is (rk-[a-z0-9]{8})$", out, re.M)
    assert len(hellos) == 2 and all(a == b for a, b in hellos) and hellos[0][0] != hellos[1][0], out
    for line in ("written in a rocker", "the host's /etc is untouched", "the app exited with 7",
                 "no --overlay /etc: the host's /etc"):
        assert line in out.splitlines(), f"{line!r} missing from:\n{out}"
    assert out.splitlines().count("written in a rocker") == 2, out  # the upper file, then the next rocker's /etc
