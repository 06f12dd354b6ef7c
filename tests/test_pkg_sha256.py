"""app_pkg_sha256 / `rocker run --pkg-sha256`: rockerd mounts only the package the launcher named by content."""

from __future__ import annotations

import hashlib
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from daemon import Daemon
from rockers import make_req

from rocker_client import RockerErr, enter_rocker
from rockerd import policy
from rockerd.create import pkgdigest

ROCKER = [sys.executable, "-m", "rocker_client.cli"]
SLOW = float(os.environ.get("ROCKER_TEST_TIME_SCALE", "1"))  # >1 in an emulated VM (scripts/test-vm.sh)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """How many times the whole file was hashed (a cache miss); a fresh cache."""
    pkgdigest.forget()
    calls: list[int] = []
    real = pkgdigest.sha256_of

    def sha256_of(fd: int) -> str:
        calls.append(fd)
        return real(fd)

    monkeypatch.setattr(pkgdigest, "sha256_of", sha256_of)
    yield calls
    pkgdigest.forget()


def _verify(path: Path, want: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        pkgdigest.verify(fd, str(path), want)
    finally:
        os.close(fd)


def test_a_known_package_costs_an_fstat(tmp_path: Path, counted: list[int]) -> None:
    """64 MiB hashed once; then each check is a cache hit (median under 50 us here, vs tens of ms; the
    emulated VM's syscalls are slower: the bound scales with ROCKER_TEST_TIME_SCALE, the ratio does not)."""
    f = tmp_path / "big.squashfs"
    f.write_bytes(os.urandom(64 << 20))
    want = digest(f)
    time.sleep(pkgdigest.RACY_NS / 1e9 + 0.1)  # a just-written file is never remembered (see below)
    t0 = time.perf_counter()
    _verify(f, want)
    miss = time.perf_counter() - t0
    hits = []
    for _ in range(300):
        t0 = time.perf_counter()
        _verify(f, want)
        hits.append(time.perf_counter() - t0)
    assert len(counted) == 1
    hit = statistics.median(hits)
    print(f"sha256 of 64 MiB: {miss * 1e3:.1f} ms; cache hit (open+verify+close): median {hit * 1e6:.1f} us")
    assert hit < 50e-6 * SLOW and hit * 100 < miss


def test_a_changed_package_is_hashed_again(tmp_path: Path, counted: list[int]) -> None:
    """Same size, same inode, one byte changed: refused, also right after a check (racy: not remembered)."""
    f = tmp_path / "app.squashfs"
    f.write_bytes(b"A" * 4096)
    want = digest(f)
    _verify(f, want)
    _verify(f, want)
    assert len(counted) == 2, "a file younger than RACY_NS was remembered"
    with open(f, "r+b") as w:  # within the same clock tick as the check, most likely
        w.write(b"B")
    with pytest.raises(policy.Denied, match=f"has sha256 {digest(f)}, not {want}"):
        _verify(f, want)
    time.sleep(pkgdigest.RACY_NS / 1e9 + 0.1)
    _verify(f, digest(f))
    _verify(f, digest(f))
    assert len(counted) == 4
    with open(f, "r+b") as w:
        w.write(b"C")
    with pytest.raises(policy.Denied):
        _verify(f, digest(f).replace(digest(f)[0], "0" if digest(f)[0] != "0" else "1", 1))
    assert len(counted) == 5


def _create(rockerd: Daemon, base: Path, pkg: Path, sha: Any) -> Any:
    req = make_req(base, pkg, overlays=())
    req.app_pkg_sha256 = sha
    res = enter_rocker(req, lambda _: 0, socket=rockerd.socket)
    if res.app_pid:
        os.waitpid(res.app_pid, 0)
    return res


def test_rockerd_mounts_only_the_named_content(rockerd: Daemon, base: Path, pkg: Path) -> None:
    right = digest(pkg)
    assert _create(rockerd, base, pkg, right).ok
    wrong = right[::-1]
    res = _create(rockerd, base, pkg, wrong)
    assert res.err_no == RockerErr.param_invalid and res.cause.kind == "PermissionDenied", res
    assert f"package {pkg} has sha256 {right}, not {wrong}" in res.detail
    assert f"refused request of caller uid 0: package {pkg} has sha256 {right}, not {wrong}" in rockerd.log_text()
    for bad in (right.upper(), right[:63], right + "0", "", 7):
        res = _create(rockerd, base, pkg, bad)
        assert res.err_no == RockerErr.param_invalid and res.cause.field == "app_pkg_sha256", (bad, res)


def test_rocker_run_pkg_sha256(rockerd: Daemon, base: Path, pkg: Path) -> None:
    args = [*ROCKER, "run", "--pkg", str(pkg), "--exec-dir", str(base / "exec"), "--data-dir", str(base / "data")]
    res = subprocess.run([*args, "--pkg-sha256", digest(pkg).upper(), "--", "true"], capture_output=True, text=True,
                         timeout=60, check=False)
    assert res.returncode == 0, res.stderr
    res = subprocess.run([*args, "--pkg-sha256", "0" * 64, "--", "true"], capture_output=True, text=True,
                         timeout=60, check=False)
    assert res.returncode == 125
    assert res.stderr.startswith(f"rocker: rockerd refused the request: package {pkg} has sha256 {digest(pkg)}, "
                                 f"not {'0' * 64}"), res.stderr
