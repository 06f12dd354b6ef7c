"""rocker_client.wire against the real varlink server and against misbehaving fake servers."""

from __future__ import annotations

import array
import asyncio
import contextlib
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from rocker_client import wire
from rockerd.varlink.server import Call, Interface, Reply, VarlinkError, VarlinkServer

DESCRIPTION = """\
interface org.example.Test

method Echo(x: string) -> (x: string)
method GetPipes(n: int) -> (fds: []int)
method Fail(why: string) -> ()
method Crash() -> ()

error Failed (why: string)
"""


async def _echo(call: Call) -> Reply:
    return Reply({"x": call.parameters.get("x")})


async def _get_pipes(call: Call) -> Reply:
    fds = []
    for i in range(int(call.parameters["n"])):
        r, w = os.pipe()
        os.write(w, f"pipe{i}".encode())
        os.close(w)
        fds.append(r)
    return Reply({"fds": list(range(len(fds)))}, fds=fds)


async def _fail(call: Call) -> Reply:
    raise VarlinkError("org.example.Test.Failed", {"why": call.parameters.get("why")})


async def _crash(call: Call) -> Reply:
    raise ValueError("nope")


@pytest.fixture
async def server_path(tmp_path: Path) -> AsyncIterator[str]:
    server = VarlinkServer(
        vendor="Example",
        product="wire-test",
        version="0",
        url="https://example.org",
        interfaces=[
            Interface(
                "org.example.Test",
                DESCRIPTION,
                {"Echo": _echo, "GetPipes": _get_pipes, "Fail": _fail, "Crash": _crash},
            )
        ],
        log=logging.getLogger("rockerd.varlink.test"),
    )
    path = str(tmp_path / "rockerd.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(8)
    task = asyncio.create_task(server.serve(listener))
    try:
        yield path
    finally:
        server.close()
        done, _ = await asyncio.wait({task}, timeout=5)
        listener.close()
        assert done, "serve() did not return after close()"
        os.unlink(path)


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def wire_call(*args: Any, **kwargs: Any) -> Any:
    """wire.call is blocking; the server shares our event loop, so run the client in a thread."""
    return asyncio.to_thread(wire.call, *args, **kwargs)


# -- against the real server ------------------------------------------------------


async def test_call_roundtrip(server_path: str) -> None:
    assert await wire_call(server_path, "org.example.Test.Echo", {"x": "hi ✓"}) == ({"x": "hi ✓"}, [])
    params, fds = await wire_call(server_path, "org.varlink.service.GetInfo", {})
    assert fds == []
    assert params["interfaces"] == ["org.varlink.service", "org.example.Test"]


async def test_fds_arrive_usable_and_in_order(server_path: str) -> None:
    before = fd_count()
    params, fds = await wire_call(server_path, "org.example.Test.GetPipes", {"n": 3})
    try:
        assert params == {"fds": [0, 1, 2]}
        assert len(fds) == 3
        assert [os.read(fd, 100) for fd in fds] == [b"pipe0", b"pipe1", b"pipe2"]
        assert all(os.get_inheritable(fd) is False for fd in fds)
    finally:
        for fd in fds:
            os.close(fd)
    await asyncio.sleep(0.05)  # let the server drop its side of the connection
    assert fd_count() == before


async def test_remote_error(server_path: str) -> None:
    with pytest.raises(wire.RemoteError) as info:
        await wire_call(server_path, "org.example.Test.Fail", {"why": "because"})
    assert info.value.name == "org.example.Test.Failed"
    assert info.value.parameters == {"why": "because"}
    assert "org.example.Test.Failed" in str(info.value)
    assert isinstance(info.value, wire.WireError)

    with pytest.raises(wire.RemoteError) as info:
        await wire_call(server_path, "org.example.Test.Nope", {})
    assert info.value.name == "org.varlink.service.MethodNotFound"

    with pytest.raises(wire.RemoteError) as info:
        await wire_call(server_path, "org.example.Test.Crash", {})
    assert info.value.name == "org.example.Test.InternalError"
    assert "reason" in info.value.parameters


async def test_connection_several_calls(server_path: str) -> None:
    def go() -> list[Any]:
        out: list[Any] = []
        with wire.Connection(server_path, timeout=5) as conn:
            conn.send_oneway("org.example.Test.Echo", {"x": "ignored"})
            out.append(conn.call("org.example.Test.Echo", {"x": "a"}))
            with pytest.raises(wire.RemoteError):
                conn.call("org.example.Test.Fail", {"why": "w"})
            _params, fds = conn.call("org.example.Test.GetPipes", {"n": 1})
            out.append(os.read(fds[0], 10))
            os.close(fds[0])
            out.append(conn.call("org.example.Test.Echo", {"x": "b"}))
        with pytest.raises(wire.SendFailed):
            conn.call("org.example.Test.Echo", {"x": "closed"})
        return out

    assert await asyncio.to_thread(go) == [({"x": "a"}, []), b"pipe0", ({"x": "b"}, [])]


async def test_unserializable_parameters_leak_nothing(server_path: str) -> None:
    before = fd_count()
    with pytest.raises(TypeError):
        await wire_call(server_path, "org.example.Test.Echo", {"x": object()})
    with pytest.raises(ValueError):
        await wire_call(server_path, "org.example.Test.Echo", {"x": float("nan")})
    await asyncio.sleep(0.05)
    assert fd_count() == before


# -- connect failures ------------------------------------------------------------------


def test_connect_failures(tmp_path: Path) -> None:
    regular = tmp_path / "file"
    regular.write_text("x")
    stale = str(tmp_path / "stale.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.bind(stale)  # bound but never listening: ECONNREFUSED
    before = fd_count()
    for path in [
        str(tmp_path / "missing.sock"),
        str(regular),
        str(tmp_path),
        stale,
        str(tmp_path / ("x" * 200)),
        "/tmp/nul\0inside",
    ]:
        with pytest.raises(wire.ConnectFailed):
            wire.call(path, "a.B", {}, timeout=2)
    assert fd_count() == before


def test_default_socket_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ROCKER_SOCKET", raising=False)
    assert wire.default_socket_path() == "/run/rocker/rockerd.sock"
    monkeypatch.setenv("ROCKER_SOCKET", "/tmp/other.sock")
    assert wire.default_socket_path() == "/tmp/other.sock"
    monkeypatch.setenv("ROCKER_SOCKET", "")
    assert wire.default_socket_path() == "/run/rocker/rockerd.sock"


def test_import_is_light() -> None:
    path = Path(wire.__file__)
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('wire', {str(path)!r})\n"
        "mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)\n"
        "bad = [m for m in ('asyncio', 'pydantic', 'varlink') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# -- misbehaving servers ---------------------------------------------------------------


class FakeServer:
    """Accepts one connection in a thread, reads the call, then does whatever ``behaviour`` says."""

    def __init__(self, path: str, behaviour: Callable[[socket.socket], None], read_call: bool = True) -> None:
        self.path = path
        self.behaviour = behaviour
        self.read_call = read_call
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(path)
        self.listener.listen(1)
        self.listener.settimeout(10)
        self.error: BaseException | None = None
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            conn, _ = self.listener.accept()
            with conn:
                conn.settimeout(10)
                if self.read_call:
                    data = b""
                    while not data.endswith(b"\0"):
                        chunk = conn.recv(4096)
                        if not chunk:
                            break
                        data += chunk
                self.behaviour(conn)
        except BaseException as exc:
            self.error = exc
        finally:
            self.done.set()

    def close(self) -> None:
        self.thread.join(15)
        self.listener.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        assert not self.thread.is_alive()
        if self.error is not None:
            raise self.error


@contextlib.contextmanager
def fake_server(tmp_path: Path, behaviour: Callable[[socket.socket], None], **kw: Any) -> Iterator[FakeServer]:
    server = FakeServer(str(tmp_path / "fake.sock"), behaviour, **kw)
    try:
        yield server
    finally:
        server.close()


def send_with_fds(conn: socket.socket, data: bytes, count: int) -> None:
    """Send data with ``count`` fresh pipe read ends attached; our copies are closed after."""
    pipes = [os.pipe() for _ in range(count)]
    try:
        fds = array.array("i", [r for r, _ in pipes])
        conn.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)])
    finally:
        for r, w in pipes:
            os.close(r)
            os.close(w)


