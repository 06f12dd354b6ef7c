"""A uid-1000 caller against rockerd's filesystem work (issue 13: items 1, 3, 4, 8).

Each test is the attack itself, made by uid 1000 through the socket against a real rockerd on
the real kernel, and fails on a rockerd that has the hole (see the report of each commit).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from daemon import Daemon
from test_nonroot import CALLER, SYSTEM_PYTHON, UID, world  # noqa: F401  (world: the fixture)

from rocker_client import RockerErr, wire
from rockerd import policy

GID_SG = 54321  # a group no user of this machine holds: a setgid dir of it is somebody else's

Params = dict[str, Any]

# Races run this long: enough rounds to fail on the old code; longer in an emulated VM (scripts/test-vm.sh)
RACE_SECONDS = 4 * float(os.environ.get("ROCKER_TEST_TIME_SCALE", "1"))


def _params(base: Path, **changes: Any) -> Params:
    return {"app_id": 1, "uid": UID, "gid": UID, "app_pkg_path": str(base / "app.squashfs"),
            "app_exec_dir": str(base / "u/exec"), "app_data_dir": str(base / "u/data"),
            "app_overlay_dirs": ["/usr"], **changes}


def _as_uid(base: Path, d: Daemon, code: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run `code` as uid 1000 with the rocker_client copy it can read."""
    script = f"import sys; sys.path.insert(0, {str(base / 'lib')!r})\n" + code
    return subprocess.run([SYSTEM_PYTHON, "-I", "-c", script, *args], user=UID, group=UID, extra_groups=[],
                          env={"ROCKER_SOCKET": d.socket}, capture_output=True, text=True, timeout=timeout)


def _run_app(base: Path, d: Daemon, params: Params, app: str) -> dict[str, Any]:
    """A real rocker for uid 1000 whose callable app runs `app` (it prints 'APP <json>')."""
    p = _as_uid(base, d, f"APP = {app!r}\n" + CALLER, json.dumps(params), "callable")
    lines = (line.partition(" ") for line in p.stdout.splitlines())
    out: dict[str, Any] = {kind: json.loads(rest) for kind, _, rest in lines}
    assert "RES" in out, p.stdout + p.stderr
    return {"stderr": p.stderr, **out}


def _mkdirs_as_uid(*paths: Path) -> None:
    """What the caller can make in its own data dir, made as it would."""
    for p in paths:
        subprocess.run(["mkdir", "-p", "-m", "0755", str(p)], user=UID, group=UID, extra_groups=[], check=True)


# --- item 1: root chown/chmod by name, raced with hard links ---------------------------------------

CREATOR = r"""
import json, sys, time
from rocker_client import wire
sock, params, until = sys.argv[1], json.loads(sys.argv[2]), time.monotonic() + float(sys.argv[3])
made = failed = 0
while time.monotonic() < until:
    try:
        reply, fds = wire.call(sock, "io.rocker.Rocker.Create", params, timeout=10)
    except wire.RemoteError:
        failed += 1
        continue
    for fd in fds:
        import os; os.close(fd)
    wire.call(sock, "io.rocker.Rocker.Kill", {"guard_pname": reply["guard_pname"]}, timeout=10)
    made += 1
print(json.dumps({"made": made, "failed": failed}))
"""

RACER = r"""
import json, os, sys, time
target, evil, until = sys.argv[1], sys.argv[2], time.monotonic() + float(sys.argv[3])
swaps = 0
while time.monotonic() < until:
    try:
        os.rmdir(target)  # the dir rockerd has just made, before it sets its owner and mode
    except OSError:
        continue
    try:
        os.link(evil, target)
    except OSError:
        continue
    swaps += 1
    t = time.monotonic() + 0.002
    while time.monotonic() < t:
        pass
    st = os.stat(evil)
    os.unlink(target)
    if (st.st_uid, st.st_gid) != (os.getuid(), os.getgid()) or st.st_mode & 0o6000:
        break
st = os.stat(evil)
print(json.dumps({"swaps": swaps, "uid": st.st_uid, "gid": st.st_gid, "mode": st.st_mode & 0o7777}))
"""


