"""One squashfs mount (and loop device) per package, shared by its rockers, gone with the last one."""

from __future__ import annotations

import ctypes
import glob
import mmap
import os
import time
from pathlib import Path

import pytest
from daemon import start_daemon
from pkgbuild import build_pkg
from rockers import make_req

from rocker_client import enter_rocker
from rocker_sys.libc import libc

pytestmark = pytest.mark.usefixtures("rockerd")


def loops_backing(path: Path) -> list[str]:
    out = []
    for f in glob.glob("/sys/block/loop*/loop/backing_file"):
        try:
            with open(f) as fh:
                if fh.read().strip() == str(path):
                    out.append(f.split("/")[3])
        except OSError:
            pass
    return out


def hold(fds: tuple[int, int]) -> int:
    os.close(fds[1])
    return len(os.read(fds[0], 1))


def test_rockers_of_one_package_share_one_loop_device(base: Path, pkg: Path) -> None:
    r, w = os.pipe()
    results = []
    try:
        for i in range(3):
            (base / str(i)).mkdir()
            res = enter_rocker(make_req(base / str(i), pkg), hold, (r, w))
            assert res.ok, res.detail
            results.append(res)
        assert len(loops_backing(pkg)) == 1
        # a replaced file is another package
        os.replace(pkg, pkg.with_suffix(".old"))
        pkg.write_bytes(pkg.with_suffix(".old").read_bytes())
        (base / "new").mkdir()
        res = enter_rocker(make_req(base / "new", pkg), hold, (r, w))
        assert res.ok
        results.append(res)
        assert len(loops_backing(pkg)) == 1 and len(loops_backing(pkg.with_suffix(".old"))) == 1
    finally:
        os.close(w)
        os.close(r)
        for res in results:
            os.waitpid(res.app_pid, 0)
    deadline = time.monotonic() + 3
    while (loops_backing(pkg) or loops_backing(pkg.with_suffix(".old"))) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert loops_backing(pkg) == [] and loops_backing(pkg.with_suffix(".old")) == []


def _resident(path: str) -> tuple[int, int]:
    """(pages in the page cache, pages) of a file: mincore on a private mapping faults nothing in."""
    page = mmap.PAGESIZE
    size = os.path.getsize(path)
    n = (size + page - 1) // page
    with open(path, "rb") as f:
        mm = mmap.mmap(f.fileno(), size, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    try:
        buf = ctypes.c_char.from_buffer(mm)
        vec = (ctypes.c_ubyte * n)()
        try:
            if libc.mincore(ctypes.c_void_p(ctypes.addressof(buf)), ctypes.c_size_t(size), vec) != 0:
                raise OSError(ctypes.get_errno(), "mincore", path)
        finally:
            del buf
        return sum(v & 1 for v in vec), n
    finally:
        mm.close()


@pytest.mark.parametrize("warm", [True, False], ids=["default", "warm-off"])
def test_a_new_package_has_its_executables_read_ahead(tmp_path: Path, base: Path, warm: bool) -> None:
    """A fresh mount's page cache is empty; rockerd reads its executables (only those) on another
    thread, so the first app's exec does not decompress them on the start's path."""
    size = 3 << 20
    pkg = build_pkg(tmp_path, {"bin/tool": (os.urandom(size), 0o755), "share/blob": (os.urandom(size), 0o644)})
    daemon = None if warm else start_daemon(tmp_path / "cold", "--warm-mib", "0")
    env = {} if daemon is None else {"ROCKER_SOCKET": daemon.socket}
    r, w = os.pipe()
    res = None
    try:
        with pytest.MonkeyPatch.context() as mp:
            for k, v in env.items():
                mp.setenv(k, v)
            res = enter_rocker(make_req(base, pkg), hold, (r, w))
        assert res.ok, res.detail
        inside = f"/proc/{res.guard_pid}/root{base}/exec"
        if warm:
            deadline = time.monotonic() + 10
            while (got := _resident(f"{inside}/bin/tool"))[0] < got[1] and time.monotonic() < deadline:
                time.sleep(0.02)
            assert got[0] == got[1], f"executable not read ahead: {got}"
        else:
            time.sleep(0.3)  # what a warm-up would have had by now
            assert _resident(f"{inside}/bin/tool")[0] == 0
        assert _resident(f"{inside}/share/blob")[0] == 0, "a plain data file was read ahead"
    finally:
        os.close(w)
        os.close(r)
        if res is not None and res.ok:
            os.waitpid(res.app_pid, 0)
        if daemon is not None:
            daemon.stop()


def test_package_released_during_its_warm_up_goes_away(tmp_path: Path, base: Path) -> None:
    """The warm-up holds its own fd of the mount; the end of the last rocker stops it, and the
    mount and loop device go as soon as it has let go."""
    pkg = build_pkg(tmp_path, {"bin/big": (os.urandom(32 << 20), 0o755)})
    res = enter_rocker(make_req(base, pkg), lambda _: 0)
    assert res.ok, res.detail
    os.waitpid(res.app_pid, 0)
    deadline = time.monotonic() + 5
    while loops_backing(pkg) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert loops_backing(pkg) == []
