"""A data dir on a hung filesystem does not stall rockerd: the dir steps run off the event loop
with a deadline (rockerd/create/dirsteps.py; issue 13: nothing a caller sends blocks the loop).

The hung filesystem is a real one: a FUSE mount whose server never answers (the test holds
/dev/fuse and reads nothing), so every lookup below it waits until the test closes the fd.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from daemon import Daemon
from rockers import make_req

from rocker_client import enter_rocker, wire
from rocker_sys import mount as m
from rocker_sys.libc import libc

MNT_DETACH = 2
DEADLINE = 10.0  # rockerd/create/dirsteps.py DEADLINE (not imported: the test also runs against code without it)


def _remove_mountpoint(path: Path, within: float = 5.0) -> None:
    """Two full runs left an empty `hung` behind (base's rmtree then ignored errors): remove it here and
    say why if it will not go, rather than leave it to the fixture."""
    deadline = time.monotonic() + within
    while True:
        try:
            path.rmdir()
            return
        except OSError as e:
            if time.monotonic() >= deadline:
                pytest.fail(f"{path} still cannot be removed {within:g} s after its lazy unmount: {e!r}")
        time.sleep(0.05)


@pytest.mark.skipif(not os.path.exists("/dev/fuse"), reason="needs /dev/fuse")
def test_hung_data_dir_fails_in_time_and_others_are_served(own_rockerd: Daemon, base: Path, pkg: Path) -> None:
    fuse = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)
    hung = base / "hung"
    hung.mkdir()
    try:
        m.mount("rocker-test-hung", str(hung), "fuse", 0, f"fd={fuse},rootmode=40000,user_id=0,group_id=0")
    except OSError:
        os.close(fuse)
        raise
    out: dict[str, Any] = {}
    try:
        req = make_req(base, pkg)
        req.app_data_dir = str(hung / "data")

        def build() -> None:
            t0 = time.monotonic()
            res = enter_rocker(req, lambda _: 0)
            out.update(ok=res.ok, detail=res.detail, took=time.monotonic() - t0)

        t = threading.Thread(target=build)
        t.start()
        time.sleep(0.5)  # the build is in its dir steps, hung in a lookup
        t0 = time.monotonic()
        with wire.Connection(own_rockerd.socket, timeout=3) as c:
            c.call("io.rocker.Rocker.List", {})
        listed = time.monotonic() - t0
        t.join(DEADLINE + 20)
    finally:
        os.close(fuse)  # aborts the connection: the hung lookup returns ENOTCONN
        if libc.umount2(str(hung).encode(), MNT_DETACH) != 0:
            pytest.fail(f"could not unmount {hung}")
        _remove_mountpoint(hung)
    assert listed < 1.0, f"List took {listed:.2f} s while a build hung"
    assert not t.is_alive()
    assert out["ok"] is False
    assert f"not ready within {DEADLINE:g} s" in out["detail"], out["detail"]
    assert out["took"] < DEADLINE + 5