def hang(conn: socket.socket) -> None:
    time.sleep(1.5)


BAD_REPLIES: list[Any] = [
    pytest.param(lambda c: None, wire.RecvFailed, id="eof"),
    pytest.param(lambda c: c.sendall(b"{not json\0"), wire.RecvFailed, id="bad-json"),
    pytest.param(lambda c: c.sendall(b"\xff\xfe\0"), wire.RecvFailed, id="bad-utf8"),
    pytest.param(lambda c: c.sendall(b"[1]\0"), wire.RecvFailed, id="not-object"),
    pytest.param(lambda c: c.sendall(b'{"parameters": 5}\0'), wire.RecvFailed, id="params-not-object"),
    pytest.param(lambda c: c.sendall(b'{"error": 5}\0'), wire.RecvFailed, id="error-not-string"),
    pytest.param(lambda c: send_with_fds(c, b"{broken", 2), wire.RecvFailed, id="fds-then-garbage-eof"),
    pytest.param(lambda c: send_with_fds(c, b"{broken}\0", 3), wire.RecvFailed, id="fds-with-bad-json"),
    pytest.param(lambda c: send_with_fds(c, b'{"parameters": {}', 2), wire.RecvFailed, id="fds-then-eof"),
    pytest.param(
        lambda c: send_with_fds(c, b'{"error": "x.Y", "parameters": {"a": 1}}\0', 2),
        wire.RemoteError,
        id="error-with-fds",
    ),
    pytest.param(hang, wire.RecvFailed, id="timeout"),
]


