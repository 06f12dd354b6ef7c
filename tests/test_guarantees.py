"""Guarantees that a green suite once did not hold anyone to (issue 20): each test here failed with
one seeded bug the rest of the suite let through (scripts/mutants.toml seeds it again)."""

from __future__ import annotations

import ctypes
import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from daemon import start_daemon
from pkgbuild import build_pkg
from rockers import make_req, run_app, wait_gone
from test_packages import _resident, hold

from rocker_client import enter_rocker, wire
from rocker_sys import ns
from rockerd.state import proc_starttime

_libc = ctypes.CDLL(None, use_errno=True)
_SYSCALLS = {"x86_64": {"exit": 60, "kcmp": 312}, "aarch64": {"exit": 93, "kcmp": 272}}
NR = _SYSCALLS.get(os.uname().machine, {})
needs_nr = pytest.mark.skipif(not NR, reason=f"syscall numbers for {os.uname().machine} unknown here")


def _mount_options(mountinfo: str, target: str) -> tuple[set[str], str] | None:
    """Per-mount options and fs type of the topmost mount at `target` (paths here need no unescaping)."""
    found = None
    for line in mountinfo.splitlines():
        head, _, tail = line.partition(" - ")
        fields = head.split()
        if fields[4] == target:
            found = set(fields[5].split(",")), tail.split()[0]
    return found


@pytest.mark.usefixtures("rockerd")
def test_package_and_overlays_are_mounted_nosuid_nodev(base: Path, pkg: Path) -> None:
    """security.md: the package is ro, nosuid, nodev; the overlays nosuid, nodev (mountinfo and statvfs,
    from inside). A setuid file of a package must not raise privilege even without no_new_privs."""
    exec_dir = str(base / "exec")

    def probe() -> dict[str, object]:
        with open("/proc/self/mountinfo") as f:
            info = f.read()
        flags = {d: os.statvfs(d).f_flag for d in (exec_dir, "/usr")}
        return {"pkg": sorted(_mount_options(info, exec_dir)[0]), "pkg_fs": _mount_options(info, exec_dir)[1],
                "usr": sorted(_mount_options(info, "/usr")[0]), "usr_fs": _mount_options(info, "/usr")[1],
                "flags": flags}

    run = run_app(make_req(base, pkg), probe)
    assert run.res.ok, run.res.detail
    rep = run.report
    assert "probe_error" not in rep, rep
    assert rep["pkg_fs"] == "squashfs" and {"ro", "nosuid", "nodev"} <= set(rep["pkg"]), rep
    assert rep["usr_fs"] == "overlay" and {"nosuid", "nodev"} <= set(rep["usr"]), rep
    want = os.ST_RDONLY | os.ST_NOSUID | os.ST_NODEV
    assert rep["flags"][exec_dir] & want == want, rep
    assert rep["flags"]["/usr"] & (os.ST_NOSUID | os.ST_NODEV) == os.ST_NOSUID | os.ST_NODEV, rep


@needs_nr
@pytest.mark.usefixtures("rockerd")
def test_rocker_lives_on_while_a_thread_outlives_the_main_thread(base: Path, pkg: Path) -> None:
    """architecture.md 5.: the guard exits once no process is left. A process whose main thread
    has ended (exit, not exit_group: /proc shows the leader as a zombie) while another thread
    still works is not gone. The guard first sees this one only after its main thread ended (it is
    forked by the app while the guard idles, and the app exits right after; a process it already
    watches through a pidfd is not in question): the rocker must live on, and that thread finish its work."""
    r, w = os.pipe()

    def app(_: object) -> int:
        os.close(r)
        # The guard backs off to one wake-up per second while nothing happens: fork then, so that it
        # cannot see the process while its main thread still runs (it would watch its pidfd).
        time.sleep(2.5)
        if os.fork() == 0:
            import threading

            def worker() -> None:
                time.sleep(1.5)  # long after its main thread and the app: the guard scans /proc meanwhile
                os.write(w, b"alive")

            threading.Thread(target=worker).start()
            _libc.syscall(NR["exit"], 0)  # this thread only: the leader turns zombie, the worker runs on
        time.sleep(0.05)
        return 0

    res = enter_rocker(make_req(base, pkg), app)
    os.close(w)
    try:
        assert res.ok, res.detail
        assert select.select([r], [], [], 10)[0], "no word from the thread within 10 s"
        assert os.read(r, 16) == b"alive", "the rocker ended under a process whose other thread still ran"
    finally:
        os.close(r)
        if res.app_pid:
            os.waitpid(res.app_pid, 0)
    assert wait_gone(res.guard_pid, 3) is not None, "the guard outlived the process"


