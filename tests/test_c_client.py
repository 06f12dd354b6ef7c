"""librocker_client (clients/c): the seed's C API, built with make and driven against rockerd.

Everything is built into tmp dirs: `make O=<build> install PREFIX=<prefix>`, then the seed's
example (clients/c/example.c) and a test driver (clients/c/tests/probe.c) are compiled against
the installed headers. Error paths that need a misbehaving daemon use a fake one here, which
answers one call with canned bytes (and fds), or forwards it to the real rockerd.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from daemon import Daemon, start_daemon
from rockers import APP_CAP_MASK, wait_gone

from rocker_client import Exec, RockerErr, enter_rocker, request_new, wire

ROOT = Path(__file__).resolve().parent.parent
CLIENT = ROOT / "clients" / "c"
EXPORTED = {"ROCKER_enter_rocker", "ROCKER_enter_rocker_opts", "ROCKER_get_guardname", "ROCKER_join_rocker",
            "ROCKER_last_cause",
            "ROCKER_request_new"}
CREATE = "io.rocker.Rocker.Create"
NS = ("user", "mnt", "pid", "net", "uts", "ipc")

pytestmark = pytest.mark.skipif(shutil.which("cc") is None or shutil.which("make") is None,
                                reason="needs cc and make")


@dataclass
class CBuild:
    build: Path
    prefix: Path
    make_log: str
    example: Path
    example_static: Path
    probe: Path

    @property
    def so(self) -> Path:
        return self.prefix / "lib" / "librocker_client.so"

    @property
    def archive(self) -> Path:
        return self.prefix / "lib" / "librocker_client.a"

    @property
    def include(self) -> Path:
        return self.prefix / "include" / "rocker_client"


def _cc(*args: str | Path) -> None:
    proc = subprocess.run(["cc", *map(str, args)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, f"cc {' '.join(map(str, args))}:\n{proc.stderr}"


@pytest.fixture(scope="module")
def cbuild(tmp_path_factory: pytest.TempPathFactory) -> CBuild:
    top = tmp_path_factory.mktemp("c-client")
    build, prefix = top / "build", top / "prefix"
    proc = subprocess.run(["make", "-C", str(CLIENT), f"O={build}", f"PREFIX={prefix}", "install"],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    inc, lib = prefix / "include" / "rocker_client", prefix / "lib"
    strict = ("-std=c11", "-Wall", "-Wextra", "-Werror", "-Wstrict-prototypes", "-pedantic")
    example, example_static, probe = top / "example", top / "example-static", top / "probe"
    _cc(*strict, f"-I{inc}", CLIENT / "example.c", f"-L{lib}", "-lrocker_client", f"-Wl,-rpath,{lib}",
        "-o", example)
    # The static library shows only ROCKER_*: a program may define the library's internal names.
    clash = top / "clash.c"
    clash.write_text("void rkj_put(void); void rkj_put(void) {}\nint rkj_string;\n")
    _cc(*strict, f"-I{inc}", CLIENT / "example.c", clash, lib / "librocker_client.a", "-o", example_static)
    _cc(*strict, "-pthread", f"-I{inc}", CLIENT / "tests" / "probe.c", f"-L{lib}", "-lrocker_client",
        f"-Wl,-rpath,{lib}", "-o", probe)
    return CBuild(build, prefix, proc.stdout, example, example_static, probe)


def parse(out: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def run(cmd: list[str | Path], env: dict[str, str] | None = None, timeout: float = 60,
        prefix: list[str] | None = None) -> dict[str, str]:
    full_env = {**os.environ, "ROCKER_CLIENT_DEBUG": "1", **(env or {})}
    proc = subprocess.run([*(prefix or []), *map(str, cmd)], capture_output=True, text=True, env=full_env,
                          timeout=timeout, check=False, stdin=subprocess.DEVNULL)
    out = parse(proc.stdout)
    out["_rc"] = str(proc.returncode)
    out["_stderr"] = proc.stderr
    return out


def kill_guard(pid: int, name: str) -> None:
    """The seed's robust cleanup: kill the guard only while it still bears the rocker's name."""
    try:
        with open(f"/proc/{pid}/comm") as f:
            if f.read().strip() == name:
                os.kill(pid, signal.SIGKILL)
    except (FileNotFoundError, ProcessLookupError):
        pass


def enter(cbuild: CBuild, *kv: str, env: dict[str, str] | None = None, prefix: list[str] | None = None,
          timeout: float = 60, mode: str = "enter") -> dict[str, str]:
    """One probe call (`mode` enter, or join with the rocker's name first in kv), checked for leaks."""
    out = run([cbuild.probe, mode, *kv], env, timeout, prefix)
    if out.get("err_no") != "0" and out.get("guard_pname", "").startswith("rk-"):
        kill_guard(int(out["guard_pid"]), out["guard_pname"])  # a rocker nobody entered would live 10 s
    assert out["_rc"] == "0", out
    assert out["fds_before"] == out["fds_after"], f"fds leaked: {out}"
    assert out["children_left"] == "0", out
    return out


def req_args(base: Path, pkg: Path | str, name: str = "app", **extra: object) -> list[str]:
    args = [f"pkg={pkg}", f"exec={base / name / 'exec'}", f"data={base / name / 'data'}", "ov0=/usr"]
    return args + [f"{k}={v}" for k, v in extra.items()]


def cap_hex(mask: int) -> str:
    return f"{mask:016x}"


# ---- the build ----


def test_build_is_strict_and_exports_only_the_api(cbuild: CBuild) -> None:
    compiles = [line for line in cbuild.make_log.splitlines() if " -c " in line]
    assert len(compiles) == 4, cbuild.make_log  # with the join and its syscall filter shared with the Python client
    assert any("rocker_client/_native/rocker-join.c" in line for line in compiles), cbuild.make_log
    for line in compiles:
        for flag in ("-Wall", "-Wextra", "-Werror", "-fvisibility=hidden"):
            assert flag in line.split(), line

    dyn = subprocess.run(["nm", "-D", "--defined-only", str(cbuild.so)], capture_output=True, text=True,
                         check=True).stdout
    assert {line.split()[-1] for line in dyn.splitlines() if line.strip()} == EXPORTED, dyn
    static = subprocess.run(["nm", "-g", "--defined-only", str(cbuild.archive)], capture_output=True,
                            text=True, check=True).stdout
    assert {line.split()[-1] for line in static.splitlines() if " T " in line or " D " in line} == EXPORTED

    needed = subprocess.run(["readelf", "-d", str(cbuild.so)], capture_output=True, text=True, check=True).stdout
    assert re.findall(r"\(NEEDED\).*\[(.*)\]", needed) == ["libc.so.6"], "no dependency beyond libc"

    assert sorted(p.name for p in cbuild.include.iterdir()) == ["err_no.h", "lib.h"]
    pc = (cbuild.prefix / "lib" / "pkgconfig" / "rocker_client.pc").read_text()
    assert f"includedir={cbuild.include}" in pc and "-lrocker_client" in pc
    assert (cbuild.build / "rocker_client.o").is_file(), "the build went to O="


def test_headers_match_the_python_client(cbuild: CBuild) -> None:
    """The seed's error numbers and struct layouts, compiled and printed by C."""
    src = cbuild.build / "layout.c"
    src.write_text("""
#include <stddef.h>
#include <stdio.h>
#include "lib.h"
#define E(x) printf(#x "=%d\\n", ROCKER_ERR_##x);
int main(void) {
    E(unknown) E(success) E(sys) E(param_invalid) E(server_unaddr_invalid) E(gen_local_addr_failed)
    E(send_req_failed) E(recv_resp_failed) E(build_rocker_failed) E(enter_rocker_failed)
    E(app_exec_failed) E(get_guardname_failed)
    printf("result=%zu,%zu,%zu,%zu,%zu\\n", sizeof(RockerResult), offsetof(RockerResult, err_no),
           offsetof(RockerResult, app_pid), offsetof(RockerResult, guard_pid), offsetof(RockerResult, guard_pname));
    printf("request=%zu,%zu,%zu,%zu,%zu\\n", sizeof(RockerRequest), offsetof(RockerRequest, app_pkg_path),
           offsetof(RockerRequest, app_exec_dir), offsetof(RockerRequest, app_data_dir),
           offsetof(RockerRequest, app_overlay_dirs));
    RockerRequest r = ROCKER_request_new();
    int zero = !r.app_id && !r.uid && !r.gid && !r.app_pkg_path && !r.app_exec_dir && !r.app_data_dir;
    for (int i = 0; i < 16; i++) zero = zero && !r.app_overlay_dirs[i];
    printf("request_new_zero=%d\\n", zero);
    return 0;
}
""")
    exe = cbuild.build / "layout"
    _cc("-Wall", "-Werror", f"-I{cbuild.include}", src, f"-L{cbuild.prefix / 'lib'}", "-lrocker_client",
        f"-Wl,-rpath,{cbuild.prefix / 'lib'}", "-o", exe)
    out = run([exe])
    for err in RockerErr:
        assert out[err.name] == str(int(err)), err
    assert out["result"] == "28,0,4,8,12"
    assert out["request"] == "168,16,24,32,40"  # 3 ints, padding, 3 + 16 pointers (LP64)
    assert out["request_new_zero"] == "1"


# ---- against the real daemon ----


@pytest.mark.parametrize("variant", ["shared", "static"])
def test_seed_usage_example(cbuild: CBuild, rockerd: Daemon, base: Path, pkg: Path, variant: str) -> None:
    """clients/c/example.c: the seed's example, run as root for uid 1000 with five overlays."""
    exe = cbuild.example if variant == "shared" else cbuild.example_static
    out = run([exe, pkg, base])
    assert out["_rc"] == "0", out
    name = out["guard_pname"]
    assert name.startswith("rk-") and 0 < len(name) <= 15
    assert out["err_no"] == "0" and out["app_status"] == "0"
    assert out["comm"] == name, "inside, PID 1 is the guard the result names"
    assert out["hostname"] == name
    assert out["uid"] == "0" and out["pid"] != "1"
    assert wait_gone(int(out["guard_pid"]), 3) is not None
    assert (base / "your_APP" / "datadir").stat().st_uid == 1000


def test_inside_view(cbuild: CBuild, rockerd: Daemon, base: Path, pkg: Path) -> None:
    out = enter(cbuild, *req_args(base, pkg, exit=42))
    assert out["err_no"] == "0", out
    name = out["guard_pname"]
    assert out["in.comm"] == name and out["in.hostname"] == name
    assert out["gn.err_no"] == "0" and out["gn.guard_pname"] == name, "ROCKER_get_guardname of the live guard"
    assert out["in.ppid"] == "0", "the app's parent (the caller) is outside the rocker's PID namespace"
    assert out["in.procs"] == "2", "only the guard and the app"
    assert out["in.uids"] == "0,0,0" and out["in.gids"] == "0,0,0" and out["in.ngroups"] == "0"
    assert out["in.hello"] == "#!/bin/sh", "the package is mounted at the exec dir"
    assert out["waited"] == "1" and out["app_exited"] == "1" and out["app_exit"] == "42"
    # the same capability set as the Python client (rocker_client/caps.py)
    for key in ("CapPrm", "CapEff", "CapBnd"):
        assert out[f"in.{key}"] == cap_hex(APP_CAP_MASK), key
    assert out["in.CapInh"] == cap_hex(0) and out["in.CapAmb"] == cap_hex(0)
    assert out["in.NoNewPrivs"] == "1"
    # the app inherits the launcher's fds (its two pipes), none of the library's
    extra = {int(fd) for fd in out["in.fds"].split(",")} - {int(fd) for fd in out["fds_before"].split(",")}
    assert len(extra) <= 4, out["in.fds"]
    assert wait_gone(int(out["guard_pid"]), 3) is not None


def test_non_root_caller_enters_its_own_rocker(cbuild: CBuild, base: Path, pkg: Path) -> None:
    """A uid-1000 launcher: only possible because the user namespace is entered first."""
    d = start_daemon(base / "own-rockerd", "--socket-mode", "0666")
    try:
        for sub in ("app/exec", "app/data"):
            (base / sub).mkdir(parents=True)
            os.chown(base / sub, 1000, 1000)
        readable = shutil.copy(pkg, base / "app.squashfs")
        os.chmod(readable, 0o644)
        out = enter(cbuild, *req_args(base, readable, uid=1000, gid=1000, setuid=1000),
                    env={"ROCKER_SOCKET": d.socket})
    finally:
        d.stop()
    assert out["err_no"] == "0", out
    assert out["in.comm"] == out["guard_pname"] and out["in.uids"] == "0,0,0"
    assert out["in.CapEff"] == cap_hex(APP_CAP_MASK)
    assert out["app_exit"] == "0"


def test_quotes_backslashes_and_utf8_in_paths(cbuild: CBuild, rockerd: Daemon, base: Path, pkg: Path) -> None:
    odd = base / 'q"uo\\te ü€😀 sp'
    odd.mkdir()
    shutil.copy(pkg, odd / 'p"k\\g.squashfs')
    out = enter(cbuild, *req_args(odd, odd / 'p"k\\g.squashfs', name='a"b\\c'))
    assert out["err_no"] == "0", out
    assert out["in.hello"] == "#!/bin/sh"
    assert (odd / 'a"b\\c' / "data").is_dir()


def test_daemon_down(cbuild: CBuild, base: Path, pkg: Path) -> None:
    args = req_args(base, pkg)
    assert enter(cbuild, *args, env={"ROCKER_SOCKET": str(base / "nothing.sock")})["err_no"] == "3"
    (base / "file").write_text("")
    assert enter(cbuild, *args, env={"ROCKER_SOCKET": str(base / "file")})["err_no"] == "3"
    assert enter(cbuild, *args, env={"ROCKER_SOCKET": "/" + "x" * 200})["err_no"] == "3"
    with socket.socket(socket.AF_UNIX) as s:  # bound, never listening: refused
        s.bind(str(base / "deaf.sock"))
        assert enter(cbuild, *args, env={"ROCKER_SOCKET": str(base / "deaf.sock")})["err_no"] == "3"


def test_last_cause(cbuild: CBuild, rockerd: Daemon, base: Path, pkg: Path) -> None:
    """ROCKER_last_cause: a refusal's field and reason as rockerd sent them, an unreachable socket's errno,
    nothing after a call that succeeded (it is the calling thread's last call's)."""
    out = enter(cbuild, *req_args(base, pkg), "ov1=/proc")
    assert out["err_no"] == "2", out
    assert (out["cause"], out["cause.kind"], out["cause.field"], out["cause.reason"]) == \
        ("1", "InvalidRequest", "app_overlay_dirs[1]", "must not be /proc or inside it (kernel pseudo-filesystem)"), out
    for sock, err in (base / "nothing.sock", errno.ENOENT), (base / "deaf.sock", errno.ECONNREFUSED):
        with socket.socket(socket.AF_UNIX) as s:
            if err == errno.ECONNREFUSED:
                s.bind(str(sock))  # bound, never listening
            out = enter(cbuild, *req_args(base, pkg), env={"ROCKER_SOCKET": str(sock)})
        assert (out["err_no"], out["cause.kind"], out["cause.errnum"]) == ("3", "connect", str(err)), out
    out = enter(cbuild, *req_args(base, pkg))
    assert out["err_no"] == "0" and out["cause"] == "0" and out["cause.kind"] == "", out


def test_invalid_requests(cbuild: CBuild, rockerd: Daemon, base: Path, pkg: Path) -> None:
    out = enter(cbuild, *req_args(base, "relative/app.squashfs"))
    assert out["err_no"] == "2", out
    assert "InvalidRequest: app_pkg_path: must be an absolute path" in out["_stderr"]
    assert enter(cbuild, *req_args(base, pkg, uid=-1))["err_no"] == "2"
    # a NULL path goes as null; the daemon names the field
    out = enter(cbuild, f"exec={base / 'e'}", f"data={base / 'd'}")
    assert out["err_no"] == "2" and "app_pkg_path: must be a string" in out["_stderr"], out
    assert enter(cbuild, *req_args(base, pkg), "ov1=/usr")["err_no"] == "2"  # duplicate overlay
    # NULL app or request: refused before connecting (no daemon at that path)
    nowhere = {"ROCKER_SOCKET": str(base / "nothing.sock")}
    assert enter(cbuild, *req_args(base, pkg), "null_app=1", env=nowhere)["err_no"] == "2"
    assert enter(cbuild, *req_args(base, pkg), "null_req=1", env=nowhere)["err_no"] == "2"


def test_missing_package(cbuild: CBuild, rockerd: Daemon, base: Path) -> None:
    out = enter(cbuild, *req_args(base, base / "no-such.squashfs"))
    assert out["err_no"] == "7", out
    assert "BuildFailed" in out["_stderr"]
    assert not (base / "app" / "exec").exists() or not os.listdir(base / "app" / "exec")


def test_app_clone_refused(cbuild: CBuild, rockerd: Daemon, base: Path, pkg: Path) -> None:
    """RLIMIT_NPROC 1 for uid 1000: the guard is its one process, so the app's clone gets EAGAIN."""
    out = enter(cbuild, *req_args(base, pkg, uid=1000, gid=1000, nproc=1))
    assert out["err_no"] == "9", out
    assert "clone app" in out["_stderr"]
    assert out["guard_pname"].startswith("rk-"), "the result still names the rocker (enter() killed it)"
    assert wait_gone(int(out["guard_pid"]), 3) is not None


def test_threaded_caller(cbuild: CBuild, rockerd: Daemon, base: Path, pkg: Path) -> None:
    """Eight threads enter at once; each call returns while the other apps (holding copies of
    every pipe open at their fork) still run, so none may wait for its pipe's EOF."""
    out = run([cbuild.probe, "enter", *req_args(base, pkg, threads=8)], timeout=60)
    assert out["_rc"] == "0" and out["all_returned"] == "1", out
    names = set()
    for i in range(8):
        assert out[f"t{i}.err_no"] == "0", out
        assert out[f"t{i}.app_status"] == "0", out
        names.add(out[f"t{i}.guard_pname"])
    assert len(names) == 8


def test_report_pipe_not_read_to_eof(cbuild: CBuild, rockerd: Daemon, base: Path, pkg: Path) -> None:
    """A process forked while the library's report pipe is open keeps its write end until the
    call has returned (probe's hold_pipe): the library must not wait for EOF on it."""
    out = enter(cbuild, *req_args(base, pkg), "hold_pipe=1", timeout=20)
    assert out["err_no"] == "0" and out["holder_reaped"] == "1", out
    assert out["in.comm"] == out["guard_pname"]


# ---- ROCKER_join_rocker: a second process in a live rocker (`rocker exec`) ----


@pytest.fixture
def shared_rockerd(base: Path) -> Iterator[Daemon]:
    """A daemon uid 1000 and 1001 can reach too."""
    d = start_daemon(base / "shared-rockerd", "--socket-mode", "0666")
    yield d
    d.stop()


@pytest.fixture
def live(shared_rockerd: Daemon, base: Path, pkg: Path) -> Iterator[tuple[str, int, int, Path]]:
    """A rocker for uid 1000 whose first app sleeps: (name, guard pid, app pid, exec dir)."""
    for sub in ("live/exec", "live/data"):
        (base / sub).mkdir(parents=True)
        os.chown(base / sub, 1000, 1000)
    req = request_new()
    req.uid = req.gid = 1000
    req.app_pkg_path, req.app_overlay_dirs = str(shutil.copy(pkg, base / "live.squashfs")), ["/usr"]
    req.app_exec_dir, req.app_data_dir = str(base / "live/exec"), str(base / "live/data")
    res = enter_rocker(req, Exec("/bin/sleep", ["sleep", "60"]), socket=shared_rockerd.socket)
    assert res.ok, res
    yield res.guard_pname, res.guard_pid, res.app_pid, base / "live/exec"
    os.kill(res.app_pid, signal.SIGKILL)
    os.waitpid(res.app_pid, 0)
    assert wait_gone(res.guard_pid, 5) is not None


def test_join_live_rocker(cbuild: CBuild, shared_rockerd: Daemon, live: tuple[str, int, int, Path]) -> None:
    """Root joins a live rocker: same guard, PID namespace and mounts as its first app, the same
    ids and capabilities, the caller's child; the rocker lives on after the joined app ends."""
    name, guard_pid, app_pid, exec_dir = live
    out = enter(cbuild, name, f"exec={exec_dir}", "exit=42", env={"ROCKER_SOCKET": shared_rockerd.socket},
                mode="join")
    assert out["err_no"] == "0", out
    assert out["guard_pname"] == name and out["guard_pid"] == str(guard_pid)
    assert out["in.comm"] == name and out["in.hostname"] == name
    assert out["in.pidns"] == os.readlink(f"/proc/{app_pid}/ns/pid"), "the first app's PID namespace"
    assert out["in.procs"] == "3", "the guard, the first app and this one"
    assert out["in.hello"] == "#!/bin/sh", "the rocker's mounts: its package at the exec dir"
    assert out["in.uids"] == "0,0,0" and out["in.ngroups"] == "0"
    for key in ("CapPrm", "CapEff", "CapBnd"):
        assert out[f"in.{key}"] == cap_hex(APP_CAP_MASK), key
    assert out["in.CapAmb"] == cap_hex(0) and out["in.NoNewPrivs"] == "1"
    assert out["waited"] == "1" and out["app_exit"] == "42"
    assert os.waitpid(app_pid, os.WNOHANG) == (0, 0), "the first app still runs"
    with open(f"/proc/{guard_pid}/comm") as f:
        assert f.read().strip() == name


def test_join_refusals(cbuild: CBuild, shared_rockerd: Daemon, base: Path,
                       live: tuple[str, int, int, Path]) -> None:
    """Only root and the rocker's own uid may join; an unknown name and NULL arguments fail cleanly."""
    name, _, _, exec_dir = live
    env = {"ROCKER_SOCKET": shared_rockerd.socket}
    out = enter(cbuild, name, f"exec={exec_dir}", "setuid=1000", env=env, mode="join")
    assert out["err_no"] == "0" and out["in.comm"] == name, out
    out = enter(cbuild, name, "setuid=1001", env=env, mode="join")
    assert out["err_no"] == "2" and "PermissionDenied" in out["_stderr"], out
    out = enter(cbuild, "rk-nosuchrocker", env=env, mode="join")
    assert out["err_no"] == "8" and "NoSuchRocker" in out["_stderr"], out
    nowhere = {"ROCKER_SOCKET": str(base / "nothing.sock")}  # refused before connecting
    assert enter(cbuild, name, "null_name=1", env=nowhere, mode="join")["err_no"] == "2"
    assert enter(cbuild, name, "null_app=1", env=nowhere, mode="join")["err_no"] == "2"
    assert enter(cbuild, name, env=nowhere, mode="join")["err_no"] == "3"


def test_get_guardname(cbuild: CBuild, base: Path) -> None:
    odd = base / "x) (y"  # comm may hold ')': it ends at the LAST ')'
    shutil.copy("/bin/sleep", odd)
    proc = subprocess.Popen([str(odd), "30"])
    try:
        out = run([cbuild.probe, "guardname", str(proc.pid)])
        assert out["err_no"] == "0" and out["guard_pname"] == "x) (y" and out["guard_pid"] == str(proc.pid)
    finally:
        proc.kill()
        proc.wait()
    for pid in ("0", "-3", str(2**22 + 1)):
        out = run([cbuild.probe, "guardname", pid])
        assert out["err_no"] == "10" and out["guard_pname"] == "", pid


# ---- a fake daemon for the paths a real one does not take ----


Handler = Callable[[socket.socket, bytes], None]


class FakeDaemon:
    """Accepts one connection, reads one call (up to its NUL) and lets `handler` answer it."""

    def __init__(self, path: Path, handler: Handler, *, read: bool = True) -> None:
        self.path = str(path)
        self.handler = handler
        self.read = read
        self.frame = b""
        self.error: BaseException | None = None
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(self.path)
        self.listener.listen(1)
        self.listener.settimeout(30)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        try:
            conn, _ = self.listener.accept()
            with conn:
                if not self.read:
                    return
                buf = b""
                while b"\0" not in buf:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    buf += chunk
                self.frame = buf
                self.handler(conn, buf)
        except BaseException as e:
            self.error = e

    def request(self) -> dict[str, object]:
        assert self.frame.endswith(b"\0") and self.frame.count(b"\0") == 1, self.frame[-50:]
        return json.loads(self.frame[:-1].decode("utf-8"))

    def close(self) -> None:
        self.thread.join(30)
        self.listener.close()
        assert not self.thread.is_alive()
        if self.error:
            raise self.error


@pytest.fixture
def fake(base: Path) -> Iterator[Callable[..., FakeDaemon]]:
    made: list[FakeDaemon] = []

    def make(handler: Handler, **kw: bool) -> FakeDaemon:
        made.append(FakeDaemon(base / f"fake{len(made)}.sock", handler, **kw))
        return made[-1]

    yield make
    for f in made:
        f.close()


def answer(data: bytes, fds: list[int] | None = None) -> Handler:
    def handler(conn: socket.socket, _: bytes) -> None:
        if fds:
            socket.send_fds(conn, [data], fds)
        else:
            conn.sendall(data)
    return handler


def good_reply(**over: object) -> dict[str, object]:
    params: dict[str, object] = {"err_no": 0, "app_pid": 0, "guard_pid": 4242, "guard_pname": "rk-fake",
                                 "namespaces": {n: i for i, n in enumerate(NS)}}
    params.update(over)
    return {"parameters": params}


@pytest.fixture
def devnull_fds() -> Iterator[list[int]]:
    fds = [os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC) for _ in NS]
    yield fds
    for fd in fds:
        os.close(fd)