def test_mirrored_upper_cannot_be_swapped_for_a_hard_link(world: tuple[Path, Daemon]) -> None:  # noqa: F811
    """Item 1: while rockerd makes upper/<D> for a setgid dir D of another group, uid 1000 swaps
    the new name for a hard link to its own executable; the executable must never take D's
    owner, group or set-id bits (on the old rockerd it became root:54321 02775 within a second)."""
    base, d = world
    sg = base / "sg"
    sg.mkdir()
    os.chown(sg, 0, GID_SG)
    sg.chmod(0o2775)
    upper = base / "u/data/upper"
    _mkdirs_as_uid(upper / str(base).lstrip("/"))  # the caller's own dirs on the way: allowed
    evil = base / "u/data/evil"
    shutil.copy("/bin/true", evil)
    os.chown(evil, UID, UID)
    evil.chmod(0o755)
    secs = str(RACE_SECONDS)
    racer = subprocess.Popen([SYSTEM_PYTHON, "-I", "-c", RACER, str(upper / str(sg).lstrip("/")), str(evil), secs],
                             user=UID, group=UID, extra_groups=[], stdout=subprocess.PIPE, text=True)
    made = _as_uid(base, d, CREATOR, d.socket, json.dumps(_params(base, app_overlay_dirs=[str(sg)])), secs)
    out, _ = racer.communicate(timeout=30)
    race = json.loads(out)
    counts = json.loads(made.stdout or "{}")
    assert counts.get("made", 0) + counts.get("failed", 0) > 20, (made.stdout, made.stderr)
    assert race["swaps"] > 0, (race, counts)  # the race was run: rockerd made dirs the caller swapped
    assert (race["uid"], race["gid"], race["mode"]) == (UID, UID, 0o755), (race, counts)
    st = evil.stat()
    assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (UID, UID, 0o755)


def test_mirrored_upper_has_no_set_id_bits(world: tuple[Path, Daemon]) -> None:  # noqa: F811
    """Set-id bits are not mirrored: upper/<D> of a 02775 dir is 0775 (new files the app makes
    there do not take D's group), and one an older rockerd left with them is cleared."""
    base, d = world
    sg = base / "sg"
    sg.mkdir()
    os.chown(sg, 0, GID_SG)
    sg.chmod(0o2775)
    up = base / "u/data/upper" / str(sg).lstrip("/")
    for _ in range(2):
        res = _run_app(base, d, _params(base, app_overlay_dirs=[str(sg)]), "print('APP {}')")["RES"]
        assert res["err_no"] == RockerErr.success, res
        st = up.stat()
        assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (0, GID_SG, 0o775)
        up.chmod(0o2775)  # as an older rockerd made it


# --- item 3: reading inside directories closed to the caller ----------------------------------------

READ_SECRET = r"""
import json, os
out = {}
try:
    out["list"] = os.listdir(SECRET)
except OSError as e:
    out["list"] = "errno %d" % e.errno
try:
    out["read"] = open(SECRET + "/inner/file.txt").read()
except OSError as e:
    out["read"] = "errno %d" % e.errno
print("APP " + json.dumps(out), flush=True)
"""  # straight-line: the caller exec()s it inside a function, where a closure would not see SECRET


def _secret(base: Path, name: str = "secret") -> Path:
    """root's 0700 dir with a world-readable file inside: nothing uid 1000 may list or read."""
    s = base / name
    (s / "inner").mkdir(parents=True)
    s.chmod(0o700)
    (s / "inner").chmod(0o755)
    (s / "inner/file.txt").write_text("root's eyes only\n")
    (s / "inner/file.txt").chmod(0o644)
    return s


