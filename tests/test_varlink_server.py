"""rockerd.varlink.server against real unix sockets, the `varlink` reference client and hostile input."""

from __future__ import annotations

import array
import asyncio
import contextlib
import gc
import json
import logging
import os
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import varlink
from varlink.scanner import Interface as ScannedInterface

from rockerd.varlink.framing import FrameReader, FramingError, parse_call
from rockerd.varlink.server import (
    SERVICE_DESCRIPTION,
    Call,
    Interface,
    Limits,
    Reply,
    VarlinkError,
    VarlinkServer,
)

TEST_DESCRIPTION = """\
# A dummy interface for the server tests.
interface org.example.Test

type Thing (name: string, count: int)

# Returns its argument.
method Echo(x: string) -> (x: string)

# Returns a pipe's read end; "hello" waits in it.
method GetPipe() -> (fd: int)

# Returns the caller's credentials as the server saw them.
method Whoami() -> (pid: int, uid: int, gid: int)

method Fail(why: string) -> ()
method Crash() -> ()
method Sleep(seconds: float) -> ()
method BadFd() -> (fd: int)
method Things() -> (things: []Thing, mode: ?(on, off), extra: [string]int)

# Declared but deliberately without a handler.
method Declared() -> ()

error Failed (why: string)
"""

LOG = "rockerd.varlink.test"


class Handlers:
    """The dummy interface's handlers; records what the server handed over."""

    def __init__(self) -> None:
        self.calls: list[Call] = []
        self.pipe_fds: list[int] = []

    async def echo(self, call: Call) -> Reply:
        self.calls.append(call)
        return Reply({"x": call.parameters.get("x")})

    async def get_pipe(self, call: Call) -> Reply:
        r, w = os.pipe()
        os.write(w, b"hello")
        os.close(w)
        self.pipe_fds.append(r)
        return Reply({"fd": 0}, fds=[r])

    async def whoami(self, call: Call) -> Reply:
        return Reply({"pid": call.peer.pid, "uid": call.peer.uid, "gid": call.peer.gid})

    async def fail(self, call: Call) -> Reply:
        raise VarlinkError("org.example.Test.Failed", {"why": call.parameters.get("why")})

    async def crash(self, call: Call) -> Reply:
        raise RuntimeError("boom: secret detail")

    async def sleep(self, call: Call) -> Reply:
        await asyncio.sleep(float(call.parameters.get("seconds", 0)))
        return await self.get_pipe(call)

    async def bad_fd(self, call: Call) -> Reply:
        return Reply({"fd": 0}, fds=[999_999])

    async def things(self, call: Call) -> Reply:
        return Reply({"things": [{"name": "a", "count": 1}], "mode": "on", "extra": {"k": 2}, "undeclared": True})

    def interface(self) -> Interface:
        return Interface(
            name="org.example.Test",
            description=TEST_DESCRIPTION,
            methods={
                "Echo": self.echo,
                "GetPipe": self.get_pipe,
                "Whoami": self.whoami,
                "Fail": self.fail,
                "Crash": self.crash,
                "Sleep": self.sleep,
                "BadFd": self.bad_fd,
                "Things": self.things,
            },
        )


class Running:
    def __init__(self, server: VarlinkServer, path: str, handlers: Handlers, task: asyncio.Task[None]) -> None:
        self.server = server
        self.path = path
        self.handlers = handlers
        self.task = task


Starter = Callable[..., Awaitable[Running]]


