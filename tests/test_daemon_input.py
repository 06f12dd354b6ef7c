"""What rockerd does with bad requests, failing builds and hostile bytes."""

from __future__ import annotations

import errno
import json
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import varlink
from rockers import errno_of, make_req, run_app

from rocker_client import RockerErr, RockerRequest, enter_rocker, wire

pytestmark = pytest.mark.usefixtures("rockerd")


def _req(base: Path, pkg: Path, **changes: Any) -> RockerRequest:
    req = make_req(base, pkg)
    for k, v in changes.items():
        setattr(req, k, v)
    return req


@pytest.mark.parametrize(("changes", "field"), [
    ({"app_pkg_path": "relative/app.squashfs"}, "app_pkg_path"),
    ({"app_exec_dir": "/tmp/../etc"}, "app_exec_dir"),
    ({"app_data_dir": "/tmp/data\0x"}, "app_data_dir"),
    ({"app_overlay_dirs": ["/"]}, "app_overlay_dirs[0]"),
    ({"app_overlay_dirs": ["/usr", "/proc"]}, "app_overlay_dirs[1]"),
    ({"app_overlay_dirs": ["/sys/kernel"]}, "app_overlay_dirs[0]"),
    ({"app_overlay_dirs": ["/usr", "/usr/lib"]}, "app_overlay_dirs[1]"),
    ({"app_overlay_dirs": [f"/opt/d{i}" for i in range(17)]}, "app_overlay_dirs"),
    ({"uid": -1}, "uid"),
    ({"gid": 2**32}, "gid"),
    ({"uid": "1000"}, "uid"),
    ({"app_id": True}, "app_id"),
])
def test_bad_request_is_param_invalid_and_creates_nothing(base: Path, pkg: Path, changes: dict[str, Any],
                                                          field: str, rockerd) -> None:
    res = enter_rocker(_req(base, pkg, **changes), lambda _: 0)
    assert res.err_no == RockerErr.param_invalid
    assert res.detail.startswith(field + ":"), res.detail
    assert not (base / "exec").exists() and not (base / "data").exists()
    assert "refused request of caller uid 0" in rockerd.log_text()


def test_unknown_and_missing_fields(base: Path, pkg: Path, rockerd) -> None:
    params = make_req(base, pkg).to_params()
    with pytest.raises(wire.RemoteError) as e:
        wire.call(rockerd.socket, "io.rocker.Rocker.Create", {**params, "app_name": "x"})
    assert e.value.name == "io.rocker.Rocker.InvalidRequest" and e.value.parameters["field"] == "app_name"
    del params["uid"]
    with pytest.raises(wire.RemoteError) as e:
        wire.call(rockerd.socket, "io.rocker.Rocker.Create", params)
    assert e.value.parameters["field"] == "uid"


@pytest.mark.parametrize(("what", "step", "needle"), [
    ("missing package", "mount package", "No such file"),
    ("not a squashfs", "mount package", "not a squashfs image"),
    ("symlinked overlay dir", "prepare overlay layers", "symlink"),
    ("missing overlay dir", "prepare overlay layers", "No such file"),
])
def test_failed_build_undoes_everything(base: Path, pkg: Path, what: str, step: str, needle: str, rockerd) -> None:
    fds_before = len(os.listdir(f"/proc/{rockerd.proc.pid}/fd"))
    req = make_req(base, pkg, overlays=("/usr", "/etc"))
    if what == "missing package":
        req.app_pkg_path = str(base / "nope.squashfs")
    elif what == "not a squashfs":
        (base / "junk.squashfs").write_bytes(b"\0" * 8192)
        req.app_pkg_path = str(base / "junk.squashfs")
    elif what == "symlinked overlay dir":
        (base / "link").symlink_to("/usr")
        req.app_overlay_dirs = ["/etc", str(base / "link")]
    else:
        req.app_overlay_dirs = ["/etc", str(base / "nowhere")]
    res = enter_rocker(req, lambda _: 0)
    assert res.err_no == RockerErr.build_rocker_failed
    assert res.detail.startswith(step + ":") and needle in res.detail, res.detail
    assert not (base / "exec").exists() and not (base / "data").exists(), "created dirs were not undone"
    deadline = time.monotonic() + 2  # the daemon closes its end of our connection when it reads our EOF
    while len(os.listdir(f"/proc/{rockerd.proc.pid}/fd")) != fds_before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(os.listdir(f"/proc/{rockerd.proc.pid}/fd")) == fds_before, "the daemon kept fds of the failed build"


