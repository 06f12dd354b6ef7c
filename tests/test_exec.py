"""`rocker exec` and join_rocker: a second command in a live rocker, for root and the rocker's uid only."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from daemon import Daemon, start_daemon
from rockers import wait_gone

from rocker_client import RockerErr, wire

SYSTEM_PYTHON = "/usr/bin/python3"  # the test's own interpreter may live where uid 1000 cannot read
UID, OTHER = 1000, 1001
ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(not os.path.exists(SYSTEM_PYTHON), reason="needs Debian's /usr/bin/python3")


@pytest.fixture
def world(base: Path, pkg: Path) -> Iterator[tuple[Path, Daemon]]:
    """A daemon uid 1000 can reach; rocker_client where it can import it; dirs (and a shared dir to
    overlay) per uid."""
    lib = base / "lib"
    for package in ("rocker_client", "rocker_sys"):
        shutil.copytree(ROOT / package, lib / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(pkg, base / "app.squashfs")
    for uid in (0, UID, OTHER):
        for d in ("exec", "data", "shared"):
            (base / str(uid) / d).mkdir(parents=True)
            os.chown(base / str(uid) / d, uid, uid)
    for p in [base, *base.rglob("*")]:
        p.chmod(p.stat().st_mode | 0o755 if p.is_dir() else p.stat().st_mode | 0o644)
    for uid in (0, UID, OTHER):
        (base / str(uid) / "data").chmod(0o700)
    d = start_daemon(base / "d", "--socket-mode", "0666")
    yield base, d
    d.stop()


def cli(world: tuple[Path, Daemon], uid: int, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """The rocker command as `uid`, from the copy of the client that uid can read."""
    base, d = world
    code = (f"import sys; sys.path.insert(0, {str(base / 'lib')!r}); from rocker_client.cli import main; "
            f"sys.exit(main({list(args)!r}))")
    return subprocess.run([SYSTEM_PYTHON, "-I", "-c", code], user=uid, group=uid, extra_groups=[],
                          env={"ROCKER_SOCKET": d.socket, "PATH": "/usr/bin:/bin"}, capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL, cwd="/")


class Holder:
    """A rocker whose first command wrote a file to its overlay and sleeps; made by root for `uid`."""

    def __init__(self, world: tuple[Path, Daemon], uid: int, by: int | None = None) -> None:
        base, d = world
        self.socket = d.socket
        shared = base / str(uid) / "shared"
        self.shared = shared
        by = uid if by is None else by
        code = (f"import sys; sys.path.insert(0, {str(base / 'lib')!r}); from rocker_client.cli import main; "
                f"sys.exit(main(['run', '--pkg', {str(base / 'app.squashfs')!r}, '--uid', '{uid}', "
                f"'--gid', '{uid}', '--exec-dir', {str(base / str(uid) / 'exec')!r}, "
                f"'--data-dir', {str(base / str(uid) / 'data')!r}, '--overlay', {str(shared)!r}, '--', "
                f"'sh', '-c', 'echo first > {shared}/marker; cat /proc/1/comm; exec sleep 60']))")
        self.proc = subprocess.Popen([SYSTEM_PYTHON, "-I", "-c", code], user=by, group=by, extra_groups=[],
                                     env={"ROCKER_SOCKET": d.socket, "PATH": "/usr/bin:/bin"},
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, cwd="/")
        assert self.proc.stdout is not None
        self.name = self.proc.stdout.readline().strip()
        assert self.name.startswith("rk-"), self.proc.stderr.read() if self.proc.stderr else ""
        reply, _ = wire.call(d.socket, "io.rocker.Rocker.List", {})
        self.guard_pid = next(r["guard_pid"] for r in reply["rockers"] if r["guard_pname"] == self.name)

    def end(self) -> None:
        try:
            wire.call(self.socket, "io.rocker.Rocker.Kill", {"guard_pname": self.name})
        except wire.RemoteError:
            pass
        self.proc.wait(20)
        wait_gone(self.guard_pid, 5)


@pytest.fixture
def holders(world: tuple[Path, Daemon]) -> Iterator[list[Holder]]:
    made: list[Holder] = []
    yield made
    for h in made:
        h.end()


PROBE = ("cat {shared}/marker; cat /proc/1/comm; stat -L -c %i /proc/self/ns/pid; "
         "for p in /proc/[0-9]*; do cat $p/comm; done | sort | tr '\\n' ' '")


@pytest.mark.parametrize("uid", [0, UID])
def test_exec_sees_the_first_commands_files_and_processes(world: tuple[Path, Daemon], holders: list[Holder],
                                                          uid: int) -> None:
    """The second command is in the first one's PID namespace (same inode; sees its sleep and the guard as
    PID 1) and mount namespace (reads what it wrote to an overlay, which the host does not see)."""
    h = Holder(world, uid)
    holders.append(h)
    res = cli(world, uid, "exec", h.name, "--", "sh", "-c", PROBE.format(shared=h.shared))
    assert res.returncode == 0, res.stderr
    marker, pid1, ns_ino, comms = res.stdout.splitlines()
    assert marker == "first"
    assert not (h.shared / "marker").exists(), "the first command's write reached the host"
    assert pid1 == h.name
    assert int(ns_ino) == os.stat(f"/proc/{h.guard_pid}/ns/pid").st_ino
    assert "sleep" in comms.split() and h.name in comms.split()


@pytest.mark.parametrize(("script", "status"), [("exit 0", 0), ("exit 7", 7), ("kill -TERM $$", 128 + 15),
                                                ("nosuchcommand", 127)])
def test_exec_exit_status_passes_through(world: tuple[Path, Daemon], holders: list[Holder], script: str,
                                         status: int) -> None:
    h = Holder(world, UID)
    holders.append(h)
    res = cli(world, UID, "exec", h.name, "sh", "-c", script)
    assert res.returncode == status, res.stderr
    if status == 127:
        res = cli(world, UID, "exec", h.name, "--", "nosuchcommand")
        assert res.returncode == 127 and res.stderr.startswith("rocker exec: nosuchcommand: command not found"), res


def _join_as(world: tuple[Path, Daemon], uid: int, name: str) -> dict[str, Any]:
    """join_rocker from the Python API as `uid`; the result, and the app's exit status."""
    base, d = world
    code = (f"import sys, os, json; sys.path.insert(0, {str(base / 'lib')!r})\n"
            "from rocker_client import join_rocker\n"
            f"res = join_rocker({name!r}, lambda _: 3)\n"
            "status = os.waitstatus_to_exitcode(os.waitpid(res.app_pid, 0)[1]) if res.app_pid else None\n"
            "print(json.dumps({'err_no': int(res.err_no), 'detail': res.detail, "
            "'kind': res.cause.kind if res.cause else '', 'status': status}))")
    p = subprocess.run([SYSTEM_PYTHON, "-I", "-c", code], user=uid, group=uid, extra_groups=[],
                       env={"ROCKER_SOCKET": d.socket}, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    out: dict[str, Any] = json.loads(p.stdout)
    return out


def test_only_root_and_the_rockers_uid_may_join(world: tuple[Path, Daemon], holders: list[Holder]) -> None:
    """uid 1000 joins its own rocker, also one root made for it; not root's, not uid 1001's; root joins all."""
    _, d = world
    own, made_by_root, roots, others = (Holder(world, UID), Holder(world, UID, by=0), Holder(world, 0),
                                        Holder(world, OTHER, by=0))
    holders += [own, made_by_root, roots, others]
    for h in (own, made_by_root):
        assert _join_as(world, UID, h.name) == {"err_no": 0, "detail": "", "kind": "", "status": 3}
    for h, owner in ((roots, 0), (others, OTHER)):
        out = _join_as(world, UID, h.name)
        assert out["err_no"] == RockerErr.param_invalid and out["kind"] == "PermissionDenied", out
        assert f"only root and uid {owner} may join it, not uid {UID}" in out["detail"], out
        assert f"refused request of caller uid {UID}: Join: {h.name} runs as uid {owner}" in d.log_text()
        res = cli(world, UID, "exec", h.name, "--", "true")
        assert res.returncode == 125 and "rocker: rockerd refused to let you join" in res.stderr, res
        assert _join_as(world, 0, h.name)["status"] == 3


def test_a_rocker_that_is_gone(world: tuple[Path, Daemon], holders: list[Holder]) -> None:
    """A name that never lived, and one that ended: a clear error, exit status 1, from the CLI and the API."""
    h = Holder(world, UID)
    h.end()
    for name in (h.name, "rk-00000000"):
        res = cli(world, UID, "exec", name, "--", "true")
        assert res.returncode == 1, res
        assert res.stderr == f"rocker: no live rocker is called {name!r}: `rocker ps` lists the live ones\n"
        out = _join_as(world, UID, name)
        assert out["err_no"] == RockerErr.enter_rocker_failed and out["kind"] == "NoSuchRocker", out
        assert out["detail"].endswith(f"no live rocker is called {name!r}"), out


def test_a_signal_to_rocker_exec_reaches_cmd(world: tuple[Path, Daemon], holders: list[Holder]) -> None:
    """The job handling of `rocker run`: a TERM sent to `rocker exec` is passed on to CMD, whose status is ours."""
    base, d = world
    h = Holder(world, UID)
    holders.append(h)
    code = (f"import sys; sys.path.insert(0, {str(base / 'lib')!r}); from rocker_client.cli import main; "
            f"sys.exit(main(['exec', {h.name!r}, 'sh', '-c', "
            "'trap \"echo got TERM; exit 5\" TERM; echo ready; while :; do sleep 0.05; done']))")
    p = subprocess.Popen([SYSTEM_PYTHON, "-I", "-c", code], user=UID, group=UID, extra_groups=[],
                         env={"ROCKER_SOCKET": d.socket, "PATH": "/usr/bin:/bin"}, stdin=subprocess.DEVNULL,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert p.stdout is not None
    assert p.stdout.readline() == "ready\n"
    p.send_signal(signal.SIGTERM)
    assert p.wait(20) == 5
    assert p.stdout.read() == "got TERM\n"