@pytest.fixture
async def start_server(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> AsyncIterator[Starter]:
    """Factory: a served VarlinkServer on a fresh socket; everything is torn down and checked after."""
    gc.collect()  # leftovers of earlier tests must not be blamed on this one
    caplog.set_level(logging.DEBUG)
    started: list[tuple[Running, socket.socket]] = []

    async def start(limits: Limits | None = None, protocol_error: str | None = None) -> Running:
        handlers = Handlers()
        kwargs: dict[str, Any] = {}
        if limits is not None:
            kwargs["limits"] = limits
        if protocol_error is not None:
            kwargs["protocol_error"] = protocol_error
        server = VarlinkServer(
            vendor="Example",
            product="rocker-test",
            version="1.2.3",
            url="https://example.org/rocker",
            interfaces=[handlers.interface()],
            log=logging.getLogger(LOG),
            **kwargs,
        )
        path = str(tmp_path / f"s{len(started)}.sock")
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(path)
        listener.listen(16)
        task = asyncio.create_task(server.serve(listener))
        running = Running(server, path, handlers, task)
        started.append((running, listener))
        await asyncio.sleep(0)
        return running

    yield start

    for running, listener in started:
        running.server.close()
        done, _ = await asyncio.wait({running.task}, timeout=5)
        assert done, "serve() did not return after close()"
        assert running.server.connections == 0
        listener.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(running.path)
    # No "Task exception was never retrieved", "Task was destroyed but it is pending", ...
    gc.collect()
    noisy = [r for r in caplog.records if r.name == "asyncio" and r.levelno >= logging.WARNING]
    assert not noisy, [r.getMessage() for r in noisy]


# -- helpers ------------------------------------------------------------------


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def proc_status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"{field} not in /proc/self/status")


async def raw_connect(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, path)
    return sock


async def read_until_eof(sock: socket.socket, timeout: float = 5.0) -> bytes:
    """All bytes until the server closes; TimeoutError if it does not close in time."""
    loop = asyncio.get_running_loop()
    data = bytearray()
    async with asyncio.timeout(timeout):
        while True:
            try:
                chunk = await loop.sock_recv(sock, 65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            data += chunk
    return bytes(data)


async def read_message(sock: socket.socket, timeout: float = 5.0) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    data = bytearray()
    async with asyncio.timeout(timeout):
        while b"\0" not in data:
            chunk = await loop.sock_recv(sock, 1)
            if not chunk:
                raise EOFError(f"EOF after {bytes(data)!r}")
            data += chunk
    return json.loads(data[:-1])


def messages(data: bytes) -> list[dict[str, Any]]:
    assert data.endswith(b"\0") or not data, data
    return [json.loads(part) for part in data.split(b"\0")[:-1]]


def encode(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj).encode() + b"\0"


async def call_raw(path: str, obj: dict[str, Any]) -> dict[str, Any]:
    sock = await raw_connect(path)
    try:
        await asyncio.get_running_loop().sock_sendall(sock, encode(obj))
        return await read_message(sock)
    finally:
        sock.close()


async def assert_still_serving(running: Running) -> None:
    reply = await call_raw(running.path, {"method": "org.example.Test.Echo", "parameters": {"x": "alive"}})
    assert reply == {"parameters": {"x": "alive"}}


def server_warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == LOG and r.levelno >= logging.WARNING]


async def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


# -- the reference client -------------------------------------------------------


async def test_reference_client_getinfo(start_server: Starter) -> None:
    running = await start_server()

    def go() -> tuple[list[str], dict[str, Any]]:
        with varlink.Client(address=f"unix:{running.path}") as client:
            interfaces = client.get_interfaces()
            return interfaces, dict(client.info)

    interfaces, info = await asyncio.to_thread(go)
    assert interfaces == ["org.varlink.service", "org.example.Test"]
    assert info["vendor"] == "Example"
    assert info["product"] == "rocker-test"
    assert info["version"] == "1.2.3"
    assert info["url"] == "https://example.org/rocker"


async def test_reference_client_parses_descriptions_and_calls(start_server: Starter) -> None:
    running = await start_server()

    def go() -> tuple[Any, ...]:
        with varlink.Client(address=f"unix:{running.path}") as client:
            with client.open("org.example.Test") as conn:
                echoed = conn.Echo("grüße \u2603")
                things = conn.Things()
            # The client ships its own copy of org.varlink.service; parse ours explicitly.
            with client.open("org.varlink.service") as svc:
                ours = svc.GetInterfaceDescription("org.varlink.service")["description"]
                theirs = svc.GetInterfaceDescription("org.example.Test")["description"]
            return echoed, things, ours, theirs

    echoed, things, ours, theirs = await asyncio.to_thread(go)
    assert echoed == {"x": "grüße \u2603"}
    # The reference client drops reply fields its parsed IDL does not declare.
    assert things == {"things": [{"name": "a", "count": 1}], "mode": "on", "extra": {"k": 2}}
    assert ours == SERVICE_DESCRIPTION
    assert theirs == TEST_DESCRIPTION
    parsed = ScannedInterface(ours)
    assert parsed.name == "org.varlink.service"
    assert {"GetInfo", "GetInterfaceDescription", "InterfaceNotFound", "MethodNotFound"} <= set(parsed.members)
    assert ScannedInterface(theirs).name == "org.example.Test"


