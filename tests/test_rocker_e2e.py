"""The seed's API end to end against a real rockerd on the real kernel."""

from __future__ import annotations

import errno
import os
import signal
import socket
import threading
from pathlib import Path

import pytest
from rockers import APP_CAP_MASK, errno_of, lo_works, make_req, proc_pids, run_app, wait_gone

from rocker_client import RockerErr, enter_rocker, get_guardname, request_new, wire
from rocker_sys import ns

pytestmark = pytest.mark.usefixtures("rockerd")


def test_seed_usage_example(base: Path, pkg: Path) -> None:
    """The seed's example, with its paths moved under a test dir and guard_pname for guard.name."""
    req = request_new()
    req.app_id, req.uid, req.gid = 1000, 1000, 1000
    req.app_pkg_path = str(pkg)
    req.app_exec_dir = str(base / "your_APP/execdir")
    req.app_data_dir = str(base / "your_APP/datadir")
    req.app_overlay_dirs = ["/usr", "/var", "/etc", "/home", "/root"]

    def start_my_app(args: object) -> int:
        return 0 if args == "my_args" else 3

    res = enter_rocker(req, start_my_app, "my_args")
    assert res.err_no == RockerErr.success, res.detail
    _, status = os.waitpid(res.app_pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    res2 = get_guardname(res.guard_pid)
    if res2.err_no == RockerErr.success and res2.guard_pname == res.guard_pname:
        try:
            os.kill(res.guard_pid, signal.SIGKILL)
        except ProcessLookupError:
            pass  # it left by itself between the check and the kill, as it does once its app is done
    assert wait_gone(res.guard_pid, 3) is not None
    assert (base / "your_APP/datadir").stat().st_uid == 1000


def test_app_return_value_is_exit_code(base: Path, pkg: Path) -> None:
    res = enter_rocker(make_req(base, pkg), lambda a: a, 42)
    assert res.ok, res.detail
    _, status = os.waitpid(res.app_pid, 0)
    assert os.waitstatus_to_exitcode(status) == 42


def test_inside_view(base: Path, pkg: Path) -> None:
    exec_dir = base / "exec"
    marker = f"rocker-e2e-{os.getpid()}-{threading.get_ident()}"

    def probe() -> dict[str, object]:
        with open(f"{exec_dir}/bin/hello", "rb") as f:
            hello = f.read().decode()
        with open(f"/usr/{marker}", "w") as f:
            f.write("written inside")
        return {
            "pid": os.getpid(), "ppid": os.getppid(), "uid": os.getuid(), "gid": os.getgid(),
            "pid1_comm": open("/proc/1/comm").read().strip(), "hostname": socket.gethostname(),
            "ifaces": [n for _, n in socket.if_nameindex()], "lo_works": lo_works(),
            "proc_pids": proc_pids(), "hello": hello,
            "exec_write": errno_of(lambda: open(f"{exec_dir}/new", "w")),
        }

    run = run_app(make_req(base, pkg), probe)
    assert run.res.ok, run.res.detail
    rep, name = run.report, run.res.guard_pname
    assert "probe_error" not in rep, rep
    assert rep["pid1_comm"] == name and rep["hostname"] == name
    assert 0 < len(name) <= 15
    assert rep["ifaces"] == ["lo"] and rep["lo_works"]
    assert rep["proc_pids"] == [1, rep["pid"]], "only the guard and the app live in the rocker"
    assert rep["ppid"] == 0 and rep["uid"] == 0 and rep["gid"] == 0
    assert "hello from rocker" in rep["hello"]
    assert rep["exec_write"] == errno.EROFS
    assert not os.path.exists(f"/usr/{marker}"), "the write went to the host's /usr"
    assert (base / "data/upper/usr" / marker).read_text() == "written inside"
    assert (base / "data").stat().st_mode & 0o777 == 0o700


@pytest.mark.parametrize("threaded", [False, True], ids=["one-fork", "intermediate"])
def test_enter_paths(base: Path, pkg: Path, monkeypatch: pytest.MonkeyPatch, threaded: bool) -> None:
    """A root single-threaded caller forks once (joining the PID namespace for its children
    only, and back); a threaded one goes through an intermediate. Either way the app is the
    caller's child, holds no namespace fd of the rocker (or of ours), and the caller's
    children go to its own PID namespace again afterwards."""
    from rocker_client import enter

    taken: list[str] = []
    for fn in ("_start_direct", "_start_via_intermediate"):
        real = getattr(enter, fn)
        monkeypatch.setattr(enter, fn, lambda *a, _real=real, _fn=fn: (taken.append(_fn), _real(*a))[1])
    stop = threading.Event()
    other = threading.Thread(target=stop.wait)
    if threaded:
        other.start()

    def probe() -> dict[str, object]:
        links = []
        for n in os.listdir("/proc/self/fd"):
            try:
                links.append(os.readlink(f"/proc/self/fd/{n}"))
            except OSError:
                pass
        return {"ns_fds": [link for link in links if link.split(":[")[0] in enter.NS_ORDER],
                "pid": os.getpid(), "pid_for_children": os.readlink("/proc/self/ns/pid_for_children"),
                "pid_ns": os.readlink("/proc/self/ns/pid")}

    try:
        run = run_app(make_req(base, pkg), probe)
    finally:
        stop.set()
        if threaded:
            other.join()
    assert run.res.ok, run.res.detail
    assert taken == (["_start_via_intermediate"] if threaded else ["_start_direct"])
    assert run.report["ns_fds"] == [], "the app kept namespace fds"
    assert run.report["pid"] == 2 and run.report["pid_for_children"] == run.report["pid_ns"]
    assert run.report["pid_ns"] != os.readlink("/proc/self/ns/pid")
    assert os.readlink("/proc/self/ns/pid_for_children") == os.readlink("/proc/self/ns/pid"), \
        "the caller's children still go to the rocker"
    assert os.waitstatus_to_exitcode(run.status) == 0


def test_host_view_of_unprivileged_app(base: Path, pkg: Path) -> None:
    seen: dict[str, str] = {}

    def probe() -> dict[str, object]:
        return {"usr_lib": errno_of(lambda: open("/usr/lib/rocker-e2e-x", "w")),
                "usr": errno_of(lambda: open("/usr/rocker-e2e-x", "w")),
                "own": errno_of(lambda: open("/var/tmp/rocker-e2e-own", "w"))}

    def host_side(res: object) -> None:
        with open(f"/proc/{res.app_pid}/status") as f:  # type: ignore[attr-defined]
            for line in f:
                key, _, val = line.partition(":")
                seen[key] = val.split()[0] if key in ("Uid", "Gid") else val.strip()
        with open(f"/proc/{res.guard_pid}/status") as f:  # type: ignore[attr-defined]
            seen["guard_uid"] = next(ln for ln in f if ln.startswith("Uid:")).split()[1]

    # not /tmp: it holds the data dir, and an overlay may not contain its own upper dir
    run = run_app(make_req(base, pkg, uid=1000, gid=1000, overlays=("/usr", "/var/tmp")), probe, host_side)
    assert run.res.ok, run.res.detail
    assert seen["Uid"] == "1000" and seen["Gid"] == "1000"
    assert seen["Groups"] == "", "supplementary groups leaked into the app"
    assert seen["guard_uid"] == "1000"
    assert seen["NoNewPrivs"] == "1"
    assert int(seen["CapEff"], 16) == APP_CAP_MASK and int(seen["CapBnd"], 16) == APP_CAP_MASK
    assert run.report == {"usr_lib": errno.EACCES, "usr": errno.EACCES, "own": 0}
    assert not os.path.exists("/var/tmp/rocker-e2e-own")


def test_guard_gone_soon_after_app_and_nothing_left(base: Path, pkg: Path, rockerd) -> None:
    run = run_app(make_req(base, pkg, overlays=("/usr", "/etc", "/var")), lambda: {})
    assert run.res.ok
    took = wait_gone(run.res.guard_pid, 2.0)
    assert took is not None, "guard outlived its app by 2 s"
    # the daemon forgets it, and the next rocker of the data dir reuses its work slot
    for _ in range(100):
        names = [r["guard_pname"] for r in wire.call(rockerd.socket, "io.rocker.Rocker.List", {})[0]["rockers"]]
        if run.res.guard_pname not in names:
            break
        threading.Event().wait(0.02)
    assert run.res.guard_pname not in names
    assert run_app(make_req(base, pkg, overlays=("/usr", "/etc", "/var")), lambda: {}).res.ok
    assert sorted(os.listdir(base / "data/work")) == ["0"]


def test_never_entered_rocker_goes_away(base: Path, pkg: Path, rockerd) -> None:
    req = make_req(base, pkg)
    reply, fds = wire.call(rockerd.socket, "io.rocker.Rocker.Create", req.to_params())
    for fd in fds:
        os.close(fd)
    assert wait_gone(reply["guard_pid"], 15) is not None


def wait_release(fds: tuple[int, int]) -> int:
    """App body: block until the test closes the pipe (every app holds a copy of its write end: drop ours)."""
    os.close(fds[1])
    return len(os.read(fds[0], 1))


def test_fifty_concurrent(base: Path, pkg: Path, rockerd) -> None:
    release_r, release_w = os.pipe()
    results = []
    lock = threading.Lock()

    def one(i: int) -> None:
        d = base / f"r{i}"
        d.mkdir()
        res = enter_rocker(make_req(d, pkg, uid=1000 + i % 2, gid=1000), wait_release, (release_r, release_w))
        with lock:
            results.append(res)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert all(r.ok for r in results), [r.detail for r in results if not r.ok]
        names = {r.guard_pname for r in results}
        assert len(names) == 50
        listed = {r["guard_pname"] for r in wire.call(rockerd.socket, "io.rocker.Rocker.List", {})[0]["rockers"]}
        assert names <= listed
    finally:
        os.close(release_w)
        os.close(release_r)
        for r in results:
            if r.ok:
                os.waitpid(r.app_pid, 0)
    for r in results:
        assert wait_gone(r.guard_pid, 5) is not None


def test_kill_and_list(base: Path, pkg: Path, rockerd) -> None:
    release_r, release_w = os.pipe()
    res = enter_rocker(make_req(base, pkg), wait_release, (release_r, release_w))
    try:
        assert res.ok
        info = next(r for r in wire.call(rockerd.socket, "io.rocker.Rocker.List", {})[0]["rockers"]
                    if r["guard_pname"] == res.guard_pname)
        assert info["guard_pid"] == res.guard_pid and info["app_id"] == 7 and info["uid"] == 0
        assert isinstance(info["created"], float)
        wire.call(rockerd.socket, "io.rocker.Rocker.Kill", {"guard_pname": res.guard_pname})
        _, status = os.waitpid(res.app_pid, 0)
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, "the app dies with its guard"
        with pytest.raises(wire.RemoteError) as e:
            wire.call(rockerd.socket, "io.rocker.Rocker.Kill", {"guard_pname": "rk-nosuchone"})
        assert e.value.name == "io.rocker.Rocker.NoSuchRocker"
    finally:
        os.close(release_w)
        os.close(release_r)


def test_daemon_not_running(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pkg: Path) -> None:
    monkeypatch.setenv("ROCKER_SOCKET", str(tmp_path / "nobody-here.sock"))
    res = enter_rocker(make_req(tmp_path, pkg), lambda _: 0)
    assert res.err_no == RockerErr.server_unaddr_invalid
    assert not (tmp_path / "exec").exists()


def test_get_guardname_of_nothing() -> None:
    assert get_guardname(0).err_no == RockerErr.get_guardname_failed
    assert get_guardname(2**22 + 12345).err_no == RockerErr.get_guardname_failed
    with open("/proc/self/comm") as f:
        assert get_guardname(os.getpid()).guard_pname == f.read().strip()


def test_guard_not_ptraceable_by_its_app(base: Path, pkg: Path) -> None:
    """The app is root in the rocker's user namespace; it still must not be able to ptrace PID 1."""

    def probe() -> dict[str, object]:
        import ctypes  # already loaded by the client

        libc = ctypes.CDLL(None, use_errno=True)
        rc = libc.ptrace(16, 1, None, None)  # PTRACE_ATTACH
        return {"rc": rc, "errno": ctypes.get_errno()}

    run = run_app(make_req(base, pkg, uid=1000, gid=1000), probe)
    assert run.res.ok
    assert run.report == {"rc": -1, "errno": errno.EPERM}


def test_pidfd_kill_of_guard_kills_app(base: Path, pkg: Path) -> None:
    release_r, release_w = os.pipe()
    res = enter_rocker(make_req(base, pkg), wait_release, (release_r, release_w))
    try:
        assert res.ok
        fd = ns.pidfd_open(res.guard_pid)
        ns.pidfd_send_signal(fd, signal.SIGKILL)
        os.close(fd)
        _, status = os.waitpid(res.app_pid, 0)
        assert os.WIFSIGNALED(status)
    finally:
        os.close(release_w)
        os.close(release_r)


def test_kill_with_null_signal_means_sigkill(base: Path, pkg: Path, rockerd) -> None:
    release_r, release_w = os.pipe()
    res = enter_rocker(make_req(base, pkg), wait_release, (release_r, release_w))
    try:
        assert res.ok
        wire.call(rockerd.socket, "io.rocker.Rocker.Kill", {"guard_pname": res.guard_pname, "signal": None})
        _, status = os.waitpid(res.app_pid, 0)
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    finally:
        os.close(release_w)
        os.close(release_r)
