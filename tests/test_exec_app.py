"""`Exec`: an app that is a program, started without a fork of the caller."""

from __future__ import annotations

import errno
import json
import os
import threading
from pathlib import Path
from typing import Any

import pytest
from pkgbuild import HELLO_OUTPUT
from rockers import APP_CAP_MASK, make_req, wait_gone

from rocker_client import Exec, RockerErr, _native, enter, enter_rocker
from rocker_client._native import JoinFailed, app_cap_mask, prepare_join

pytestmark = pytest.mark.usefixtures("rockerd")
PYTHON = "/usr/bin/python3"  # the system's: the app's uid (1000 outside) can reach it, unlike a venv under /root

# Runs inside the rocker as the app: reports what it is and where, exits 7.
PROBE = r"""
import json, os, socket, sys
fd = int(os.environ["REPORT_FD"])
status = dict(l.split(":\t", 1) for l in open("/proc/self/status").read().splitlines() if ":\t" in l)
def link(n):
    try:
        return os.readlink(f"/proc/self/fd/{n}")
    except OSError:  # the fd listdir used
        return ""
links = [link(n) for n in os.listdir("/proc/self/fd")]
ns = {n: os.readlink(f"/proc/self/ns/{n}") for n in ("user", "mnt", "pid", "net", "uts", "ipc")}
os.write(fd, json.dumps({
    "argv": sys.argv[1:], "env": sorted(os.environ), "ids": [os.getuid(), os.geteuid(), os.getgid(), os.getegid()],
    "groups": os.getgroups(), "pid": os.getpid(), "cap_eff": int(status["CapEff"], 16),
    "cap_bnd": int(status["CapBnd"], 16), "cap_inh": int(status["CapInh"], 16),
    "no_new_privs": status["NoNewPrivs"].strip(), "hostname": socket.gethostname(), "ns": ns,
    "ns_fds": [l for l in links if l.split(":[")[0] in ns],
}).encode())
os.close(fd)
os.read(int(os.environ["HOLD_FD"]), 1)  # until the test has looked at the rocker
sys.exit(7)
"""


def _probe_app(w: int, hold: int, *extra: str) -> Exec:
    return Exec(PYTHON, [PYTHON, "-c", PROBE, *extra], env={"REPORT_FD": str(w), "HOLD_FD": str(hold), "EXTRA": "x"})


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    os.close(fd)
    return b"".join(chunks)


def _run_probe(base: Path, pkg: Path, *, as_callable: bool = False) -> tuple[Any, dict[str, Any], int, dict[str, str]]:
    """The probe's result, its exit status, and the guard's namespaces (read while the app held on).
    `as_callable`: the same Exec wrapped in a plain callable, so it takes the fork path."""
    r, w = os.pipe()
    hold_r, hold_w = os.pipe()
    os.set_inheritable(w, True)
    os.set_inheritable(hold_r, True)
    try:
        app = _probe_app(w, hold_r, "a b", "c")
        res = enter_rocker(make_req(base, pkg, uid=1000, gid=1000), (lambda a: app(a)) if as_callable else app)
    finally:
        os.close(w)
        os.close(hold_r)
    try:
        report = json.loads(_read_all(r) or b"{}")
        guard_ns = {n: os.readlink(f"/proc/{res.guard_pid}/ns/{n}") for n in report.get("ns", {})}
    finally:
        os.close(hold_w)
    status = -1
    if res.ok:
        _, status = os.waitpid(res.app_pid, 0)
    return res, report, status, guard_ns


def _children() -> set[int]:
    kids: set[int] = set()
    for t in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{t}/children") as f:
            kids |= {int(x) for x in f.read().split()}
    return kids


