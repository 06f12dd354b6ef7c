"""Callers other than root: their own rockers only, checked on the files actually used."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from daemon import Daemon, start_daemon

from rocker_client import RockerErr

SYSTEM_PYTHON = "/usr/bin/python3"  # the test's own interpreter may live where uid 1000 cannot read
UID = 1000

APP = r"""
import json, os, socket
print("APP " + json.dumps({"uid": os.getuid(), "host": socket.gethostname(),
                           "pid1": open("/proc/1/comm").read().strip()}), flush=True)
"""

CALLER = r"""
import json, os, sys
from rocker_client import Exec, RockerRequest, enter, enter_rocker
params = json.loads(sys.argv[1])
kind = sys.argv[2]

def app(_):
    exec(APP)
    return 5

def no_fork(*a):
    raise AssertionError("an Exec app was started by a fork of the caller")

if kind == "exec":  # started by librocker-exec: a fork of ours would be the wrong path
    enter._start_direct = enter._start_via_intermediate = no_fork
    app = Exec(sys.executable, [sys.executable, "-c", APP + "\nraise SystemExit(5)"])
res = enter_rocker(RockerRequest(**params), app)
status = os.waitpid(res.app_pid, 0)[1] if res.app_pid else -1
print("RES " + json.dumps({"err_no": int(res.err_no), "detail": res.detail, "name": res.guard_pname,
                           "guard_pid": res.guard_pid, "status": status}), flush=True)
"""

pytestmark = pytest.mark.skipif(not os.path.exists(SYSTEM_PYTHON), reason="needs Debian's /usr/bin/python3")


def copy_client(base: Path) -> None:
    """rocker_client and its kernel layer where uid 1000 can import them (base/lib)."""
    for package in ("rocker_client", "rocker_sys"):
        shutil.copytree(Path(__file__).parent.parent / package, base / "lib" / package,
                        ignore=shutil.ignore_patterns("__pycache__"))


def prepare_user_base(base: Path, pkg: Path) -> None:
    """The client, the package and uid 1000's own exec and data dirs (0700), all reachable by it."""
    copy_client(base)
    shutil.copy(pkg, base / "app.squashfs")
    for d in ("u/exec", "u/data"):
        (base / d).mkdir(parents=True)
        os.chown(base / d, UID, UID)
    for p in [base, *base.rglob("*")]:
        p.chmod(p.stat().st_mode | 0o755 if p.is_dir() else p.stat().st_mode | 0o644)
    (base / "u/data").chmod(0o700)


@pytest.fixture
def world(base: Path, pkg: Path) -> Iterator[tuple[Path, Daemon]]:
    """A daemon whose socket uid 1000 can reach, rocker_client where it can import it, its own dirs."""
    prepare_user_base(base, pkg)
    d = start_daemon(base / "d", "--socket-mode", "0666")
    yield base, d
    d.stop()


def _script(base: Path) -> str:
    """CALLER, importing the copy of rocker_client uid 1000 can read."""
    return f"import sys; sys.path.insert(0, {str(base / 'lib')!r})\nAPP = {APP!r}\n" + CALLER


def run_as(world: tuple[Path, Daemon], uid: int, gid: int, changes: dict[str, Any] | None = None,
           app: str = "callable") -> dict[str, Any]:
    base, d = world
    params = {"app_id": 1, "uid": uid, "gid": gid, "app_pkg_path": str(base / "app.squashfs"),
              "app_exec_dir": str(base / "u/exec"), "app_data_dir": str(base / "u/data"),
              "app_overlay_dirs": ["/usr"], **(changes or {})}
    p = subprocess.run([SYSTEM_PYTHON, "-I", "-c", _script(base), json.dumps(params), app],
                       user=uid, group=gid, extra_groups=[], env={"ROCKER_SOCKET": d.socket},
                       capture_output=True, text=True, timeout=60)
    out: dict[str, Any] = {"stderr": p.stderr}
    for line in p.stdout.splitlines():
        kind, _, rest = line.partition(" ")
        out[kind] = json.loads(rest)
    assert "RES" in out, p.stdout + p.stderr
    return out


