"""A cgroup per rocker (issue 19): every process of the rocker in it, its limits held, its usage shown,
nothing left behind. Real kernel: cgroup v1 on the hybrid test host, cgroup v2 in the 6.1 VM."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from daemon import Daemon, start_daemon
from rockers import make_req, wait_gone
from test_c_client import cbuild, req_args  # noqa: F401 (cbuild: the C client's build fixture)
from test_c_client import enter as c_enter
from test_nonroot import prepare_user_base

from rocker_client import Exec, RockerErr, enter, enter_rocker, wire
from rockerd.cgroups import detect

HIER = detect()
pytestmark = [pytest.mark.skipif(HIER.mode == "none", reason=f"no usable cgroups here: {HIER.reason}"),
              pytest.mark.usefixtures("rockerd")]
PYTHON = "/usr/bin/python3"  # the system's: a uid-1000 app can reach it, unlike a venv under /root
SCALE = float(os.environ.get("ROCKER_TEST_TIME_SCALE", "1"))


def rocker_dirs(name: str) -> list[str]:
    """Where rockerd puts the rocker's cgroup (docs/operations.md): one dir per v1 hierarchy, one on v2."""
    if HIER.mode == "v1":
        return sorted({f"{m}/rocker/{name}" for m in HIER.mounts.values()})
    own = os.path.dirname(HIER.own) if os.path.basename(HIER.own) == "daemon" else HIER.own
    top = os.path.join(HIER.mounts[""], own.lstrip("/")).rstrip("/")
    return [f"{top}/rocker/{name}"]


def cgroups_of(text: str) -> dict[str, str]:
    """/proc/PID/cgroup as {controller (v2: ""): path} for the controllers rockerd uses."""
    out = {}
    for line in text.splitlines():
        _, ctrls, path = line.split(":", 2)
        for c in ctrls.split(",") if ctrls else [""]:
            out[c] = path
    return out


WANTED = list(HIER.mounts) if HIER.mode == "v1" else [""]  # the controllers (v2: "") rockerd puts rockers in


def in_rocker_cgroup(text: str, name: str) -> bool:
    """/proc/PID/cgroup as the host sees it: the rocker's cgroup in each hierarchy rockerd uses."""
    cg = cgroups_of(text)
    return all(cg.get(c, "").endswith(f"/rocker/{name}") for c in WANTED)


def at_own_root(text: str) -> bool:
    """/proc/self/cgroup as an app sees it: its cgroup namespace is rooted at the rocker's cgroup,
    and it is there (a process elsewhere would see a path, "/.." above the root)."""
    cg = cgroups_of(text)
    return all(cg.get(c) == "/" for c in WANTED)


def list_rockers(sock: str) -> dict[str, dict[str, Any]]:
    reply, _ = wire.call(sock, "io.rocker.Rocker.List", {})
    return {r["guard_pname"]: r for r in reply["rockers"]}


# The app: reports its own cgroups and its parent's view, holds until released, exits 7.
PROBE = r"""
import json, os, sys
fd = int(os.environ["REPORT_FD"])
child = os.popen("cat /proc/self/cgroup").read() if os.path.exists("/bin/cat") else ""
os.write(fd, json.dumps({"cgroup": open("/proc/self/cgroup").read(), "child": child}).encode())
os.close(fd)
os.read(int(os.environ["HOLD_FD"]), 1)
sys.exit(7)
"""