async def test_reference_client_error_reply(start_server: Starter) -> None:
    running = await start_server()

    def go() -> varlink.VarlinkError:
        with varlink.Client(address=f"unix:{running.path}") as client, client.open("org.example.Test") as conn:
            with pytest.raises(varlink.VarlinkError) as info:
                conn.Fail("because")
            # The connection is still usable after an error reply.
            assert conn.Echo("again") == {"x": "again"}
            return info.value

    err = await asyncio.to_thread(go)
    assert err.error() == "org.example.Test.Failed"
    assert err.parameters() == {"why": "because"}


async def test_reference_client_unknown_interface(start_server: Starter) -> None:
    running = await start_server()

    def go() -> None:
        with varlink.Client(address=f"unix:{running.path}") as client:
            sock = client.open_connection()  # open() would leak its socket when it raises
            try:
                with pytest.raises(varlink.InterfaceNotFound) as info:
                    client.open("org.example.Nope", connection=sock)
            finally:
                sock.close()
            assert info.value.parameters() == {"interface": "org.example.Nope"}

    await asyncio.to_thread(go)


# -- routing and errors (raw sockets) ----------------------------------------------


@pytest.mark.parametrize(
    ("request_", "expected"),
    [
        (
            {"method": "org.example.Nope.Echo", "parameters": {}},
            {"error": "org.varlink.service.InterfaceNotFound", "parameters": {"interface": "org.example.Nope"}},
        ),
        (
            {"method": "NoDotsAtAll"},
            {"error": "org.varlink.service.InterfaceNotFound", "parameters": {"interface": ""}},
        ),
        (
            {"method": "org.example.Test.Nope"},
            {"error": "org.varlink.service.MethodNotFound", "parameters": {"method": "org.example.Test.Nope"}},
        ),
        (
            {"method": "org.example.Test.Declared"},
            {
                "error": "org.varlink.service.MethodNotImplemented",
                "parameters": {"method": "org.example.Test.Declared"},
            },
        ),
        (
            {"method": "org.example.Test.Fail", "parameters": {"why": "x"}},
            {"error": "org.example.Test.Failed", "parameters": {"why": "x"}},
        ),
        (
            {"method": "org.varlink.service.GetInterfaceDescription", "parameters": {"interface": "a.b"}},
            {"error": "org.varlink.service.InterfaceNotFound", "parameters": {"interface": "a.b"}},
        ),
        (
            {"method": "org.varlink.service.GetInterfaceDescription", "parameters": {"interface": 7}},
            {"error": "org.varlink.service.InvalidParameter", "parameters": {"parameter": "interface"}},
        ),
        (
            # "parameters": null is accepted as {} (as systemd does); "more" gets one plain reply.
            {"method": "org.example.Test.Echo", "parameters": None, "more": True},
            {"parameters": {"x": None}},
        ),
    ],
)
async def test_routing_errors(start_server: Starter, request_: dict[str, Any], expected: dict[str, Any]) -> None:
    running = await start_server()
    assert await call_raw(running.path, request_) == expected
    await assert_still_serving(running)


async def test_handler_crash_is_internal_error_and_connection_survives(
    start_server: Starter, caplog: pytest.LogCaptureFixture
) -> None:
    running = await start_server()
    sock = await raw_connect(running.path)
    loop = asyncio.get_running_loop()
    try:
        await loop.sock_sendall(sock, encode({"method": "org.example.Test.Crash"}))
        reply = await read_message(sock)
        assert reply["error"] == "org.example.Test.InternalError"
        assert "RuntimeError" in reply["parameters"]["reason"]
        assert "secret" not in reply["parameters"]["reason"]
        await loop.sock_sendall(sock, encode({"method": "org.example.Test.Echo", "parameters": {"x": "1"}}))
        assert await read_message(sock) == {"parameters": {"x": "1"}}
    finally:
        sock.close()
    crash_logs = [r for r in caplog.records if r.name == LOG and r.exc_info and "Crash" in r.getMessage()]
    assert len(crash_logs) == 1