@pytest.mark.parametrize("app", ["callable", "exec"])
def test_own_rocker_works(world: tuple[Path, Daemon], app: str) -> None:
    """A callable app (fork, then an intermediate) and an Exec app (librocker-exec's intermediate,
    no fork of the caller) run the same way for a uid-1000 launcher."""
    out = run_as(world, UID, UID, app=app)
    res = out["RES"]
    assert res["err_no"] == RockerErr.success, res["detail"]
    assert os.waitstatus_to_exitcode(res["status"]) == 5
    assert out["APP"] == {"uid": 0, "host": res["name"], "pid1": res["name"]}


@pytest.mark.parametrize(("uid", "gid", "changes", "needle"), [
    (UID, UID, {"uid": 1001}, "may only ask for a rocker of its own uid"),
    (UID, UID, {"gid": 0}, "may only ask for a gid it holds"),
    (UID, UID, {"seccomp": "unconfined"}, "seccomp: only root may ask for 'unconfined'"),
    (UID, UID, {"seccomp": "complain"}, "seccomp: only root may ask for 'complain'"),
    (UID, UID, {"app_exec_dir": "ROOTOWNED"}, "must be owned by uid 1000"),
    (UID, UID, {"app_data_dir": "MISSING"}, "it must exist"),
    (UID, UID, {"app_data_dir": "SYMLINK"}, "it must exist"),
    (UID, UID, {"app_pkg_path": "UNREADABLE"}, "not readable by uid 1000"),
    (UID, UID, {"app_pkg_path": "HIDDEN"}, "not readable by uid 1000"),
])
def test_refusals(world: tuple[Path, Daemon], uid: int, gid: int, changes: dict[str, Any], needle: str) -> None:
    base, d = world
    for key, value in list(changes.items()):
        if value == "ROOTOWNED":
            (base / "rootowned").mkdir()
            changes[key] = str(base / "rootowned")
        elif value == "MISSING":
            changes[key] = str(base / "u/nodata")
        elif value == "SYMLINK":
            (base / "u/link").symlink_to(base / "u/data")
            changes[key] = str(base / "u/link")
        elif value == "UNREADABLE":
            shutil.copy(base / "app.squashfs", base / "secret.squashfs")
            (base / "secret.squashfs").chmod(0o600)
            changes[key] = str(base / "secret.squashfs")
        elif value == "HIDDEN":  # readable file in a dir the caller cannot walk: root's eyes must not help
            (base / "private").mkdir(mode=0o700)
            shutil.copy(base / "app.squashfs", base / "private/app.squashfs")
            (base / "private/app.squashfs").chmod(0o644)
            changes[key] = str(base / "private/app.squashfs")
    res = run_as(world, uid, gid, changes)["RES"]
    assert res["err_no"] == RockerErr.param_invalid, res
    assert needle in res["detail"], res["detail"]
    assert f"refused request of caller uid {uid}" in d.log_text()
    assert not (base / "u/nodata").exists()


def test_other_uid_cannot_open_a_guards_namespaces(world: tuple[Path, Daemon]) -> None:
    """The guard is not dumpable: only root, through the daemon, hands out its namespaces."""
    base, d = world
    r, w = os.pipe()
    script = _script(base).replace("return 5", "sys.stdin.read(); return 5")  # holds its rocker until EOF
    holder = subprocess.Popen([SYSTEM_PYTHON, "-I", "-c", script,
                               json.dumps({"app_id": 1, "uid": UID, "gid": UID,
                                           "app_pkg_path": str(base / "app.squashfs"),
                                           "app_exec_dir": str(base / "u/exec"),
                                           "app_data_dir": str(base / "u/data"), "app_overlay_dirs": []}),
                               "callable"],
                              user=UID, group=UID, extra_groups=[], env={"ROCKER_SOCKET": d.socket},
                              stdin=r, stdout=subprocess.PIPE, text=True)
    os.close(r)
    try:
        line = holder.stdout.readline()  # type: ignore[union-attr]
        assert line.startswith("APP "), line
        guards = [int(p) for p in os.listdir("/proc") if p.isdigit() and _comm(int(p)) == json.loads(line[4:])["pid1"]]
        assert len(guards) == 1
        probe = subprocess.run([SYSTEM_PYTHON, "-I", "-c", f"open('/proc/{guards[0]}/ns/user')"], user=1001,
                               group=1001, extra_groups=[], capture_output=True, text=True, timeout=30)
        assert "PermissionError" in probe.stderr
    finally:
        os.close(w)
        holder.wait(30)


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