def test_request_encoding(cbuild: CBuild, fake: Callable[..., FakeDaemon], base: Path) -> None:
    """The exact JSON sent: escapes, UTF-8, NULL paths as null, only the non-NULL overlay dirs."""
    weird = 'a"b\\c/ü€😀\x01\x1f\n\t\r\b\f\x7f'
    f = fake(answer(b'{"error":"io.rocker.Rocker.InvalidRequest","parameters":{"field":"x","reason":"y"}}\0'))
    out = enter(cbuild, "app_id=7", "uid=1000", "gid=-5", f"pkg=/p{weird}", f"exec=/{weird}", "ov0=/usr",
                f"ov5={weird}", "ov15=/etc", env={"ROCKER_SOCKET": f.path})
    assert out["err_no"] == "2"
    assert f.request() == {"method": CREATE, "parameters": {
        "app_id": 7, "uid": 1000, "gid": -5, "app_pkg_path": f"/p{weird}", "app_exec_dir": f"/{weird}",
        "app_data_dir": None, "app_overlay_dirs": ["/usr", weird, "/etc"]}}


@pytest.mark.parametrize(("error", "err_no"), [
    ("io.rocker.Rocker.InvalidRequest", 2), ("io.rocker.Rocker.PermissionDenied", 2),
    ("io.rocker.Rocker.ProtocolViolation", 2), ("org.varlink.service.InvalidParameter", 2),
    ("io.rocker.Rocker.BuildFailed", 7), ("io.rocker.Rocker.LimitReached", 7),
    ("io.rocker.Rocker.InternalError", -1), ("org.varlink.service.MethodNotFound", -1),
])
def test_error_replies(cbuild: CBuild, fake: Callable[..., FakeDaemon], base: Path, pkg: Path,
                       devnull_fds: list[int], error: str, err_no: int) -> None:
    """Mapped as rocker_client.enter does; fds sent beside an error reply are closed."""
    reply = json.dumps({"error": error, "parameters": {"step": "s", "reason": "r", "errno": 2}}).encode() + b"\0"
    f = fake(answer(reply, devnull_fds[:2]))
    out = enter(cbuild, *req_args(base, pkg), env={"ROCKER_SOCKET": f.path})
    assert out["err_no"] == str(err_no), out
    assert out["guard_pid"] == "0" and out["guard_pname"] == ""