async def test_bad_reply_fd_becomes_internal_error(start_server: Starter) -> None:
    running = await start_server()
    reply = await call_raw(running.path, {"method": "org.example.Test.BadFd"})
    assert reply["error"] == "org.example.Test.InternalError"
    await assert_still_serving(running)


async def test_oneway_and_pipelining_keep_order(start_server: Starter) -> None:
    running = await start_server()
    sock = await raw_connect(running.path)
    try:
        payload = (
            encode({"method": "org.example.Test.Echo", "parameters": {"x": "one"}, "oneway": True})
            + encode({"method": "org.example.Test.Echo", "parameters": {"x": "two"}})
            + encode({"method": "org.example.Test.Fail", "parameters": {"why": "three"}})
            + encode({"method": "org.example.Test.Echo", "parameters": {"x": "four"}})
        )
        await asyncio.get_running_loop().sock_sendall(sock, payload)
        assert await read_message(sock) == {"parameters": {"x": "two"}}
        assert (await read_message(sock))["parameters"] == {"why": "three"}
        assert await read_message(sock) == {"parameters": {"x": "four"}}
    finally:
        sock.close()
    assert [c.parameters["x"] for c in running.handlers.calls] == ["one", "two", "four"]
    assert running.handlers.calls[0].oneway is True
    assert running.handlers.calls[1].oneway is False


async def test_peer_credentials(start_server: Starter) -> None:
    running = await start_server()
    reply = await call_raw(running.path, {"method": "org.example.Test.Whoami"})
    assert reply == {"parameters": {"pid": os.getpid(), "uid": os.getuid(), "gid": os.getgid()}}


def test_interface_definitions_are_checked() -> None:
    async def h(call: Call) -> Reply:
        return Reply({})

    def make(iface: Interface) -> VarlinkServer:
        return VarlinkServer(vendor="v", product="p", version="1", url="u", interfaces=[iface])

    make(Interface("a.b", "interface a.b\nmethod M() -> ()\n", {"M": h}))
    with pytest.raises(ValueError, match="not declared"):
        make(Interface("a.b", "interface a.b\nmethod M() -> ()\n", {"N": h}))
    with pytest.raises(ValueError, match="must start with"):
        make(Interface("a.b", "interface a.c\nmethod M() -> ()\n", {"M": h}))
    with pytest.raises(ValueError, match="CR"):
        make(Interface("a.b", "interface a.b\r\nmethod M() -> ()\r\n", {"M": h}))
    with pytest.raises(ValueError, match="provided by the server"):
        make(Interface("org.varlink.service", SERVICE_DESCRIPTION, {}))


# -- hostile input -----------------------------------------------------------------

HOSTILE = [
    pytest.param(b"\0", "empty", id="lone-nul"),
    pytest.param(b"{not json}\0", "invalid JSON", id="not-json"),
    pytest.param(b"[1,2,3]\0", "must be a JSON object", id="array"),
    pytest.param(b'"str"\0', "must be a JSON object", id="string"),
    pytest.param(b"\xff\xfe{}\0", "UTF-8", id="bad-utf8"),
    pytest.param(b'{"method": "a.B\xc3"}\0', "UTF-8", id="truncated-utf8"),
    pytest.param(b'{"method": 5}\0', "method", id="method-int"),
    pytest.param(b'{"parameters": {}}\0', "method", id="method-missing"),
    pytest.param(b'{"method": "org.example.Test.Echo", "parameters": [1]}\0', "parameters", id="params-array"),
    pytest.param(b'{"method": "org.example.Test.Echo", "parameters": "x"}\0', "parameters", id="params-str"),
    pytest.param(b'{"method": "org.example.Test.Echo", "oneway": "yes"}\0', "oneway", id="oneway-str"),
    pytest.param(b'{"method": "org.example.Test.Echo", "upgrade": true}\0', "upgrade", id="upgrade"),
    pytest.param(b'{"method": "a.B", "parameters": {"x": NaN}}\0', "invalid JSON", id="nan"),
    pytest.param(b'{"method": "a.B", "parameters": {"x": 1e999}}\0', "invalid JSON", id="inf"),
    pytest.param(b'{"method": "a.B", "method": "a.C"}\0', "duplicate", id="dup-key"),
    pytest.param(b'{"method": "a.B", "parameters": {"x": "\\ud800"}}\0', "surrogate", id="lone-surrogate"),
    pytest.param(b"[" * 10_000 + b"]" * 10_000 + b"\0", "nested", id="deep-nesting"),
    pytest.param(b'{"method": "a.B", "parameters": {"x": ' + b"9" * 5000 + b"}}\0", "invalid JSON", id="huge-int"),
    pytest.param(b'{"method": "a.B", "x": 1}\0{garbage\0', "invalid JSON", id="valid-then-garbage"),
]