def test_precreated_upper_cannot_open_a_closed_dir(world: tuple[Path, Daemon]) -> None:  # noqa: F811
    """Item 3: uid 1000 pre-creates upper/<D> as its own 0755 dir for D = a root 0700 dir; the
    request must be refused naming that dir (the old rockerd used it, and the app listed D and
    read the file inside it)."""
    base, d = world
    secret = _secret(base)
    app = f"SECRET = {str(secret)!r}\n" + READ_SECRET
    params = _params(base, app_overlay_dirs=[str(secret)])
    plain = _run_app(base, d, params, app)  # without tampering: the overlay keeps D closed
    assert plain["RES"]["err_no"] == RockerErr.success, plain
    assert plain["APP"] == {"list": "errno 13", "read": "errno 13"}
    up = base / "u/data/upper" / str(secret).lstrip("/")
    assert (up.stat().st_uid, up.stat().st_mode & 0o7777) == (0, 0o700)
    data = base / "u/data2"  # a fresh data dir, where the caller makes upper/<D> first
    data.mkdir(mode=0o700)
    os.chown(data, UID, UID)
    up = data / "upper" / str(secret).lstrip("/")
    _mkdirs_as_uid(up)
    params["app_data_dir"] = str(data)
    out = _run_app(base, d, params, app)
    assert out["RES"]["err_no"] == RockerErr.param_invalid, out
    assert out.get("APP") is None, out
    assert f"upper dir {up} is {UID}:{UID} 0755" in out["RES"]["detail"], out["RES"]["detail"]
    assert f"overlay dir {secret} is 0:0 0700" in out["RES"]["detail"], out["RES"]["detail"]


EXCHANGER = r"""
import ctypes, json, os, sys, time
libc = ctypes.CDLL(None, use_errno=True)
a, b, until = sys.argv[1].encode(), sys.argv[2].encode(), time.monotonic() + float(sys.argv[3])
n = 0
while time.monotonic() < until:
    if libc.renameat2(-100, a, -100, b, 2) == 0:  # RENAME_EXCHANGE
        n += 1
print(json.dumps({"exchanges": n}))
"""


def test_shared_overlay_upper_swapped_during_the_build(world: tuple[Path, Daemon]) -> None:  # noqa: F811
    """Item 3, raced: two closed dirs share one overlay (over their parent), which reaches each
    by name inside the caller's upper/<parent>; uid 1000 keeps exchanging upper/<D> with a 0755
    dir of its own. No app may ever list D (the checked dir must be the one mounted)."""
    base, d = world
    top = base / "top"
    top.mkdir()
    secrets = [_secret(top, "a"), _secret(top, "b")]
    up = base / "u/data/upper" / str(secrets[0]).lstrip("/")
    fake = up.with_name("fake")
    _mkdirs_as_uid(up.parent, fake)
    params = _params(base, app_overlay_dirs=[str(s) for s in secrets])
    first = _run_app(base, d, params, "print('APP {}')")  # makes upper/<a> (root 0700)
    assert first["RES"]["err_no"] == RockerErr.success, first
    app = f"SECRET = {str(secrets[0])!r}\n" + READ_SECRET
    secs = str(RACE_SECONDS)
    ex = subprocess.Popen([SYSTEM_PYTHON, "-I", "-c", EXCHANGER, str(up), str(fake), secs],
                          user=UID, group=UID, extra_groups=[], stdout=subprocess.PIPE, text=True)
    seen: list[Any] = []
    until = time.monotonic() + float(secs)
    runs = 0
    try:
        while time.monotonic() < until:
            out = _run_app(base, d, params, app)
            runs += 1
            if out["RES"]["err_no"] == RockerErr.success and out["APP"]["list"] != "errno 13":
                seen.append(out["APP"])
    finally:
        exchanges = json.loads(ex.communicate(timeout=30)[0] or "{}").get("exchanges", 0)
    assert exchanges > 0 and runs > 3, (exchanges, runs)
    assert not seen, f"the app listed a closed dir: {seen[:1]}"


# --- item 4: a FIFO as the package --------------------------------------------------------------------

FIFO_CALLER = r"""
import json, sys, time
from rocker_client import wire
t0 = time.monotonic()
try:
    wire.call(sys.argv[1], "io.rocker.Rocker.Create", json.loads(sys.argv[2]), timeout=20)
    out = {"ok": True}
except wire.RemoteError as e:
    out = {"error": e.name, "params": e.parameters}
except wire.WireError as e:
    out = {"wire": str(e)}
out["secs"] = time.monotonic() - t0
print(json.dumps(out))
"""