MALFORMED = {
    "not json": b"hello",
    "array": b"[]",
    "missing fields": b'{"parameters": {"guard_pid": 5}}',
    "ns index out of range": json.dumps(good_reply(namespaces={n: i + 1 for i, n in enumerate(NS)})).encode(),
    "ns missing": json.dumps(good_reply(namespaces={n: 0 for n in NS[:5]})).encode(),
    "name too long": json.dumps(good_reply(guard_pname="rk-" + "x" * 13)).encode(),
    "name with NUL": json.dumps(good_reply(guard_pname="rk-\0x")).encode(),
    "pid a string": json.dumps(good_reply(guard_pid="4242")).encode(),
    "pid zero": json.dumps(good_reply(guard_pid=0)).encode(),
    "pid fraction": json.dumps(good_reply(guard_pid=4242.5)).encode(),
    "trailing garbage": json.dumps(good_reply()).encode() + b" x",
    "trailing comma": json.dumps(good_reply()).encode()[:-1] + b",}",
    "error not a string": b'{"error": 5, "parameters": {}}',
    "too deep": b'{"x":' + b"[" * 100 + b"]" * 100 + b', "parameters": {}}',
    "lone surrogate": b'{"x": "\\ud800", "parameters": {}}',
    "bad escape": b'{"x": "\\q", "parameters": {}}',
    "raw control char": b'{"x": "a\nb", "parameters": {}}',
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_replies(cbuild: CBuild, fake: Callable[..., FakeDaemon], base: Path, pkg: Path,
                           devnull_fds: list[int], case: str) -> None:
    f = fake(answer(MALFORMED[case] + b"\0", devnull_fds))
    out = enter(cbuild, *req_args(base, pkg), env={"ROCKER_SOCKET": f.path})
    assert out["err_no"] == "6", out


def test_connection_closed_before_reply(cbuild: CBuild, fake: Callable[..., FakeDaemon], base: Path,
                                        pkg: Path) -> None:
    f = fake(answer(b'{"parameters": {'))  # no NUL, then EOF
    assert enter(cbuild, *req_args(base, pkg), env={"ROCKER_SOCKET": f.path})["err_no"] == "6"


def test_too_many_fds(cbuild: CBuild, fake: Callable[..., FakeDaemon], base: Path, pkg: Path) -> None:
    fd = os.open("/dev/null", os.O_RDONLY)

    def handler(conn: socket.socket, _: bytes) -> None:
        socket.send_fds(conn, [b"{"], [fd] * 200)
        socket.send_fds(conn, [json.dumps(good_reply()).encode()[1:] + b"\0"], [fd] * 200)

    try:
        f = fake(handler)
        assert enter(cbuild, *req_args(base, pkg), env={"ROCKER_SOCKET": f.path})["err_no"] == "6"
    finally:
        os.close(fd)


def test_send_failure(cbuild: CBuild, fake: Callable[..., FakeDaemon], base: Path) -> None:
    """The daemon hangs up without reading a call larger than the socket buffer."""
    f = fake(answer(b""), read=False)
    out = enter(cbuild, "pkg_pad=1500000", env={"ROCKER_SOCKET": f.path})
    assert out["err_no"] == "5", out


def test_reply_accepted_then_setns_fails(cbuild: CBuild, fake: Callable[..., FakeDaemon], base: Path,
                                         pkg: Path, devnull_fds: list[int]) -> None:
    """A well-formed reply (odd but valid JSON) whose fds are not namespaces: enter_rocker_failed,
    with the rocker's name and pid in the result; the fds arrive before the reply's NUL."""
    body = json.dumps({"x": [1, -2.5e3, True, None, {"y": "\\\" \u00fc"}],
                       **good_reply(guard_pname="rk-\u0061bc")}, ensure_ascii=True).encode()

    def handler(conn: socket.socket, _: bytes) -> None:
        socket.send_fds(conn, [body[:10]], devnull_fds)
        conn.sendall(body[10:] + b"\0")

    f = fake(handler)
    out = enter(cbuild, *req_args(base, pkg), env={"ROCKER_SOCKET": f.path})
    assert out["err_no"] == "8", out
    assert out["guard_pid"] == "4242" and out["guard_pname"] == "rk-abc"
    assert "setns(user)" in out["_stderr"]


def forward(rockerd: Daemon, split: int = 0, kill_guard: bool = False, unconfined: bool = False) -> Handler:
    """Pass the call to the real rockerd and its reply back (fds first, in a piece of its own);
    `unconfined`: without the syscall filter, as rockerd answers a root caller's seccomp=unconfined."""
    def handler(conn: socket.socket, frame: bytes) -> None:
        call = json.loads(frame[:-1])
        reply, fds = wire.call(rockerd.socket, call["method"], call["parameters"])
        if unconfined and reply.get("seccomp") is not None:
            os.close(fds.pop(reply.pop("seccomp")))
        try:
            if kill_guard:
                os.kill(reply["guard_pid"], signal.SIGKILL)
                assert wait_gone(reply["guard_pid"], 5) is not None
            data = json.dumps({"parameters": reply}).encode() + b"\0"
            socket.send_fds(conn, [data[:split] if split else data], fds)
            if split:
                conn.sendall(data[split:])
        finally:
            for fd in fds:
                os.close(fd)
    return handler


def test_reply_in_pieces(cbuild: CBuild, rockerd: Daemon, fake: Callable[..., FakeDaemon], base: Path,
                         pkg: Path) -> None:
    f = fake(forward(rockerd, split=7))
    out = enter(cbuild, *req_args(base, pkg), env={"ROCKER_SOCKET": f.path})
    assert out["err_no"] == "0", out
    assert out["in.comm"] == out["guard_pname"]


def test_guard_gone_before_entering(cbuild: CBuild, rockerd: Daemon, fake: Callable[..., FakeDaemon],
                                    base: Path, pkg: Path) -> None:
    """The rocker died between Create and entering: enter_rocker_failed, not app_exec_failed."""
    f = fake(forward(rockerd, kill_guard=True))
    out = enter(cbuild, *req_args(base, pkg), env={"ROCKER_SOCKET": f.path})
    assert out["err_no"] == "8", out
    assert "the rocker is gone" in out["_stderr"]


# ---- valgrind ----

VALGRIND = ["valgrind", "--leak-check=full", "--error-exitcode=99", "--track-fds=yes", "--trace-children=no",
            "--vgdb=no"]


@dataclass
class VgLog:
    pid: int
    parent: int
    text: str

    def open_fds(self) -> dict[int, str]:
        """fd -> where it was opened (valgrind's lines), for every fd listed as open at exit."""
        fds: dict[int, str] = {}
        current = None
        for line in self.text.splitlines():
            body = re.sub(r"^==\d+== ?", "", line)
            m = re.match(r"Open (?:file descriptor|AF_UNIX socket) (\d+)", body)
            if m:
                current = int(m.group(1))
                fds[current] = body
            elif current is not None and body.strip():
                fds[current] += "\n" + body
            else:
                current = None
        return fds


def valgrind(cmd: list[str | Path], logdir: Path, env: dict[str, str] | None = None) -> tuple[dict, list[VgLog]]:
    logdir.mkdir()
    logdir.chmod(0o777)  # the app (uid 1000 outside) writes its own log
    out = run(cmd, env, timeout=120, prefix=[*VALGRIND, f"--log-file={logdir}/vg.%p"])
    logs = []
    for p in sorted(logdir.iterdir()):
        text = p.read_text()
        parent = re.search(r"Parent PID: (\d+)", text)
        logs.append(VgLog(int(p.name.split(".")[1]), int(parent.group(1)) if parent else -1, text))
        assert "ERROR SUMMARY: 0 errors" in text, text
        assert "All heap blocks were freed" in text or "definitely lost: 0 bytes" in text, text
    return out, logs


def library_fds(log: VgLog) -> dict[int, str]:
    return {fd: where for fd, where in log.open_fds().items() if "rocker_client.c" in where or "rkjson.c" in where}


@pytest.mark.skipif(shutil.which("valgrind") is None, reason="needs valgrind")
def test_valgrind_create_enter_cycle(cbuild: CBuild, rockerd: Daemon, fake: Callable[..., FakeDaemon], base: Path,
                                     pkg: Path) -> None:
    # valgrind does not emulate seccomp() (ENOSYS): the join would fail at the filter, so the reply comes unconfined
    f = fake(forward(rockerd, unconfined=True))
    out, logs = valgrind([cbuild.example, pkg, base], base / "vg", {"ROCKER_SOCKET": f.path})
    assert out["_rc"] == "0" and out["err_no"] == "0" and out["comm"] == out["guard_pname"], out
    assert len(logs) == 3, [(log.pid, log.parent) for log in logs]  # launcher, intermediate, app
    by_parent = {log.parent: log for log in logs}
    app = by_parent[0]  # its parent, the launcher, is outside its PID namespace
    main = next(log for log in logs if log.parent not in (0, *(x.pid for x in logs)))
    intermediate = by_parent[main.pid]
    assert "All heap blocks were freed" in main.text, main.text
    assert all("<inherited from parent>" in where for fd, where in main.open_fds().items() if fd > 2), main.text
    assert library_fds(app) == {}, app.text
    # the intermediate exits holding only the write end of its report pipe
    held = list(library_fds(intermediate).values())
    assert len(held) == 1 and "pipe2" in held[0], intermediate.text
    assert wait_gone(int(out["guard_pid"]), 3) is not None


@pytest.mark.skipif(shutil.which("valgrind") is None, reason="needs valgrind")
def test_valgrind_error_paths(cbuild: CBuild, rockerd: Daemon, fake: Callable[..., FakeDaemon], base: Path,
                              pkg: Path, devnull_fds: list[int]) -> None:
    args = [cbuild.probe, "enter", *req_args(base, pkg)]
    # each fake daemon is made just before its case: its accept times out 30 s after it is made, and the
    # cases before it under valgrind take longer than that in the emulated 6.1 VM
    cases: dict[str, tuple[Callable[[], dict[str, str]], str]] = {
        "down": (lambda: {"ROCKER_SOCKET": str(base / "nothing.sock")}, "3"),
        "invalid": (dict, "2"),
        "malformed": (lambda: {"ROCKER_SOCKET": fake(answer(MALFORMED["ns missing"] + b"\0", devnull_fds)).path},
                      "6"),
        "setns": (lambda: {"ROCKER_SOCKET": fake(answer(json.dumps(good_reply()).encode() + b"\0", devnull_fds)).path},
                  "8"),
    }
    for name, (env_of, err) in cases.items():
        cmd = args if name != "invalid" else [cbuild.probe, "enter", *req_args(base, "rel.squashfs")]
        out, logs = valgrind(cmd, base / f"vg-{name}", env_of())
        assert out["_rc"] == "0" and out["err_no"] == err, (name, out)
        assert out["fds_before"] == out["fds_after"], (name, out)
        main = next(log for log in logs if log.parent not in {x.pid for x in logs})
        assert all("<inherited from parent>" in w for fd, w in main.open_fds().items() if fd > 2), main.text