@pytest.mark.parametrize(("payload", "reason"), HOSTILE)
async def test_hostile_input(
    start_server: Starter, caplog: pytest.LogCaptureFixture, payload: bytes, reason: str | None
) -> None:
    running = await start_server(limits=Limits(max_message=32 * 1024, request_timeout=2.0))
    sock = await raw_connect(running.path)
    try:
        await asyncio.get_running_loop().sock_sendall(sock, payload)
        data = await read_until_eof(sock)  # closed by the server, not by us
        *answered, reply = messages(data)
        assert reply["error"] == "org.varlink.service.InvalidParameter"
        assert set(reply["parameters"]) == {"parameter"}
        assert reason in reply["parameters"]["parameter"]
        # Whatever came before the fault was served normally.
        assert [m["error"] for m in answered] == ["org.varlink.service.InterfaceNotFound"] * len(answered)
    finally:
        sock.close()
    await assert_still_serving(running)
    warnings = server_warnings(caplog)
    assert len(warnings) == 1, [w.getMessage() for w in warnings]
    assert f"uid={os.getuid()}" in warnings[0].getMessage()
    assert f"pid={os.getpid()}" in warnings[0].getMessage()


async def test_custom_protocol_error_name(start_server: Starter) -> None:
    running = await start_server(protocol_error="io.rocker.Rocker.InvalidRequest")
    sock = await raw_connect(running.path)
    try:
        await asyncio.get_running_loop().sock_sendall(sock, b"{oops\0")
        (reply,) = messages(await read_until_eof(sock))
    finally:
        sock.close()
    assert reply["error"] == "io.rocker.Rocker.InvalidRequest"
    assert "invalid JSON" in reply["parameters"]["parameter"]


async def test_message_size_boundary(start_server: Starter) -> None:
    limit = 4096
    running = await start_server(limits=Limits(max_message=limit))

    skeleton = len(encode({"method": "org.example.Test.Echo", "parameters": {"x": ""}})) - 1

    def exact(size: int) -> bytes:
        return encode({"method": "org.example.Test.Echo", "parameters": {"x": "a" * (size - skeleton)}})

    ok = exact(limit)
    assert len(ok) == limit + 1
    (reply,) = await call_raw_bytes(running.path, ok)
    assert reply == {"parameters": {"x": "a" * (limit - skeleton)}}
    too_big = exact(limit + 1)
    (err,) = await call_raw_bytes(running.path, too_big, until_eof=True)
    assert err["error"] == "org.varlink.service.InvalidParameter"
    assert "longer than" in err["parameters"]["parameter"]
    await assert_still_serving(running)


async def call_raw_bytes(path: str, payload: bytes, until_eof: bool = False) -> list[dict[str, Any]]:
    sock = await raw_connect(path)
    try:
        await asyncio.get_running_loop().sock_sendall(sock, payload)
        if until_eof:
            return messages(await read_until_eof(sock))
        return [await read_message(sock)]
    finally:
        sock.close()


def _reset_peak_rss() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