@pytest.mark.parametrize("uid", [0, UID])
def test_buffered_output_of_the_caller_is_printed_once(world: tuple[Path, Daemon], uid: int) -> None:
    """A caller's unflushed stdout (a pipe: block-buffered) is copied into every fork; the app's exit
    flushes its copy. Root takes the one-fork path, uid 1000 the intermediate: neither may repeat it."""
    base, d = world
    params = {"app_id": 1, "uid": uid, "gid": uid, "app_pkg_path": str(base / "app.squashfs"),
              "app_exec_dir": str(base / "u/exec"), "app_data_dir": str(base / "u/data"), "app_overlay_dirs": []}
    script = _script(base).replace("res = enter_rocker(", "print('BUFFERED-BY-CALLER')\nres = enter_rocker(")
    p = subprocess.run([SYSTEM_PYTHON, "-I", "-c", script, json.dumps(params), "callable"],
                       user=uid, group=uid, extra_groups=[], env={"ROCKER_SOCKET": d.socket},
                       capture_output=True, text=True, timeout=60)
    assert '"err_no": 0' in p.stdout, p.stdout + p.stderr
    assert p.stdout.count("BUFFERED-BY-CALLER") == 1, p.stdout
    assert p.stdout.count("APP ") == 1, p.stdout


@pytest.mark.parametrize("dirs", [["--exec-dir", "EXEC", "--data-dir", "DATA"], []])
def test_run_without_home_says_what_to_pass(world: tuple[Path, Daemon], dirs: list[str]) -> None:
    """A uid with no passwd entry and no HOME: with both dirs given the run needs no home; without,
    the CLI names the options to pass. Never a traceback."""
    base, d = world
    uid = 4321  # no entry in the user database
    argv = [a.replace("EXEC", str(base / "u/exec")).replace("DATA", str(base / "u/data")) for a in dirs]
    code = (f"import sys; sys.path.insert(0, {str(base / 'lib')!r}); from rocker_client.cli import main; "
            f"sys.exit(main(['run', '--pkg', {str(base / 'app.squashfs')!r}, *{argv!r}, '--', '/bin/true']))")
    p = subprocess.run([SYSTEM_PYTHON, "-I", "-c", code], user=uid, group=uid, extra_groups=[],
                       env={"ROCKER_SOCKET": d.socket}, capture_output=True, text=True, timeout=60)
    assert "Traceback" not in p.stderr, p.stderr
    assert p.returncode != 0
    if dirs:  # reached rockerd, which refuses dirs uid 4321 does not own
        assert "must be owned by uid 4321" in p.stderr, p.stderr
    else:
        assert "HOME is unset" in p.stderr and "--data-dir" in p.stderr, p.stderr


def test_socket_group_lets_its_members_in(base: Path) -> None:
    """--socket-group: the socket is root:GROUP with --socket-mode from the moment it has its name;
    a member of GROUP may connect, anyone else is refused by the kernel."""
    d = start_daemon(base / "g", "--socket-mode", "0660", "--socket-group", "4242")
    try:
        st = os.stat(d.socket)
        assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (0, 4242, 0o660)
        assert not [p for p in os.listdir(base / "g") if p.startswith(".rockerd-bind-")]
        deadline = time.monotonic() + 5  # the socket answers before the start-up log is all written
        while f"serving {d.socket}" not in d.log_text() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert f"serving {d.socket}" in d.log_text()
        probe = ("import socket, sys; s = socket.socket(socket.AF_UNIX)\n"
                 "try:\n    s.connect(sys.argv[1]); print('connected')\n"
                 "except OSError as e:\n    print(e.errno)")
        for groups, expected in (([4242], "connected"), ([], str(errno.EACCES))):
            p = subprocess.run([SYSTEM_PYTHON, "-I", "-c", probe, d.socket], user=UID, group=UID,
                               extra_groups=groups, capture_output=True, text=True, timeout=30)
            assert p.stdout.strip() == expected, (groups, p.stdout, p.stderr)
    finally:
        d.stop()