def test_fifo_package_does_not_stall_the_daemon(world: tuple[Path, Daemon]) -> None:  # noqa: F811
    """Item 4: uid 1000 names a FIFO it holds as its package. Its request is refused at once and
    another client's request is answered meanwhile (the old rockerd hung in open() on its loop
    until the FIFO got a writer)."""
    base, d = world
    fifo = base / "u/pkg.fifo"
    os.mkfifo(fifo)
    os.chown(fifo, UID, UID)
    fifo.chmod(0o644)
    out: dict[str, Any] = {}

    def hostile() -> None:
        p = _as_uid(base, d, FIFO_CALLER, d.socket, json.dumps(_params(base, app_pkg_path=str(fifo))))
        out.update(json.loads(p.stdout or "{}"), stderr=p.stderr)

    t = threading.Thread(target=hostile)
    t.start()
    time.sleep(0.5)  # the hostile request is in
    t0 = time.monotonic()
    root_params = {**_params(base, uid=0, gid=0), "app_exec_dir": str(base / "rexec"),
                   "app_data_dir": str(base / "rdata")}
    try:
        reply, fds = wire.call(d.socket, "io.rocker.Rocker.Create", root_params, timeout=3)
        answered: Any = time.monotonic() - t0
        for fd in fds:
            os.close(fd)
        wire.call(d.socket, "io.rocker.Rocker.Kill", {"guard_pname": reply["guard_pname"]}, timeout=3)
    except wire.WireError as e:
        answered = repr(e)
    finally:
        # let an old rockerd out of its open(): a writer comes and goes
        try:
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            pass
        t.join(30)
    assert isinstance(answered, float) and answered < 2.0, f"another client's Create: {answered}"
    assert out.get("error") == "io.rocker.Rocker.BuildFailed", out
    assert "not a regular file" in out["params"]["reason"], out
    assert out["secs"] < 2.0, out


def test_package_open_has_a_deadline() -> None:
    """Anything that may still block (a path lookup on a hung mount) runs off the loop, and the
    caller hears of it after the deadline; a FIFO is typed before it is ever opened for reading."""
    import asyncio
    import tempfile

    from rockerd.create import pkgopen
    from rockerd.create.steps import BuildError

    with tempfile.TemporaryDirectory() as tmp:
        fifo = os.path.join(tmp, "p")
        os.mkfifo(fifo)
        t0 = time.monotonic()
        with pytest.raises(BuildError, match="not a regular file"):
            asyncio.run(pkgopen.open_package_off_loop(fifo, None))
        assert time.monotonic() - t0 < 1
        gate = threading.Event()
        real = pkgopen.open_package
        pkgopen.open_package = lambda path, caller: (gate.wait(10), real(path, caller))[1]  # a hung lookup
        try:
            with pytest.raises(BuildError, match=r"did not open within 0\.2 s"):
                asyncio.run(pkgopen.open_package_off_loop(fifo, None, deadline=0.2))
        finally:
            pkgopen.open_package = real
            gate.set()
            if pkgopen._pool is not None:  # no thread of ours may outlive the test (forks follow)
                pkgopen._pool.shutdown(wait=True)
                pkgopen._pool = None


# --- item 8: data dirs their owner cannot delete --------------------------------------------------------

WRITER = r"""
import json, os
H = HOME
open(H + "/new.txt", "w").write("x")
os.makedirs(H + "/newdir/deeper")
open(H + "/newdir/deeper/f", "w").write("y")
os.unlink(H + "/old.txt")  # a whiteout in the upper
os.rmdir(H + "/olddir")
print("APP " + json.dumps({"ok": True}), flush=True)
"""