@pytest.fixture
def no_fork(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Records any start through a fork of the caller."""
    forked: list[str] = []
    for fn in ("_start_direct", "_start_via_intermediate"):
        real = getattr(enter, fn)
        monkeypatch.setattr(enter, fn, lambda *a, _real=real, _fn=fn: (forked.append(_fn), _real(*a))[1])
    return forked


def test_exec_app_runs_inside_without_a_fork(base: Path, pkg: Path, no_fork: list[str]) -> None:
    """The app is the caller's child, PID 2 in the rocker, root of the rocker's user namespace with
    the app's capability set and no_new_privs, in all six of its namespaces, with the argv and
    environment it was given and no namespace fd; the caller's children are its own again."""
    res, rep, status, guard_ns = _run_probe(base, pkg)
    assert res.ok, res.detail
    assert no_fork == [], "the caller was forked"
    assert os.waitstatus_to_exitcode(status) == 7
    assert rep["argv"] == ["a b", "c"]
    assert set(rep["env"]) - {"LC_CTYPE"} == {"EXTRA", "HOLD_FD", "REPORT_FD"}  # Python may add LC_CTYPE
    assert rep["ids"] == [0, 0, 0, 0] and rep["groups"] == []
    assert rep["cap_eff"] == rep["cap_bnd"] == APP_CAP_MASK and rep["cap_inh"] == 0
    assert rep["no_new_privs"] == "1"
    assert rep["pid"] == 2
    assert rep["hostname"] == res.guard_pname
    assert rep["ns_fds"] == [], "the app kept namespace fds"
    assert len(guard_ns) == 6 and rep["ns"] == guard_ns
    assert os.readlink("/proc/self/ns/pid_for_children") == os.readlink("/proc/self/ns/pid")
    assert wait_gone(res.guard_pid, 5) is not None  # the app exited: the rocker ends


def test_exec_from_the_package(base: Path, pkg: Path, no_fork: list[str]) -> None:
    r, w = os.pipe()
    os.set_inheritable(w, True)
    req = make_req(base, pkg)
    to_pipe = "import os, sys; os.dup2(int(sys.argv[2]), 1); os.execv(sys.argv[1], sys.argv[1:2])"
    res = enter_rocker(req, Exec(PYTHON, [PYTHON, "-c", to_pipe, f"{req.app_exec_dir}/bin/hello", str(w)]))
    os.close(w)
    assert res.ok, res.detail
    assert _read_all(r).decode().strip() == HELLO_OUTPUT
    _, status = os.waitpid(res.app_pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert no_fork == []


def test_exec_failure_is_reported_and_the_rocker_ends(base: Path, pkg: Path, no_fork: list[str]) -> None:
    """A program that cannot be exec'd comes back as app_exec_failed with the reason, the child is
    reaped, and the guard (woken by the child) ends the rocker at once, not at its entry timeout."""
    req = make_req(base, pkg)
    before = _children()
    res = enter_rocker(req, Exec(f"{req.app_exec_dir}/share/data.txt"))  # not executable
    assert res.err_no == RockerErr.app_exec_failed
    assert res.detail == f"exec {req.app_exec_dir}/share/data.txt: Permission denied"
    assert res.app_pid == 0
    assert no_fork == []
    gone = wait_gone(res.guard_pid, 5)
    assert gone is not None and gone < 2, "the rocker waited for its first-entry timeout"
    assert _children() == before, "the failed child was not reaped"
    res = enter_rocker(req, Exec("/nonexistent/program"))
    assert (res.err_no, res.detail) == (RockerErr.app_exec_failed,
                                        "exec /nonexistent/program: No such file or directory")
    assert wait_gone(res.guard_pid, 5) is not None


def test_exec_from_a_threaded_caller(base: Path, pkg: Path, no_fork: list[str]) -> None:
    """Joining the PID namespace for children is the calling thread's own: a caller with other
    threads takes the same path, and its other threads' children stay in its namespace."""
    stop = threading.Event()
    seen: dict[str, str] = {}

    def other() -> None:
        stop.wait()
        seen["other thread"] = os.readlink(f"/proc/self/task/{threading.get_native_id()}/ns/pid_for_children")

    t = threading.Thread(target=other)
    t.start()
    try:
        res, rep, status, _ = _run_probe(base, pkg)
    finally:
        stop.set()
        t.join()
    assert res.ok, res.detail
    assert no_fork == []
    assert rep["pid"] == 2 and os.waitstatus_to_exitcode(status) == 7
    assert seen["other thread"] == os.readlink("/proc/self/ns/pid")


@pytest.mark.parametrize("path", ["_start_direct", "_start_via_intermediate"])
def test_a_callable_app_joins_the_same_way(base: Path, pkg: Path, no_fork: list[str],
                                           monkeypatch: pytest.MonkeyPatch, path: str) -> None:
    """A callable app (here one that execs the probe) runs in a fork of the caller, whose child (or
    the intermediate of a threaded caller) joins with the library's rocker_join, the join an Exec
    child and the C client run: the same rocker, credentials and capabilities. (A uid-1000 caller:
    tests/test_nonroot.py.)"""
    prepared: list[bool] = []
    real_prepare = enter.prepare_join

    def prepare(*a: Any) -> Any:
        prepared.append(True)
        return real_prepare(*a)

    monkeypatch.setattr(enter, "prepare_join", prepare)
    stop = threading.Event()
    other = threading.Thread(target=stop.wait)  # a threaded caller takes the intermediate
    if path == "_start_via_intermediate":
        other.start()
    try:
        res, rep, status, guard_ns = _run_probe(base, pkg, as_callable=True)
    finally:
        stop.set()
        if other.is_alive():
            other.join()
    assert res.ok, res.detail
    assert no_fork == [path] and prepared == [True]
    assert os.waitstatus_to_exitcode(status) == 7
    assert rep["argv"] == ["a b", "c"] and rep["pid"] == 2 and rep["hostname"] == res.guard_pname
    assert rep["ids"] == [0, 0, 0, 0] and rep["groups"] == []
    assert rep["cap_eff"] == rep["cap_bnd"] == APP_CAP_MASK and rep["cap_inh"] == 0
    assert rep["no_new_privs"] == "1"
    assert rep["ns_fds"] == [] and len(guard_ns) == 6 and rep["ns"] == guard_ns


def test_the_library_keeps_the_documented_capabilities() -> None:
    assert app_cap_mask() == APP_CAP_MASK


def test_without_the_library_entering_fails_with_the_fix(base: Path, pkg: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The native library is required: a client without it is told how to get it, for any app."""
    monkeypatch.setenv("ROCKER_EXEC_LIB", str(base / "missing.so"))
    _native.library.cache_clear()
    try:
        for app in (Exec("/bin/true"), lambda _: 0):
            res = enter_rocker(make_req(base, pkg), app)
            assert res.err_no == RockerErr.sys and res.cause is not None, res
            assert "missing.so" in res.cause.reason and "reinstall" in res.cause.reason
            assert wait_gone(res.guard_pid, 15) is not None  # the unentered rocker goes
    finally:
        monkeypatch.delenv("ROCKER_EXEC_LIB")
        _native.library.cache_clear()


def test_native_join_names_the_step_that_failed() -> None:
    """rocker_join's failure comes back as JoinFailed with the step and the errno (run in a fork:
    a join changes the process)."""
    null = os.open("/dev/null", os.O_RDONLY)
    r, w = os.pipe()
    join = prepare_join([null] * 6)
    pid = os.fork()
    if pid == 0:
        try:
            join(True)
            out = "joined"
        except JoinFailed as e:
            out = f"{e.step} {e.errno}"
        os.write(w, out.encode())
        os._exit(0)
    os.close(w)
    os.close(null)
    assert _read_all(r).decode() == f"setns(user) {errno.EINVAL}"
    assert os.waitpid(pid, 0)[1] == 0


@pytest.mark.parametrize("args", [
    ("",), ("/bin/x\0y",), ("/bin/true", "not a list"), ("/bin/true", ["ok", "b\0ad"]), ("/bin/true", [1]),
    ("/bin/true", None, {"A=B": "x"}), ("/bin/true", None, {"": "x"}), ("/bin/true", None, {"A": "x\0"}),
])
def test_exec_refuses_bad_input(args: tuple[object, ...]) -> None:
    with pytest.raises(ValueError, match=r"^Exec: "):
        Exec(*args)  # type: ignore[arg-type]


def test_exec_from_many_threads_at_once(base: Path, pkg: Path, no_fork: list[str]) -> None:
    """Threads starting Exec apps at the same time each get their own app in their own rocker (the
    PID-namespace switch is per thread), and a fork meanwhile in another thread stays with us."""
    own_ns = os.readlink("/proc/self/ns/pid")
    results: list[tuple[str, int, str]] = []
    lock = threading.Lock()
    stop = threading.Event()
    forked_ns: list[str] = []

    def starter(k: int) -> None:
        req = make_req(base / f"t{k}", pkg)
        for _ in range(5):
            res = enter_rocker(req, Exec("/bin/sh", ["sh", "-c", "exit 3"]))
            status = os.waitpid(res.app_pid, 0)[1] if res.ok else -1
            with lock:
                results.append((res.err_no.name, os.waitstatus_to_exitcode(status) if res.ok else -1, res.detail))

    def forker() -> None:
        while not stop.is_set():
            r, w = os.pipe()
            pid = os.fork()
            if pid == 0:
                os.write(w, os.readlink("/proc/self/ns/pid").encode())
                os._exit(0)
            os.close(w)
            forked_ns.append(os.read(r, 100).decode())
            os.close(r)
            os.waitpid(pid, 0)

    for k in range(4):
        (base / f"t{k}").mkdir()
        (base / f"t{k}").chmod(0o755)
    threads = [threading.Thread(target=starter, args=(k,)) for k in range(4)]
    f = threading.Thread(target=forker)
    f.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stop.set()
    f.join()
    assert results == [("success", 3, "")] * 20
    assert no_fork == []
    assert forked_ns and set(forked_ns) == {own_ns}, "a fork in another thread landed in a rocker"