async def test_unterminated_flood_is_cut_off_without_buffering(
    start_server: Starter, caplog: pytest.LogCaptureFixture
) -> None:
    running = await start_server(limits=Limits(max_message=64 * 1024))
    chunk = b"x" * (1 << 20)
    flood = 64 << 20  # what a buffering server would hold
    result: dict[str, Any] = {}

    def sender() -> None:
        sent = 0
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(10)
            sock.connect(running.path)
            try:
                while sent < flood:
                    sock.sendall(chunk)
                    sent += len(chunk)
            except (BrokenPipeError, ConnectionResetError) as exc:
                result["error"] = exc
            result["sent"] = sent
            data = b""
            with contextlib.suppress(OSError):
                while True:
                    part = sock.recv(65536)
                    if not part:
                        break
                    data += part
            result["data"] = data

    peak_resettable = _reset_peak_rss()
    before = proc_status_kb("VmRSS")
    await asyncio.wait_for(asyncio.to_thread(sender), 30)
    after = proc_status_kb("VmHWM" if peak_resettable else "VmRSS")

    assert "error" in result, f"server kept reading: {result.get('sent')} bytes accepted"
    assert result["sent"] < 8 << 20
    assert after - before < 8 * 1024, f"RSS grew by {after - before} kB"
    if result["data"]:  # the error reply is normally readable before the reset
        (reply,) = messages(result["data"])
        assert "longer than" in reply["parameters"]["parameter"]
    await wait_for(lambda: running.server.connections == 0)
    assert len(server_warnings(caplog)) == 1
    await assert_still_serving(running)


def test_frame_reader_bounds() -> None:
    reader = FrameReader(8)
    reader.feed(b"12345678")
    assert reader.next_frame() is None
    assert reader.room() == 1
    reader.feed(b"\0abc\0")
    assert reader.next_frame() == b"12345678"
    assert reader.next_frame() == b"abc"
    assert reader.next_frame() is None
    assert not reader.has_partial()
    reader.feed(b"1234")
    reader.feed(b"")
    assert reader.has_partial()
    reader.feed(b"5678")
    with pytest.raises(FramingError, match="longer than"):
        reader.feed(b"9")
    assert reader.buffered == 0
    # Over-long even when the NUL arrives in the same chunk.
    with pytest.raises(FramingError):
        FrameReader(4).feed(b"ok\0toolong\0")
    with pytest.raises(FramingError, match="method"):
        parse_call(b'{"method": null}')


# -- limits --------------------------------------------------------------------------


async def test_connection_limit(start_server: Starter, caplog: pytest.LogCaptureFixture) -> None:
    running = await start_server(limits=Limits(max_connections=3, root_connections=0))
    held = [await raw_connect(running.path) for _ in range(3)]
    extra: list[socket.socket] = []
    try:
        await wait_for(lambda: running.server.connections == 3)
        for _ in range(2):  # answered with the limit (before any request), then closed
            sock = await raw_connect(running.path)
            extra.append(sock)
            assert messages(await read_until_eof(sock, timeout=2)) == [{
                "error": "org.varlink.service.LimitReached",
                "parameters": {"limit": "connections", "reason": "rockerd serves at most 3 connections"}}]
        assert running.server.connections == 3
        limit_logs = [r for r in server_warnings(caplog) if "refusing" in r.getMessage()]
        assert len(limit_logs) == 1
        held.pop().close()
        await wait_for(lambda: running.server.connections == 2)
        await assert_still_serving(running)
    finally:
        for sock in held + extra:
            sock.close()


async def test_slow_client_is_disconnected(start_server: Starter, caplog: pytest.LogCaptureFixture) -> None:
    running = await start_server(limits=Limits(request_timeout=0.3, idle_timeout=0.3))
    loop = asyncio.get_running_loop()
    silent = await raw_connect(running.path)
    partial = await raw_connect(running.path)
    try:
        await loop.sock_sendall(partial, b'{"method": "org.example.Test.Echo"')
        started = time.monotonic()
        assert await read_until_eof(silent, timeout=3) == b""
        assert await read_until_eof(partial, timeout=3) == b""
        assert time.monotonic() - started < 2
    finally:
        silent.close()
        partial.close()
    infos = [r for r in caplog.records if r.name == LOG and r.levelno == logging.INFO and "within" in r.getMessage()]
    assert len(infos) == 2

    # The clock restarts after each reply: a client slower in total than the timeout is fine.
    sock = await raw_connect(running.path)
    try:
        for i in range(5):
            await asyncio.sleep(0.15)
            await loop.sock_sendall(sock, encode({"method": "org.example.Test.Echo", "parameters": {"x": str(i)}}))
            assert await read_message(sock) == {"parameters": {"x": str(i)}}
    finally:
        sock.close()