def _probe(base: Path, pkg: Path, how: str, monkeypatch: pytest.MonkeyPatch, sock: str | None = None,
           **limits: Any) -> tuple[Any, dict[str, Any], str, dict[str, Any], int]:
    r, w = os.pipe()
    hold_r, hold_w = os.pipe()
    os.set_inheritable(w, True)
    os.set_inheritable(hold_r, True)
    app: Any = Exec(PYTHON, [PYTHON, "-c", PROBE], env={"REPORT_FD": str(w), "HOLD_FD": str(hold_r), "PATH": "/bin"})
    if how == "intermediate":
        monkeypatch.setattr(enter, "_start_direct", lambda *a: None)
    req = make_req(base, pkg, uid=1000, gid=1000)
    for k, v in limits.items():
        setattr(req, k, v)
    try:
        res = enter_rocker(req, app if how == "exec" else (lambda a: app(a)), socket=sock)
    finally:
        os.close(w)
        os.close(hold_r)
    try:
        data = b""
        while chunk := os.read(r, 65536):
            data += chunk
        os.close(r)
        guard_cg = Path(f"/proc/{res.guard_pid}/cgroup").read_text() if res.ok else ""
        report = json.loads(data or b"{}")
        report["host_view"] = Path(f"/proc/{res.app_pid}/cgroup").read_text() if res.ok else ""
        listed = list_rockers(sock or os.environ["ROCKER_SOCKET"]).get(res.guard_pname, {})
    finally:
        os.close(hold_w)
    status = os.waitpid(res.app_pid, 0)[1] if res.ok else -1
    return res, report, guard_cg, listed, status