@pytest.mark.parametrize(("behaviour", "expected"), BAD_REPLIES)
def test_bad_replies_raise_and_leak_nothing(
    tmp_path: Path, behaviour: Callable[[socket.socket], None], expected: type[Exception]
) -> None:
    before = fd_count()
    with fake_server(tmp_path, behaviour) as server:
        started = time.monotonic()
        with pytest.raises(expected):
            wire.call(server.path, "a.B", {}, timeout=0.5)
        assert time.monotonic() - started < 1.5
    assert fd_count() == before


def test_fds_arriving_before_the_end_of_the_reply(tmp_path: Path) -> None:
    def split_reply(conn: socket.socket) -> None:
        send_with_fds(conn, b'{"parame', 2)
        time.sleep(0.1)
        conn.sendall(b'ters": {"ok": true}}\0')

    before = fd_count()
    with fake_server(tmp_path, split_reply) as server:
        params, fds = wire.call(server.path, "a.B", {}, timeout=5)
    assert params == {"ok": True}
    assert len(fds) == 2
    for fd in fds:
        os.fstat(fd)
        os.close(fd)
    assert fd_count() == before


def test_oversized_reply(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(wire, "MAX_REPLY", 10_000)

    def flood(conn: socket.socket) -> None:
        with contextlib.suppress(OSError):
            conn.sendall(b"x" * 500_000)

    with fake_server(tmp_path, flood) as server, pytest.raises(wire.RecvFailed, match="larger"):
        wire.call(server.path, "a.B", {}, timeout=5)


def test_send_failed(tmp_path: Path) -> None:
    with fake_server(tmp_path, lambda c: None, read_call=False) as server:
        conn = wire.Connection(server.path, timeout=5)
        try:
            assert server.done.wait(5)
            time.sleep(0.05)
            with pytest.raises(wire.SendFailed):
                conn.call("a.B", {"pad": "x" * 300_000})
        finally:
            conn.close()