CAP_SYS_PTRACE = 19
_CAP_VERSION_3 = 0x20080522


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]

KCMP_VM = 1


def _drop_effective(cap: int) -> None:
    """Take `cap` out of this thread's effective set only; the permitted set stays whole."""
    hdr = _CapHeader(_CAP_VERSION_3, 0)
    data = (_CapData * 2)()
    if _libc.capget(ctypes.byref(hdr), data) < 0:
        raise OSError(ctypes.get_errno(), "capget")
    data[cap // 32].effective &= ~(1 << cap % 32)
    if _libc.capset(ctypes.byref(hdr), data) < 0:
        raise OSError(ctypes.get_errno(), "capset")


def _same_uid_probe(user_fd: int, guard: int, w: int) -> None:
    """Forked child: become the rocker's root (its uid outside, every capability in it but
    CAP_SYS_PTRACE in effect) and ask for ptrace read access to the guard (kcmp)."""
    code = 0
    try:
        ns.setns(user_fd, ns.CLONE_NEWUSER, "user")
        os.setresgid(0, 0, 0)
        os.setresuid(0, 0, 0)
        _drop_effective(CAP_SYS_PTRACE)
        ret = _libc.syscall(NR["kcmp"], guard, guard, KCMP_VM, 0, 0)
        os.write(w, json.dumps({"kcmp": ret, "errno": ctypes.get_errno() if ret < 0 else 0}).encode())
    except BaseException as e:
        os.write(w, json.dumps({"error": repr(e)}).encode())
        code = 1
    finally:
        os._exit(code)


@needs_nr
@pytest.mark.usefixtures("rockerd")
def test_guard_is_not_dumpable(base: Path, pkg: Path) -> None:
    """security.md: the guard is not dumpable. That is what keeps a process of the rocker's own uid
    off it when it lacks CAP_SYS_PTRACE in effect but holds the guard's other capabilities (the
    kernel's uid and capability checks pass): with a dumpable guard, ptrace access is granted.
    The app itself (the app's capability set) must not reach the guard's memory or environment."""
    def probe() -> dict[str, object]:
        out = {}
        for what in ("mem", "environ"):
            try:
                with open(f"/proc/1/{what}", "rb") as f:
                    f.read(1)
                out[what] = 0
            except OSError as e:
                out[what] = e.errno
        return out

    seen: dict[str, object] = {}

    def while_alive(res: object) -> None:
        """Asserts nothing itself: run_app must go on to release and reap the app."""
        guard_pid = res.guard_pid  # type: ignore[attr-defined]
        user_fd = os.open(f"/proc/{guard_pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
        pr, pw = os.pipe()
        try:
            child = os.fork()
            if child == 0:
                os.close(pr)
                _same_uid_probe(user_fd, guard_pid, pw)
            os.close(pw)
            pw = -1
            seen.update(json.loads(os.read(pr, 4096) or b"{}"))
            os.waitpid(child, 0)
        finally:
            os.close(pr)
            if pw >= 0:
                os.close(pw)
            os.close(user_fd)

    run = run_app(make_req(base, pkg, uid=1000, gid=1000), probe, while_alive)
    assert run.res.ok, run.res.detail
    assert "error" not in seen, seen
    assert seen["kcmp"] == -1 and seen["errno"] == 1, f"same-uid process got ptrace access to the guard: {seen}"
    assert run.report == {"mem": 13, "environ": 13}, run.report  # EACCES


def _renamed_process(comm: str) -> subprocess.Popen[bytes]:
    """A live process named `comm`, as a guard's PID reused by another program could look."""
    code = ("import ctypes, sys; ctypes.CDLL(None).prctl(15, sys.argv[1].encode(), 0, 0, 0); "
            "print('ok', flush=True); sys.stdin.read()")
    p = subprocess.Popen([sys.executable, "-c", code, comm], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert p.stdout and p.stdout.readline() == b"ok\n"
    return p


def _record(name: str, pid: int, starttime: int, data_dir: Path) -> dict[str, object]:
    return {"name": name, "pid": pid, "starttime": starttime, "app_id": 0, "uid": 0, "gid": 0,
            "caller_uid": 0, "created": time.time(), "app_pkg_path": "/x", "app_exec_dir": "/y",
            "app_data_dir": str(data_dir), "app_overlay_dirs": [], "work_slot": 0}


def test_readoption_checks_the_start_time_not_just_the_name(tmp_path: Path) -> None:
    """state.py: a record is adopted only if the process at its PID has the guard's name AND start
    time. A PID reused by a process that happens to carry the same name (prctl(PR_SET_NAME)) must
    be dropped and never signalled; a record that matches both is adopted (the control)."""
    work = tmp_path / "d"
    (work / "state").mkdir(parents=True)
    impostor = _renamed_process("rk-reuse0000")
    genuine = _renamed_process("rk-match0000")
    d = None
    try:
        stale = _record("rk-reuse0000", impostor.pid, proc_starttime(impostor.pid) + 1, tmp_path / "a")
        good = _record("rk-match0000", genuine.pid, proc_starttime(genuine.pid), tmp_path / "b")
        for rec in (stale, good):
            (work / "state" / f"{rec['name']}.json").write_text(json.dumps(rec))
        d = start_daemon(work)
        live = {r["guard_pname"]: r for r in wire.call(d.socket, "io.rocker.Rocker.List", {})[0]["rockers"]}
        assert "rk-reuse0000" not in live, "a reused PID with the guard's name but another start time was adopted"
        assert live.keys() == {"rk-match0000"} and live["rk-match0000"]["guard_pid"] == genuine.pid
        assert "dropping the record of rk-reuse0000" in d.log_text()
        assert sorted(os.listdir(work / "state")) == ["rk-match0000.json"]
        with pytest.raises(wire.RemoteError, match="NoSuchRocker"):
            wire.call(d.socket, "io.rocker.Rocker.Kill", {"guard_pname": "rk-reuse0000", "signal": 15})
        d.stop()
        d = None
        assert impostor.poll() is None, "the impostor was signalled"
    finally:
        if d:
            d.stop()
        for p in (impostor, genuine):
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
            p.wait()


@pytest.mark.usefixtures("rockerd")
def test_app_is_in_six_namespaces_of_its_own(base: Path, pkg: Path) -> None:
    """security.md: own mount, PID, network, UTS, IPC and user namespaces: none is the launcher's."""
    names = ("user", "mnt", "pid", "net", "uts", "ipc")

    def probe() -> dict[str, object]:
        return {n: os.readlink(f"/proc/self/ns/{n}") for n in names}

    run = run_app(make_req(base, pkg), probe)
    assert run.res.ok, run.res.detail
    for n in names:
        assert run.report[n] != os.readlink(f"/proc/self/ns/{n}"), f"the app shares the launcher's {n} namespace"


def _create(sock: str, base: Path, pkg: Path, uid: int, i: int) -> tuple[dict[str, object], list[int]]:
    params = make_req(base / str(i), pkg, uid=uid, gid=uid).to_params()
    (base / str(i)).mkdir()
    return wire.call(sock, "io.rocker.Rocker.Create", params)


def test_live_rocker_limits(tmp_path: Path, base: Path, pkg: Path) -> None:
    """security.md, Limits: --max-rockers and --max-rockers-per-uid are hard limits (LimitReached)."""
    d = start_daemon(tmp_path / "d", "--max-rockers", "3", "--max-rockers-per-uid", "1")
    held: list[int] = []
    guards: list[int] = []

    def create(uid: int, i: int) -> None:
        reply, fds = _create(d.socket, base, pkg, uid, i)
        held.extend(fds)
        guards.append(int(reply["guard_pid"]))  # type: ignore[call-overload]

    try:
        create(0, 0)
        create(1000, 1)
        with pytest.raises(wire.RemoteError, match="LimitReached") as e:
            create(1000, 2)
        assert "live rockers, the most per uid" in e.value.parameters["reason"], e.value.parameters
        create(1001, 3)  # another uid: below both limits
        with pytest.raises(wire.RemoteError, match="LimitReached") as e:
            create(1002, 4)
        assert "rockers are live" in e.value.parameters["reason"], e.value.parameters
    finally:
        for fd in held:
            os.close(fd)
        for r in wire.call(d.socket, "io.rocker.Rocker.List", {})[0]["rockers"]:
            wire.call(d.socket, "io.rocker.Rocker.Kill", {"guard_pname": r["guard_pname"]})
        for g in guards:
            assert wait_gone(g, 5) is not None
        d.stop()


OTHER_UID_CLIENT = r"""
import json, socket, sys
def call(method, params):
    s = socket.socket(socket.AF_UNIX)
    s.connect(sys.argv[1])
    s.sendall(json.dumps({"method": method, "parameters": params}).encode() + b"\0")
    buf = b""
    while not buf.endswith(b"\0"):
        chunk = s.recv(65536)
        if not chunk:
            break
        buf += chunk
    return json.loads(buf.rstrip(b"\0"))
print(json.dumps({"list": call("io.rocker.Rocker.List", {}),
                  "kill": call("io.rocker.Rocker.Kill", {"guard_pname": sys.argv[2]})}))
"""


@pytest.mark.skipif(not os.path.exists("/usr/bin/python3"), reason="needs Debian's /usr/bin/python3")
def test_other_uid_can_neither_see_nor_kill_a_rocker(base: Path, pkg: Path) -> None:
    """protocol: List shows a caller its own rockers only (by uid or caller uid), Kill the same;
    a rocker of uid 1000 is NoSuchRocker to uid 1001 and survives its Kill."""
    d = start_daemon(base / "d", "--socket-mode", "0666")
    fds: list[int] = []
    try:
        reply, fds = _create(d.socket, base, pkg, 1000, 0)
        name, guard = str(reply["guard_pname"]), int(reply["guard_pid"])  # type: ignore[call-overload]
        out = subprocess.run(["/usr/bin/python3", "-I", "-c", OTHER_UID_CLIENT, d.socket, name], user=1001,
                             group=1001, extra_groups=[], capture_output=True, text=True, timeout=30)
        seen = json.loads(out.stdout or "{}")
        assert seen["list"]["parameters"]["rockers"] == [], seen
        assert seen["kill"].get("error") == "io.rocker.Rocker.NoSuchRocker", seen
        assert wait_gone(guard, 0.3) is None, "uid 1001 ended uid 1000's rocker"
        wire.call(d.socket, "io.rocker.Rocker.Kill", {"guard_pname": name})
        assert wait_gone(guard, 5) is not None
    finally:
        for fd in fds:
            os.close(fd)
        d.stop()


GROUPS_LAUNCHER = r"""
import json, os, sys
sys.path.insert(0, sys.argv[1])
params, mode = json.loads(sys.argv[2]), sys.argv[3]
os.setgroups([4242, 4343])  # a root launcher with supplementary groups (a login shell's, say)
import threading
from rocker_client import Exec, RockerRequest, enter_rocker
if mode == "intermediate":  # a threaded caller: its forked intermediate joins
    threading.Thread(target=threading.Event().wait, daemon=True).start()
r, w = os.pipe()
def app(_):
    with open("/proc/self/status") as f:
        os.write(w, [ln for ln in f if ln.startswith("Groups:")][0].encode())
    return 0
if mode == "exec":
    os.set_inheritable(w, True)
    app = Exec("/bin/sh", ["sh", "-c", f"grep ^Groups: /proc/self/status >&{w}"])
res = enter_rocker(RockerRequest(**params), app)
os.close(w)
out = os.read(r, 4096).decode() if res.ok else ""
status = os.waitpid(res.app_pid, 0)[1] if res.app_pid else -1
print(json.dumps({"ok": res.ok, "detail": res.detail, "groups": out.split(":", 1)[-1].split(), "status": status}))
"""


@pytest.mark.parametrize("mode", ["one-fork", "intermediate", "exec"])
@pytest.mark.usefixtures("rockerd")
def test_root_launchers_groups_are_dropped(base: Path, pkg: Path, mode: str) -> None:
    """security.md: a root caller's supplementary groups are dropped before entering (every path:
    the one fork, a threaded caller's intermediate, an Exec app). Undropped, they would follow the app."""
    params = make_req(base, pkg, uid=1000, gid=1000).to_params()
    out = subprocess.run([sys.executable, "-c", GROUPS_LAUNCHER, str(Path(__file__).parent.parent),
                          json.dumps(params), mode], capture_output=True, text=True, timeout=60)
    seen = json.loads(out.stdout or "{}")
    assert seen.get("ok"), (seen, out.stderr)
    assert seen["status"] == 0 and seen["groups"] == [], seen


def _mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True, capture_output=True)


def test_host_mounts_made_later_stay_outside(base: Path, pkg: Path, rockerd) -> None:
    """security.md: the rocker's mount namespace is private (rprivate): a mount the host makes
    afterwards below one of its shared mounts does not propagate into a live rocker."""
    shared, sub = base / "shared", base / "shared" / "sub"
    shared.mkdir()
    _mount("-t", "tmpfs", "-o", "size=64k", "rocker-test-shared", str(shared))
    mounted = [shared]
    go_r, go_w = os.pipe()
    rep_r, rep_w = os.pipe()

    def app(_: object) -> int:
        os.close(go_w)
        os.close(rep_r)
        os.read(go_r, 1)  # the host has mounted by now
        with open("/proc/self/mountinfo") as f:
            seen = any(line.split()[4] == str(sub) for line in f)
        os.write(rep_w, b"seen" if seen else b"not seen")
        return 0

    res = None
    try:
        _mount("--make-shared", str(shared))
        sub.mkdir()
        res = enter_rocker(make_req(base, pkg), app)
        assert res.ok, res.detail
        _mount("-t", "tmpfs", "-o", "size=64k", "rocker-test-sub", str(sub))
        mounted.append(sub)
        os.write(go_w, b"g")
        os.close(rep_w)
        rep_w = -1
        assert os.read(rep_r, 16) == b"not seen", "a host mount made after the start propagated into the rocker"
    finally:
        for fd in (go_r, go_w, rep_r, rep_w):
            if fd >= 0:
                os.close(fd)
        if res is not None and res.app_pid:
            os.waitpid(res.app_pid, 0)
        for m in reversed(mounted):
            subprocess.run(["umount", str(m)], check=True)


def test_read_ahead_stops_at_its_budget(tmp_path: Path, base: Path) -> None:
    """security.md Limits: a new package's executables are read ahead up to --warm-mib only."""
    size = 8 << 20
    pkg = build_pkg(tmp_path, {"bin/tool": (os.urandom(size), 0o755)})
    d = start_daemon(tmp_path / "d", "--warm-mib", "1")
    r, w = os.pipe()
    res = None
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("ROCKER_SOCKET", d.socket)
            res = enter_rocker(make_req(base, pkg), hold, (r, w))
        assert res.ok, res.detail
        tool = f"/proc/{res.guard_pid}/root{base}/exec/bin/tool"
        seen, still_since, deadline = -1, time.monotonic(), time.monotonic() + 10
        while time.monotonic() < deadline and (seen <= 0 or time.monotonic() - still_since < 0.5):
            now = _resident(tool)[0]
            if now != seen:
                seen, still_since = now, time.monotonic()
            time.sleep(0.05)
        pages = _resident(tool)[1]
        assert 0 < seen <= pages // 2, f"{seen} of {pages} pages read ahead with a budget of 1 MiB"
    finally:
        os.close(w)
        os.close(r)
        if res is not None and res.ok:
            os.waitpid(res.app_pid, 0)
        d.stop()
