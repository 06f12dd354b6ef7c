"""The guard holds nothing of rockerd's: what its owning uid can take from it with pidfd_getfd.

The rocker's user namespace belongs to the app's uid, so a process of that uid
on the host may pidfd_getfd() from the guard (or open /proc/GUARD/fd/N). Before
the fix the guard inherited rockerd's fds 0-2: its log (here a file, under
systemd the journal stream) and the terminal it was started from.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from daemon import Daemon, start_daemon
from rockers import make_req, run_app

from rocker_client import RockerResult

SYSTEM_PYTHON = "/usr/bin/python3"  # the venv's interpreter may live where uid 1000 cannot read
UID = 1000

# Run as uid 1000: every fd number of the guard it can take, and what each is.
TAKE_FDS = r"""
import ctypes, json, os, sys
libc = ctypes.CDLL(None, use_errno=True)
pidfd = os.pidfd_open(int(sys.argv[1]))
got = {}
for n in range(256):
    fd = libc.syscall(438, pidfd, n, 0)  # pidfd_getfd
    if fd < 0:
        err = ctypes.get_errno()
        if err != 9:  # EBADF: no such fd
            got[n] = "errno %d" % err
        continue
    got[n] = os.readlink("/proc/self/fd/%d" % fd)
    os.close(fd)
print(json.dumps(got))
"""

# The guard's own fds, opened inside its rocker: its /proc, ns_last_pid, its signalfd, pidfds of the
# rocker's processes. None reaches anything outside the rocker its uid could not reach anyway.
GUARD_OWN = {"/proc", "/proc/sys/kernel/ns_last_pid", "anon_inode:[signalfd]"}


def _is_guard_own(target: str) -> bool:
    return target in GUARD_OWN or "pidfd" in target


pytestmark = pytest.mark.skipif(not os.path.exists(SYSTEM_PYTHON), reason="needs Debian's /usr/bin/python3")


def test_owner_uid_takes_nothing_of_rockerds(rockerd: Daemon, base: Path, pkg: Path) -> None:
    seen: dict[str, dict[str, str]] = {}

    def probe_guard(res: RockerResult) -> None:
        fd_dir = f"/proc/{res.guard_pid}/fd"
        seen["root"] = {n: os.readlink(f"{fd_dir}/{n}") for n in os.listdir(fd_dir)}
        p = subprocess.run([SYSTEM_PYTHON, "-I", "-c", TAKE_FDS, str(res.guard_pid)], user=UID, group=UID,
                           extra_groups=[], capture_output=True, text=True, timeout=30, env={})
        assert p.returncode == 0, p.stderr
        seen["uid1000"] = json.loads(p.stdout)

    os.chmod(pkg.parent, 0o755)
    run = run_app(make_req(base, pkg, uid=UID, gid=UID), lambda: {}, probe_guard)
    assert run.res.ok, run.res.detail
    root, taken = seen["root"], seen["uid1000"]
    # The threat is real: the owning uid may take the guard's fds at all.
    assert taken, f"uid {UID} took nothing; the probe does not probe (root saw {root})"
    assert all(not t.startswith("errno") for t in taken.values()), taken
    # (the two views may differ by a pidfd: the guard watches the rocker's processes as they come and go)
    for view in (root, taken):
        for n in ("0", "1", "2"):
            assert view[n] == "/dev/null", f"fd {n} of the guard is {view[n]!r}: {view}"
        others = {n: t for n, t in view.items() if n not in ("0", "1", "2") and not _is_guard_own(t)}
        assert not others, f"the guard holds fds that are not its own: {others}"
        assert str(rockerd.log) not in view.values(), "the guard holds rockerd's log"


def test_fds_rockerd_inherited_stay_behind(base: Path, pkg: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """rockerd may be started holding fds it never opened (a supervisor's, a shell's: not close-on-exec);
    none of them may reach the guard, where the rocker's owner could take them."""
    secret = base / "inherited"
    secret.write_text("the supervisor's\n")
    fd = os.open(secret, os.O_RDWR)  # not close-on-exec once passed: rockerd holds it as its parent gave it
    try:
        high = os.dup2(fd, 40)  # above every fd the spawn path lifts its own to
        d = start_daemon(base / "inheriting", pass_fds=(fd, high))
    finally:
        os.close(fd)
        os.close(40)
    monkeypatch.setenv("ROCKER_SOCKET", d.socket)
    seen: dict[str, str] = {}

    def probe_guard(res: RockerResult) -> None:
        fd_dir = f"/proc/{res.guard_pid}/fd"
        seen.update({n: os.readlink(f"{fd_dir}/{n}") for n in os.listdir(fd_dir)})

    os.chmod(pkg.parent, 0o755)
    try:
        held = {n: os.readlink(f"/proc/{d.proc.pid}/fd/{n}") for n in (str(fd), str(high))}
        run = run_app(make_req(base, pkg, uid=UID, gid=UID), lambda: {}, probe_guard)
    finally:
        d.stop()
    assert held == {str(fd): str(secret), str(high): str(secret)}, "rockerd did not inherit the fds"
    assert run.res.ok, run.res.detail
    assert seen and str(secret) not in seen.values(), f"the guard holds an fd rockerd inherited: {seen}"