def test_app_cannot_undo_its_overlays(base: Path, pkg: Path) -> None:
    """Even a uid-0 app must not unmount /usr's overlay: the host's /usr would be under it."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)

    def probe() -> dict[str, int]:
        rc = libc.umount2(b"/usr", 2)  # MNT_DETACH
        return {"umount": rc and ctypes.get_errno(),
                "remount": errno_of(lambda: os.mkdir("/proc/rocker-x")),
                "mount": libc.mount(b"none", b"/tmp", b"tmpfs", 0, None) and ctypes.get_errno()}

    run = run_app(make_req(base, pkg, overlays=("/usr",)), probe)
    assert run.res.ok
    assert run.report["umount"] == errno.EPERM
    assert run.report["mount"] == errno.EPERM


def _raw(sock_path: str, data: bytes, read_timeout: float = 5.0) -> tuple[list[dict[str, Any]], bool]:
    """Send raw bytes; return the replies read and whether the daemon closed the connection."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(read_timeout)
    s.connect(sock_path)
    try:
        s.sendall(data)
    except (BrokenPipeError, ConnectionResetError):
        pass
    buf, closed = b"", False
    try:
        while True:
            chunk = s.recv(65536)
            if not chunk:
                closed = True
                break
            buf += chunk
            # one reply per complete message sent; stop once we have them all
            if buf.endswith(b"\0") and buf.count(b"\0") >= max(1, data.count(b"\0")):
                break
    except TimeoutError:
        pass
    except ConnectionResetError:
        closed = True
    finally:
        s.close()
    return [json.loads(m) for m in buf.split(b"\0") if m], closed


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return int(next(ln for ln in f if ln.startswith("VmRSS:")).split()[1])


@pytest.mark.parametrize("data", [
    b"\0", b"{not json}\0", b"[1,2,3]\0", b"\xff\xfe\xfd\0", b'{"method": 5}\0',
    b'{"method": "io.rocker.Rocker.Create", "parameters": [1]}\0',
])
def test_garbage_gets_an_error_and_daemon_lives(data: bytes, rockerd) -> None:
    replies, _ = _raw(rockerd.socket, data)
    assert replies and replies[0]["error"] == "io.rocker.Rocker.ProtocolViolation", replies
    assert wire.call(rockerd.socket, "io.rocker.Rocker.List", {})[0]["rockers"] is not None


def test_unknown_method_and_interface(rockerd) -> None:
    for method, err in (("io.rocker.Rocker.Explode", "org.varlink.service.MethodNotFound"),
                        ("com.example.Nope.Call", "org.varlink.service.InterfaceNotFound")):
        with pytest.raises(wire.RemoteError) as e:
            wire.call(rockerd.socket, method, {})
        assert e.value.name == err


def test_endless_message_is_cut_off(rockerd) -> None:
    pid = rockerd.proc.pid
    before = _rss_kib(pid)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(rockerd.socket)
    s.settimeout(5)
    sent, closed = 0, False
    chunk = b"x" * 65536
    try:
        while sent < 64 * 2**20:
            s.sendall(chunk)
            sent += len(chunk)
    except (BrokenPipeError, ConnectionResetError, TimeoutError):
        closed = True
    finally:
        s.close()
    assert closed, f"the daemon took {sent} bytes of one message without closing"
    assert sent <= 8 * 2**20
    assert _rss_kib(pid) - before < 16 * 1024
    assert wire.call(rockerd.socket, "io.rocker.Rocker.List", {})[0]["rockers"] is not None


def test_reference_varlink_client(rockerd) -> None:
    """The PyPI `varlink` client parses our interface description and calls us."""
    out: dict[str, Any] = {}

    def talk() -> None:
        with varlink.Client(address=f"unix:{rockerd.socket}") as client:
            out["info"] = client.get_interfaces()
            with client.open("io.rocker.Rocker") as iface:
                out["list"] = iface.List()
                try:
                    iface.Kill("rk-nosuch0", None)
                except varlink.VarlinkError as e:
                    out["kill_error"] = e.error()

    t = threading.Thread(target=talk)
    t.start()
    t.join(30)
    assert "io.rocker.Rocker" in out["info"]
    assert "rockers" in out["list"]
    assert out["kill_error"] == "io.rocker.Rocker.NoSuchRocker"


def test_log_has_created_and_ended_lines(base: Path, pkg: Path, rockerd) -> None:
    run = run_app(make_req(base, pkg), lambda: {})
    name = run.res.guard_pname
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and f"ended {name}" not in rockerd.log_text():
        time.sleep(0.05)
    log = rockerd.log_text()
    assert f"created {name}" in log and "for caller uid 0" in log
    assert f"ended {name}" in log