@pytest.mark.parametrize("how", ["exec", "direct", "intermediate"])
def test_guard_and_app_are_in_the_rockers_cgroup(base: Path, pkg: Path, how: str,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    res, report, guard_cg, listed, status = _probe(base, pkg, how, monkeypatch)
    assert res.ok, res.detail
    assert os.WEXITSTATUS(status) == 7
    assert in_rocker_cgroup(guard_cg, res.guard_pname), guard_cg
    assert in_rocker_cgroup(report["host_view"], res.guard_pname), report["host_view"]
    assert at_own_root(report["cgroup"]), report["cgroup"]
    if report["child"]:
        assert at_own_root(report["child"]), report["child"]
    assert listed["limits"]["pids_max"] == 4096  # rockerd's default
    usage = listed["usage"]
    assert usage["procs"] >= 2 and usage["memory"] > 0 and usage["cpu_usec"] > 0, usage
    assert wait_gone(res.guard_pid, 10 * SCALE) is not None
    deadline = time.monotonic() + 5 * SCALE
    while any(os.path.exists(d) for d in rocker_dirs(res.guard_pname)) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not any(os.path.exists(d) for d in rocker_dirs(res.guard_pname))


# v1: a process moved by writing "0" to `tasks` skips the kernel's global cgroup_threadgroup_rwsem write
# side, whose every take waits for an RCU grace period (~10 ms after an idle moment); a pid written to
# either file, or "0" to cgroup.procs, always takes it. v2: the guard is cloned into its cgroup (clone3).
CHEAP = "tasks" if HIER.mode == "v1" else "cgroup.procs"


@pytest.mark.parametrize("uid", [0, 1000])
def test_the_app_joins_through_the_files_that_skip_the_global_lock(base: Path, pkg: Path, uid: int,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The Create reply's cgroup fds, as the client gets them: v1 `tasks` of each hierarchy, then the
    rocker's cgroup namespace; and the app that wrote "0" to them is in the cgroup (its children too)."""
    seen: list[str] = []
    real = enter._start_inside

    def spy(ns_fds: list[int], app: Any, app_args: Any, cgroup_fds: list[int] | None = None,
            syscall_filter: Any = None) -> Any:
        seen.extend(os.readlink(f"/proc/self/fd/{fd}") for fd in cgroup_fds or [])
        return real(ns_fds, app, app_args, cgroup_fds, syscall_filter)

    monkeypatch.setattr(enter, "_start_inside", spy)
    res, report, status = _run_exec(base, pkg, "import json, os\nos.write(int(os.environ['REPORT_FD']), "
                                    "json.dumps({'cg': open('/proc/self/cgroup').read()}).encode())", uid=uid)
    assert res.ok and os.WEXITSTATUS(status) == 0, res
    files, ns_link = seen[:-1], seen[-1]
    assert sorted(files) == [f"{d}/{CHEAP}" for d in rocker_dirs(res.guard_pname)], seen
    assert ns_link.startswith("cgroup:["), seen
    assert at_own_root(report["cg"]), report


THREADS_AND_CHILDREN = r"""
import json, os, threading
started, done = threading.Event(), threading.Event()
threads = [threading.Thread(target=lambda: (started.set(), done.wait())) for _ in range(3)]
for t in threads:
    t.start()
started.wait()
views = {"thread " + tid: open(f"/proc/self/task/{tid}/cgroup").read() for tid in os.listdir("/proc/self/task")}
pid = os.fork()
if pid == 0:
    os._exit(0 if open("/proc/self/cgroup").read() == views["thread " + str(os.getppid())] else 1)
views["child exit"] = str(os.waitpid(pid, 0)[1])
done.set()
os.write(int(os.environ["REPORT_FD"]), json.dumps(views).encode())
"""


def test_the_apps_threads_and_children_are_in_the_cgroup(base: Path, pkg: Path) -> None:
    """v1 moves only the thread that writes "0" to `tasks`: the app's join does it while single-threaded,
    so every thread and process it makes afterwards starts in the rocker's cgroup."""
    res, views, status = _run_exec(base, pkg, THREADS_AND_CHILDREN)
    assert res.ok and os.WEXITSTATUS(status) == 0, res
    assert views.pop("child exit") == "0", views
    assert len(views) == 4 and all(at_own_root(v) for v in views.values()), views


def test_the_guard_joins_through_the_files_that_skip_the_global_lock() -> None:
    """The fds rockerd hands the guard's spawn (rocker-spawn.c): v1 `tasks` (root's opens: the guard
    writes "0" itself), v2 the cgroup dir (clone3 CLONE_INTO_CGROUP); and a Join's, like the reply's."""
    from rockerd.cgroups import CgroupTree, Limits  # in this process: the daemon's fds are not reachable

    tree = CgroupTree(HIER)  # no setup(): the bases exist (the rockerd fixture made them), and on v2
    tree.bases = {c: os.path.dirname(rocker_dirs("x")[0]) if HIER.mode == "v2" else f"{m}/rocker"  # it would
                  for c, m in HIER.mounts.items()}  # move this process into a leaf
    name = f"rk-joinfds-{os.getpid()}"
    cg = tree.create(name, Limits(), 1000, 1000)
    try:
        links = sorted(os.readlink(f"/proc/self/fd/{fd}") for fd in cg.guard_fds)
        if HIER.mode == "v1":
            assert links == [f"{d}/tasks" for d in rocker_dirs(name)], links
            assert all(os.fstat(fd).st_uid == 1000 for fd in cg.procs_fds)  # the app's uid may open them
        else:
            assert links == rocker_dirs(name) and all(os.path.isdir(f"/proc/self/fd/{fd}") for fd in cg.guard_fds)
        joins = tree.join_fds(name, 1000, 0)
        try:
            assert sorted(os.readlink(f"/proc/self/fd/{fd}") for fd in joins) == \
                [f"{d}/{CHEAP}" for d in rocker_dirs(name)]
        finally:
            for fd in joins:
                os.close(fd)
    finally:
        cg.close_fds()
        assert tree.remove(name)


def _run_exec(base: Path, pkg: Path, code: str, sock: str | None = None, uid: int = 1000,
              env: dict[str, str] | None = None, **limits: Any) -> tuple[Any, dict[str, Any], int]:
    """Run `code` with /usr/bin/python3 as the app (REPORT_FD: a pipe for one JSON report, beside
    `env`); its result, report and wait status."""
    r, w = os.pipe()
    os.set_inheritable(w, True)
    req = make_req(base, pkg, uid=uid, gid=uid)
    for k, v in limits.items():
        setattr(req, k, v)
    try:
        res = enter_rocker(req, Exec(PYTHON, [PYTHON, "-c", code], env={**(env or {}), "REPORT_FD": str(w)}),
                           socket=sock)
    finally:
        os.close(w)
    data = b""
    while chunk := os.read(r, 65536):
        data += chunk
    os.close(r)
    status = os.waitpid(res.app_pid, 0)[1] if res.ok else -1
    return res, json.loads(data or b"{}"), status


FORK_BOMB = r"""
import json, os
r, w = os.pipe()
n, err = 0, 0
for _ in range(500):
    try:
        pid = os.fork()
    except OSError as e:
        err = e.errno
        break
    if pid == 0:
        os.close(w)
        os.read(r, 1)  # until the parent lets go: they all stay alive meanwhile
        os._exit(0)
    n += 1
rep = int(os.environ["REPORT_FD"])
os.write(rep, json.dumps({"forked": n, "errno": err}).encode())
os.close(rep)
os.read(int(os.environ["HOLD_FD"]), 1)
os.close(w)
while True:
    try:
        os.wait()
    except ChildProcessError:
        break
"""


def test_a_fork_bomb_stops_at_pids_max_while_the_host_and_other_rockers_fork(base: Path, pkg: Path) -> None:
    r, w = os.pipe()
    hold_r, hold_w = os.pipe()
    os.set_inheritable(w, True)
    os.set_inheritable(hold_r, True)
    req = make_req(base, pkg, uid=1000, gid=1000)
    req.pids_max = 50
    try:
        res = enter_rocker(req, Exec(PYTHON, [PYTHON, "-c", FORK_BOMB],
                                     env={"REPORT_FD": str(w), "HOLD_FD": str(hold_r)}))
    finally:
        os.close(w)
        os.close(hold_r)
    try:
        assert res.ok, res.detail
        report = json.loads(os.read(r, 4096))
        # guard + app + its children: 50 tasks at most, and the 51st fork was refused with EAGAIN
        assert report["errno"] == errno.EAGAIN and 40 <= report["forked"] <= 48, report
        assert list_rockers(os.environ["ROCKER_SOCKET"])[res.guard_pname]["usage"]["procs"] == 50
        # meanwhile the host forks, and so does another rocker
        pids = [os.fork() or os._exit(0) for _ in range(60)]
        assert all(os.waitpid(p, 0)[1] == 0 for p in pids)
        other, rep, status = _run_exec(base / "o", pkg, FORK_BOMB.replace("range(500)", "range(60)").replace(
            'os.read(int(os.environ["HOLD_FD"]), 1)', ""), uid=0)
        assert other.ok and rep == {"forked": 60, "errno": 0} and status == 0, (other.detail, rep)
    finally:
        os.close(r)
        os.close(hold_w)
    assert os.waitpid(res.app_pid, 0)[1] == 0


def test_memory_max_oom_kills_inside_and_is_logged(base: Path, pkg: Path, own_rockerd: Daemon) -> None:
    hog = "b = b'x' * (200 << 20)\nprint(len(b))"
    res, _, status = _run_exec(base, pkg, hog, own_rockerd.socket, memory_max=64 << 20)
    assert res.ok, res.detail
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, status
    assert wait_gone(res.guard_pid, 10 * SCALE) is not None
    deadline = time.monotonic() + 5 * SCALE
    while f"out of memory in {res.guard_pname}" not in own_rockerd.log_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert f"out of memory in {res.guard_pname}" in own_rockerd.log_text()
    assert list_rockers(own_rockerd.socket) == {}  # rockerd is fine and serving
    ok, _, status = _run_exec(base, pkg, "b = b'x' * (32 << 20)", own_rockerd.socket, memory_max=64 << 20)
    assert ok.ok and status == 0  # below the limit nothing is killed
    _wait_removed(ok.guard_pname)


# The app lives on while a child of it is OOM-killed; it reports the child's end, then holds.
OOM_CHILD = r"""
import json, os, subprocess, sys
rc = subprocess.run([sys.executable, "-c", "b = b'x' * (200 << 20)"]).returncode
rep = int(os.environ["REPORT_FD"])
os.write(rep, json.dumps({"rc": rc}).encode())
os.close(rep)
os.read(int(os.environ["HOLD_FD"]), 1)
"""


def test_an_oom_kill_is_logged_while_the_rocker_lives(base: Path, pkg: Path, own_rockerd: Daemon) -> None:
    """The journal event comes when the kernel kills, not when the rocker ends or is listed (oomwatch.py)."""
    r, w = os.pipe()
    hold_r, hold_w = os.pipe()
    os.set_inheritable(w, True)
    os.set_inheritable(hold_r, True)
    req = make_req(base, pkg, uid=1000, gid=1000)
    req.memory_max = 64 << 20
    try:
        res = enter_rocker(req, Exec(PYTHON, [PYTHON, "-c", OOM_CHILD],
                                     env={"REPORT_FD": str(w), "HOLD_FD": str(hold_r)}), socket=own_rockerd.socket)
    finally:
        os.close(w)
        os.close(hold_r)
    try:
        assert res.ok, res.detail
        assert json.loads(os.read(r, 4096)) == {"rc": -signal.SIGKILL}
        line = f"out of memory in {res.guard_pname}"
        deadline = time.monotonic() + 5 * SCALE
        while line not in own_rockerd.log_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert line in own_rockerd.log_text()
        assert wait_gone(res.guard_pid, 0.05) is None, "the rocker ended: the event may have come from its end"
    finally:
        os.close(r)
        os.close(hold_w)
    assert os.waitpid(res.app_pid, 0)[1] == 0
    assert own_rockerd.log_text().count(line) == 1  # its end does not log the same kill again


CPU_SPIN = r"""
import json, os, time
t0, c0 = time.monotonic(), time.process_time()
while time.monotonic() - t0 < float(os.environ["SECONDS"]):
    pass
rep = int(os.environ["REPORT_FD"])
os.write(rep, json.dumps({"ratio": (time.process_time() - c0) / (time.monotonic() - t0)}).encode())
"""


def test_cpu_max_gives_about_that_share_of_a_cpu(base: Path, pkg: Path) -> None:
    r, w = os.pipe()
    os.set_inheritable(w, True)
    req = make_req(base, pkg, uid=1000, gid=1000)
    req.cpu_max = 0.25
    try:
        res = enter_rocker(req, Exec(PYTHON, [PYTHON, "-c", CPU_SPIN],
                                     env={"REPORT_FD": str(w), "SECONDS": str(2 * SCALE)}))
    finally:
        os.close(w)
    data = os.read(r, 4096)
    os.close(r)
    assert res.ok and os.waitpid(res.app_pid, 0)[1] == 0
    ratio = json.loads(data)["ratio"]
    assert 0.1 < ratio < 0.4, ratio  # a quarter of a CPU, with room for a busy shared host


def test_limits_off_refuses_a_request_for_one(base: Path, pkg: Path, tmp_path: Path) -> None:
    d = start_daemon(tmp_path / "nocg", "--cgroups", "none")
    try:
        res, _, status = _run_exec(base, pkg, "pass", d.socket, memory_max=64 << 20)
        assert res.err_no == RockerErr.param_invalid and res.cause.field == "memory_max", res.detail
        assert "limits are off" in res.cause.reason
        res, _, status = _run_exec(base, pkg, "pass", d.socket)
        assert res.ok and status == 0
    finally:
        d.stop()


def test_cgroup_is_removed_when_the_guard_is_killed_and_when_never_entered(base: Path, pkg: Path,
                                                                           tmp_path: Path) -> None:
    d = start_daemon(tmp_path / "d", "--first-entry-timeout", str(0.5 * SCALE))
    try:
        reply, fds = wire.call(d.socket, "io.rocker.Rocker.Create", make_req(base, pkg).to_params())
        for fd in fds:
            os.close(fd)
        name = reply["guard_pname"]
        assert all(os.path.isdir(p) for p in rocker_dirs(name))
        assert wait_gone(reply["guard_pid"], 10 * SCALE) is not None  # nobody entered: the guard gave up
        _wait_removed(name)
        reply, fds = wire.call(d.socket, "io.rocker.Rocker.Create", make_req(base, pkg).to_params())
        for fd in fds:
            os.close(fd)
        wire.call(d.socket, "io.rocker.Rocker.Kill", {"guard_pname": reply["guard_pname"]})
        _wait_removed(reply["guard_pname"])
    finally:
        d.stop()


def _wait_removed(name: str, timeout: float = 5 * SCALE) -> None:
    deadline = time.monotonic() + timeout
    while any(os.path.exists(p) for p in rocker_dirs(name)) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not any(os.path.exists(p) for p in rocker_dirs(name)), name


def test_a_restarted_rockerd_adopts_the_cgroup_and_removes_it_later(base: Path, pkg: Path, tmp_path: Path) -> None:
    work = tmp_path / "d"
    d = start_daemon(work)
    hold_r, hold_w = os.pipe()
    os.set_inheritable(hold_r, True)
    try:
        req = make_req(base, pkg, uid=1000, gid=1000)
        req.memory_max = 100 << 20
        res = enter_rocker(req, Exec(PYTHON, [PYTHON, "-c", f"import os; os.read({hold_r}, 1)"]), socket=d.socket)
        assert res.ok, res.detail
        d.proc.kill()
        d.proc.wait()
        d = start_daemon(work)
        listed = list_rockers(d.socket)[res.guard_pname]
        assert listed["limits"]["memory_max"] == 100 << 20 and listed["usage"]["procs"] >= 2, listed
        os.close(hold_w)
        hold_w = -1
        assert os.waitpid(res.app_pid, 0)[1] == 0
        _wait_removed(res.guard_pname)
    finally:
        os.close(hold_r)
        if hold_w >= 0:
            os.close(hold_w)
        d.stop()


# ---- non-root callers (uid 1000): their apps are in the cgroup, they cannot exceed the ceilings or get out

UID = 1000
NONROOT_CALLER = r"""
import json, os, stat, sys
sys.path.insert(0, sys.argv[1])
from rocker_client import Exec, RockerRequest, enter, enter_rocker, wire
params, kind, victim = json.loads(sys.argv[2]), sys.argv[3], int(sys.argv[4])
out = {}
if kind == "fd":  # the cgroup fds of the Create reply, used on someone else's process (and on the caller)
    reply, fds = wire.call(os.environ["ROCKER_SOCKET"], "io.rocker.Rocker.Create", params)
    out["cgroups"], out["name"] = len(reply.get("cgroups") or []), reply["guard_pname"]
    out["self_before"] = open("/proc/self/cgroup").read()
    for i in reply.get("cgroups") or []:
        try:
            os.write(fds[i], str(victim).encode())
            if stat.S_ISSOCK(os.fstat(fds[i]).st_mode):  # v2: rockerd moves the writer, if anyone (mover.py)
                answer = int(os.read(fds[i], 16) or b"-1")
                if answer:
                    raise OSError(answer, "rockerd refused")
            out.setdefault("moved", []).append(i)
        except OSError as e:
            out.setdefault("refused", []).append(e.errno)
    out["self_after"] = open("/proc/self/cgroup").read()
    print("OUT " + json.dumps(out), flush=True)
    sys.exit(0)
APP = r'''
import errno, json, os, sys
def attempt(path, text):
    try:
        with open(path, "w") as f:
            f.write(text)
        return 0
    except OSError as e:
        return e.errno
cg = open("/proc/self/cgroup").read()
os.write(int(os.environ["SYNC_W"]), b"x")  # the caller outside reads our /proc/PID/cgroup now
os.read(int(os.environ["SYNC_R"]), 1)
tries = {}
for line in cg.splitlines():
    _, ctrl, path = line.split(":", 2)
    for mount in (["/sys/fs/cgroup/" + c for c in ctrl.split(",")] if ctrl else ["/sys/fs/cgroup"]):
        if os.path.isdir(mount + path):  # path is "/": the rocker's cgroup namespace
            tries[mount + " out"] = attempt(mount + "/cgroup.procs", "0")
            for f in ("memory.limit_in_bytes", "memory.max", "pids.max"):
                if os.path.exists(mount + path + "/" + f):
                    tries[mount + path + "/" + f] = attempt(mount + path + "/" + f, "max")
print("APP " + json.dumps({"cgroup": cg, "tries": tries}), flush=True)
'''
to_caller, from_app = os.pipe()
to_app, from_caller = os.pipe()
os.set_inheritable(from_app, True)
os.set_inheritable(to_app, True)
os.environ.update(SYNC_W=str(from_app), SYNC_R=str(to_app))
app = (lambda _: exec(APP)) if kind == "callable" else Exec(sys.executable, [sys.executable, "-c", APP],
                                                             env=dict(os.environ))
res = enter_rocker(RockerRequest(**params), app)
os.close(from_app)
os.close(to_app)
host_view = ""
if res.app_pid and os.read(to_caller, 1):
    host_view = open(f"/proc/{res.app_pid}/cgroup").read()
    os.write(from_caller, b"x")
status = os.waitpid(res.app_pid, 0)[1] if res.app_pid else -1
print("HOST " + json.dumps(host_view), flush=True)
print("RES " + json.dumps({"err_no": int(res.err_no), "detail": res.detail, "field": res.cause.field if res.cause
                           else "", "name": res.guard_pname, "status": status}), flush=True)
"""


@pytest.fixture
def nonroot(base: Path, pkg: Path, tmp_path: Path) -> Any:
    prepare_user_base(base, pkg)
    d = start_daemon(base / "d", "--socket-mode", "0666", "--max-memory", "100M", "--max-pids", "300",
                      "--first-entry-timeout", str(2 * SCALE))
    yield base, d
    d.stop()


def _as_user(world: tuple[Path, Daemon], kind: str, victim: int = 0, **changes: Any) -> dict[str, Any]:
    base, d = world
    params = {"uid": UID, "gid": UID, "app_pkg_path": str(base / "app.squashfs"), "app_exec_dir": str(base / "u/exec"),
              "app_data_dir": str(base / "u/data"), "app_overlay_dirs": ["/usr"], **changes}
    p = subprocess.run([PYTHON, "-I", "-c", NONROOT_CALLER, str(base / "lib"), json.dumps(params), kind, str(victim)],
                       user=UID, group=UID, extra_groups=[], env={"ROCKER_SOCKET": d.socket},
                       capture_output=True, text=True, timeout=60 * SCALE)
    out: dict[str, Any] = {"stderr": p.stderr}
    for line in p.stdout.splitlines():
        k, _, rest = line.partition(" ")
        out[k] = json.loads(rest)
    return out


@pytest.mark.parametrize("kind", ["callable", "exec"])
def test_a_nonroot_callers_app_is_in_the_cgroup_and_cannot_leave_it(nonroot: Any, kind: str) -> None:
    """v1: through cgroup.procs fds opened as uid 1000; v2: rockerd moves the app when it asks (mover.py)."""
    out = _as_user(nonroot, kind)
    assert out["RES"]["err_no"] == RockerErr.success, out
    assert at_own_root(out["APP"]["cgroup"]), out["APP"]
    assert in_rocker_cgroup(out["HOST"], out["RES"]["name"]), out
    tries = out["APP"]["tries"]
    # EROFS: the rocker's /sys is read-only as a whole (docs/security.md); the modes say no as well
    assert tries and all(e in (errno.EACCES, errno.EPERM, errno.EROFS) for e in tries.values()), tries


def test_a_nonroot_caller_cannot_exceed_the_ceilings(nonroot: Any) -> None:
    out = _as_user(nonroot, "exec", memory_max=200 << 20)
    assert "RES" in out, out
    assert out["RES"]["err_no"] == RockerErr.param_invalid and out["RES"]["field"] == "memory_max", out
    assert "ceiling" in out["RES"]["detail"]
    out = _as_user(nonroot, "exec", pids_max=301)
    assert out["RES"]["field"] == "pids_max", out
    out = _as_user(nonroot, "exec", memory_max=50 << 20, pids_max=300)
    assert out["RES"]["err_no"] == RockerErr.success, out


def test_a_nonroot_caller_gets_the_ceiling_by_default(nonroot: Any) -> None:
    _, d = nonroot
    seen: list[dict[str, Any]] = []

    def watch() -> None:
        deadline = time.monotonic() + 20 * SCALE
        while not seen and time.monotonic() < deadline:
            seen.extend(list_rockers(d.socket).values())
            time.sleep(0.01)

    t = threading.Thread(target=watch)
    t.start()
    out = _as_user(nonroot, "exec")
    t.join()
    assert out["RES"]["err_no"] == RockerErr.success, out
    assert seen and seen[0]["limits"]["memory_max"] == 100 << 20 and seen[0]["limits"]["pids_max"] == 300, seen


def test_the_cgroup_fds_of_a_reply_move_no_other_users_process(nonroot: Any) -> None:
    """v1: rockerd opens them as the app's uid: the kernel then refuses any process not of that uid.
    v2: a socket to rockerd, which moves only the writer, and only from inside the rocker (mover.py).
    The cgroup namespace fd is read-only."""
    victim = os.fork()
    if victim == 0:
        time.sleep(30)
        os._exit(0)
    try:
        before = Path(f"/proc/{victim}/cgroup").read_text()
        out = _as_user(nonroot, "fd", victim)
        assert out["OUT"]["cgroups"] == len(set(HIER.mounts.values())) + 1, out  # + the cgroup namespace
        refusal = errno.EACCES if HIER.mode == "v1" else errno.EPERM
        assert "moved" not in out["OUT"] and sorted(out["OUT"]["refused"]) == sorted(
            [refusal] * (out["OUT"]["cgroups"] - 1) + [errno.EBADF]), out
        assert Path(f"/proc/{victim}/cgroup").read_text() == before
        assert out["OUT"]["self_after"] == out["OUT"]["self_before"], out
        _wait_removed(out["OUT"]["name"], 10 * SCALE)  # nobody entered it: the guard gives up, rockerd cleans up
    finally:
        os.kill(victim, signal.SIGKILL)
        os.waitpid(victim, 0)


def test_the_c_clients_app_is_in_the_cgroup(cbuild: Any, base: Path, pkg: Path) -> None:  # noqa: F811
    """librocker_client (clients/c): the seed's struct has no limit fields, so rockerd's defaults apply."""
    out = c_enter(cbuild, *req_args(base, pkg, uid=1000, gid=1000))
    assert out["err_no"] == "0", out
    assert at_own_root(out["in.cgroup"].replace(";", "\n")), out["in.cgroup"]
    _wait_removed(out["guard_pname"])


# The app tries every way out of its cgroup it has: a cgroupfs of its own (v2 and v1), a user namespace
# that would give it the caps to mount one, the host's cgroupfs under /sys at the rocker's parent and root.
ESCAPE = r"""
import ctypes, json, os
libc = ctypes.CDLL(None, use_errno=True)
def err(r):
    return ctypes.get_errno() if r else 0
def write(path):
    try:
        with open(path, "w") as f:
            f.write("0")
        return 0
    except OSError as e:
        return e.errno
out = {"before": open("/proc/self/cgroup").read(),
       "mount cgroup2": err(libc.mount(b"none", b"/", b"cgroup2", 0, None)),
       "mount cgroup v1": err(libc.mount(b"none", b"/", b"cgroup", 0, b"memory")),
       "unshare user": err(libc.unshare(0x10000000)),
       "unshare cgroup": err(libc.unshare(0x02000000))}
for path in json.loads(os.environ["OUT_OF_HERE"]):
    out[path] = write(path)
out["after"] = open("/proc/self/cgroup").read()
rep = int(os.environ["REPORT_FD"])
os.write(rep, json.dumps(out).encode())
"""


@pytest.mark.parametrize("uid", [0, 1000])
def test_the_app_sees_only_its_cgroup_and_cannot_get_out(base: Path, pkg: Path, uid: int) -> None:
    """A cgroup namespace per rocker, rooted at its cgroup (rocker-spawn.c); /sys read-only; no CAP_SYS_ADMIN."""
    # where a move out would be written: every hierarchy's root, and rockerd's base
    out_of_here = [f"{m}/cgroup.procs" for m in dict.fromkeys(HIER.mounts.values())] + \
                  [f"{os.path.dirname(d)}/cgroup.procs" for d in rocker_dirs("x")]
    res, out, status = _run_exec(base, pkg, ESCAPE, uid=uid, env={"OUT_OF_HERE": json.dumps(out_of_here)})
    assert res.ok, res.detail
    assert status == 0
    assert at_own_root(out.pop("before")) and at_own_root(out.pop("after")), out
    assert all(e in (errno.EPERM, errno.EACCES, errno.EROFS) for e in out.values()), out
    _wait_removed(res.guard_pname)