def test_owner_can_rm_rf_its_data_dir(world: tuple[Path, Daemon]) -> None:  # noqa: F811
    """Item 8: after real rockers (shared and separate overlays, writes, deletions, two work
    slots) have ended, uid 1000 removes its data dir with plain rm -rf, and nothing is left."""
    base, d = world
    mine = base / "mine"
    mine.mkdir()
    os.chown(mine, UID, UID)
    _mkdirs_as_uid(mine / "data")
    os.chmod(mine / "data", 0o700)
    home = base / "home"
    for sub in ("a", "b", ""):
        (home / sub / "olddir").mkdir(parents=True, exist_ok=True)
        (home / sub / "old.txt").write_text("old")
    for p in [home, *home.rglob("*")]:
        os.chown(p, UID, UID)
    runs = [
        ([str(home / "a"), str(home / "b"), "/usr"], str(home / "a")),  # one overlay over home, shared
        ([str(home), "/usr", "/etc"], str(home)),
    ]
    for overlays, write_in in runs:
        params = _params(base, app_data_dir=str(mine / "data"), app_overlay_dirs=overlays)
        out = _run_app(base, d, params, f"HOME = {write_in!r}\n" + WRITER)
        assert out["RES"]["err_no"] == RockerErr.success, out
        assert out.get("APP") == {"ok": True}, out
    # two rockers of the data dir at once: they share its overlays and one work slot (datashare.py)
    hold = _as_uid(base, d, HOLD_TWO, d.socket,
                   json.dumps(_params(base, app_data_dir=str(mine / "data"), app_overlay_dirs=["/usr"])))
    assert hold.returncode == 0, hold.stderr
    assert not (mine / "data/work/1").exists()
    assert wait_for(lambda: not _live(d), 10)
    assert wait_for(lambda: not (mine / "data/work").exists(), 10), "the work slots outlived the linger"
    p = subprocess.run(["rm", "-rf", str(mine / "data")], user=UID, group=UID, extra_groups=[],
                       capture_output=True, text=True, timeout=60)
    left = sorted(str(q.relative_to(mine)) for q in mine.rglob("*"))
    assert p.returncode == 0 and not left, (p.stderr, left)
    assert (home / "a/old.txt").exists() and not (home / "a/new.txt").exists()  # the host never saw it


HOLD_TWO = r"""
import json, os, sys
from rocker_client import wire
sock, params = sys.argv[1], json.loads(sys.argv[2])
names = []
for _ in range(2):
    reply, fds = wire.call(sock, "io.rocker.Rocker.Create", params, timeout=10)
    for fd in fds:
        os.close(fd)
    names.append(reply["guard_pname"])
for n in names:
    wire.call(sock, "io.rocker.Rocker.Kill", {"guard_pname": n}, timeout=10)
"""


def _live(d: Daemon) -> list[Any]:
    reply, _ = wire.call(d.socket, "io.rocker.Rocker.List", {}, timeout=5)
    return list(reply["rockers"])


def wait_for(cond: Any, timeout: float) -> bool:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if cond():
            return True
        time.sleep(0.05)
    return False


# --- acting as the caller: its groups too, on this thread only -----------------------------------------

def test_acting_as_takes_the_callers_groups_on_this_thread_only(base: Path) -> None:
    """A file readable only through a supplementary group opens for a caller holding it, not for
    one without it; the groups are the calling thread's only and come back exactly, even
    after an exception."""
    f = base / "grp"
    f.write_text("x")
    os.chown(f, 0, GID_SG)
    f.chmod(0o040)
    before = os.getgroups()
    seen: list[list[int]] = []
    other = threading.Event()
    done = threading.Event()

    def watcher() -> None:
        other.wait(5)
        seen.append(os.getgroups())
        done.set()

    t = threading.Thread(target=watcher)
    t.start()
    with_group = policy.Ids(UID, UID, (GID_SG,))
    with pytest.raises(RuntimeError), policy.acting_as(with_group):
        assert os.getgroups() == [GID_SG]
        os.close(os.open(f, os.O_RDONLY))
        other.set()
        done.wait(5)
        raise RuntimeError("the build failed here")
    t.join(5)
    assert seen == [before]  # the other thread never had the caller's groups
    assert os.getgroups() == before
    with policy.acting_as(policy.Ids(UID, UID)), pytest.raises(PermissionError):
        os.open(f, os.O_RDONLY)
    assert os.getgroups() == before