async def test_client_fds_are_closed(start_server: Starter, caplog: pytest.LogCaptureFixture) -> None:
    running = await start_server()
    await assert_still_serving(running)  # warm up anything lazily allocated
    await wait_for(lambda: running.server.connections == 0)
    before = fd_count()
    pipes = [os.pipe() for _ in range(30)]
    fds = [fd for pair in pipes for fd in pair]
    try:
        for batch in (fds[:3], fds[:60]):  # 60 > the server's room: exercises MSG_CTRUNC
            sock = await raw_connect(running.path)
            try:
                await asyncio.to_thread(
                    sock.sendmsg,
                    [encode({"method": "org.example.Test.Echo", "parameters": {"x": "fds"}})],
                    [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", batch))],
                )
                assert await read_message(sock) == {"parameters": {"x": "fds"}}
            finally:
                sock.close()
    finally:
        for fd in fds:
            os.close(fd)
    await wait_for(lambda: running.server.connections == 0)
    assert fd_count() == before
    await assert_still_serving(running)


async def test_reply_fds_are_closed_by_server(start_server: Starter) -> None:
    running = await start_server()
    await assert_still_serving(running)
    await wait_for(lambda: running.server.connections == 0)
    before = fd_count()
    loop = asyncio.get_running_loop()

    # Sent: the server's copy is closed, ours works.
    sock = await raw_connect(running.path)
    try:
        await loop.sock_sendall(sock, encode({"method": "org.example.Test.GetPipe"}))
        msg, anc, _flags, _ = await asyncio.to_thread(_blocking_recvmsg, sock)
        assert msg.endswith(b"\0")
        (received,) = array.array("i", anc[0][2])
        assert os.read(received, 10) == b"hello"
        os.close(received)
        # Oneway: no reply, fds closed anyway.
        await loop.sock_sendall(sock, encode({"method": "org.example.Test.GetPipe", "oneway": True}))
        await loop.sock_sendall(sock, encode({"method": "org.example.Test.Echo", "parameters": {"x": "y"}}))
        assert await read_message(sock) == {"parameters": {"x": "y"}}
    finally:
        sock.close()

    # Client gone before the reply: sending fails, fds closed anyway.
    sock = await raw_connect(running.path)
    await loop.sock_sendall(sock, encode({"method": "org.example.Test.Sleep", "parameters": {"seconds": 0.2}}))
    sock.close()
    await wait_for(lambda: len(running.handlers.pipe_fds) == 3 and running.server.connections == 0)
    assert fd_count() == before
    for fd in running.handlers.pipe_fds:
        with pytest.raises(OSError):
            os.fstat(fd)


def _blocking_recvmsg(sock: socket.socket) -> tuple[bytes, list[tuple[int, int, bytes]], int, Any]:
    dup = sock.dup()
    try:
        dup.setblocking(True)
        dup.settimeout(5)
        return dup.recvmsg(65536, socket.CMSG_SPACE(4 * 4))
    finally:
        dup.close()


async def test_close_disconnects_everyone(start_server: Starter) -> None:
    running = await start_server()
    socks = [await raw_connect(running.path) for _ in range(3)]
    try:
        await wait_for(lambda: running.server.connections == 3)
        running.server.close()
        for sock in socks:
            assert await read_until_eof(sock, timeout=2) == b""
        await asyncio.wait_for(running.task, 2)
        assert running.server.connections == 0
    finally:
        for sock in socks:
            sock.close()


async def test_serve_can_be_cancelled(start_server: Starter) -> None:
    running = await start_server()
    sock = await raw_connect(running.path)
    try:
        await wait_for(lambda: running.server.connections == 1)
        running.task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await running.task
        assert await read_until_eof(sock, timeout=2) == b""
        assert running.server.connections == 0
    finally:
        sock.close()
