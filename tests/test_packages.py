"""One squashfs mount (and loop device) per package, shared by its rockers, gone with the last one."""

from __future__ import annotations

import glob
import os
import time
from pathlib import Path

import pytest
from rockers import make_req

from rocker_client import enter_rocker

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
