"""The tests' "outside": a network namespace of their own behind the host, with echo and DNS servers.

    host  rkt-up   198.19.0.1/24  --veth--  rkt-down 198.19.0.2/24  netns rkt-out
                                                 TCP and UDP echo on port 7007
                                                 DNS on port 53: NAME.test -> 198.19.0.2

Every address is in the benchmarking range 198.18.0.0/15, and the namespace has
no route but its own link: nothing a test starts can reach anything else.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

NETNS = "rkt-out"
HOST_SIDE, OUT_SIDE = "rkt-up", "rkt-down"
HOST_ADDR, OUT_ADDR = "198.19.0.1", "198.19.0.2"
ECHO_PORT = 7007
TEST_SUBNET = "198.18.0.0/23"  # the tests' bridge subnet (rockerd --bridge-subnet)
TEST_BRIDGE = "rkt0"

SERVERS = r"""
import socket, struct, threading
def tcp():
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", PORT)); s.listen(64)
    while True:
        c, a = s.accept()
        def serve(c=c, a=a):
            with c:
                data = c.recv(4096)
                c.sendall(b"echo from " + a[0].encode() + b": " + data)
        threading.Thread(target=serve, daemon=True).start()
def udp():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("0.0.0.0", PORT))
    while True:
        data, a = s.recvfrom(4096); s.sendto(b"udp echo: " + data, a)
def dns():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("0.0.0.0", 53))
    while True:
        q, a = s.recvfrom(512)
        qid, flags = struct.unpack(">HH", q[:4]); end = 12
        while q[end]: end += 1 + q[end]
        name = q[12:end]; qtype = struct.unpack(">H", q[end+1:end+3])[0]
        question = q[12:end+5]
        ok = name.endswith(b"\x04test") and qtype == 1
        head = struct.pack(">HHHHHH", qid, 0x8180 if ok else 0x8183, 1, 1 if ok else 0, 0, 0)
        ans = struct.pack(">HHHLH4s", 0xC00C, 1, 1, 60, 4, socket.inet_aton(ADDR)) if ok else b""
        s.sendto(head + question + ans, a)
for f in (tcp, udp): threading.Thread(target=f, daemon=True).start()
dns()
"""


def sh(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True, timeout=30)


def in_outside(code: str, timeout: float = 10) -> str:
    """Run Python `code` in the outside namespace; its stdout."""
    p = subprocess.run(["ip", "netns", "exec", NETNS, sys.executable, "-c", code], capture_output=True,
                       text=True, timeout=timeout)
    assert p.returncode == 0, p.stderr
    return p.stdout


@contextmanager
def outside() -> Iterator[None]:
    sh("ip", "netns", "add", NETNS)
    proc = None
    try:
        sh("ip", "link", "add", HOST_SIDE, "type", "veth", "peer", "name", OUT_SIDE, "netns", NETNS)
        sh("ip", "addr", "add", f"{HOST_ADDR}/24", "dev", HOST_SIDE)
        sh("ip", "link", "set", HOST_SIDE, "up")
        sh("ip", "-n", NETNS, "addr", "add", f"{OUT_ADDR}/24", "dev", OUT_SIDE)
        sh("ip", "-n", NETNS, "link", "set", OUT_SIDE, "up")
        sh("ip", "-n", NETNS, "link", "set", "lo", "up")
        code = f"PORT = {ECHO_PORT}\nADDR = {OUT_ADDR!r}\n" + SERVERS
        proc = subprocess.Popen(["ip", "netns", "exec", NETNS, sys.executable, "-c", code])
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            probe = subprocess.run(["ip", "netns", "exec", NETNS, "ss", "-Htlnu"], capture_output=True, text=True)
            if f":{ECHO_PORT}" in probe.stdout and ":53 " in probe.stdout:
                break
            time.sleep(0.05)
        yield
    finally:
        if proc is not None:
            proc.kill()
            proc.wait()
        subprocess.run(["ip", "link", "del", HOST_SIDE], capture_output=True)
        sh("ip", "netns", "del", NETNS)
