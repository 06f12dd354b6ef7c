"""Two more of a caller's paths that rockerd must treat as hostile (docs/security.md, file operations).

Added for mutants that survived the suite (scripts/mutants.toml): an overlay dir the caller
cannot reach (`lowers-walked-as-root`), a package its owner holds a write lease on
(`package-reopened-blocking`), a new dir's name swapped right after it is opened
(`new-dir-chowned-by-name`).
"""

from __future__ import annotations

import errno
import fcntl
import os
import signal
import subprocess
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from daemon import Daemon
from rockers import make_req, run_app, wait_gone
from test_hostile_fs import GID_SG, _live, _params, _run_app, _secret, wait_for
from test_nonroot import UID, world  # noqa: F401  (world: the fixture)

from rocker_client import RockerErr
from rocker_sys import fs
from rockerd.create import pkgopen
from rockerd.create.steps import BuildError


def test_overlay_dir_the_caller_cannot_reach_is_refused(world: tuple[Path, Daemon]) -> None:  # noqa: F811
    """uid 1000 names an open dir inside root's 0700 dir as its overlay: the lower is walked as the
    caller, so the request is refused (walked as root, it would be mounted, and the build would
    have told the caller what lies in a dir it may not search)."""
    base, d = world
    inner = _secret(base) / "inner"  # 0755, with a 0644 file, below a 0700 dir uid 1000 cannot pass
    out = _run_app(base, d, _params(base, app_overlay_dirs=[str(inner)]), "print('APP {}')")
    assert out.get("APP") is None, out
    assert out["RES"]["err_no"] == RockerErr.param_invalid, out
    assert f"overlay dir {inner} is not reachable by uid {UID}" in out["RES"]["detail"], out["RES"]["detail"]


def test_leased_package_does_not_hold_an_open_thread(tmp_path: Path) -> None:
    """The package's owner may hold a write lease on it: a blocking open of it then waits for the
    lease break (fs.lease-break-time, 45 s by default), keeping one of the few open threads per
    request. Reopened O_NONBLOCK, it fails at once (EWOULDBLOCK)."""
    pkg = tmp_path / "app.squashfs"
    pkg.write_bytes(b"\0" * 4096)
    old = signal.signal(signal.SIGIO, lambda *_: None)  # the lease break notice (default: terminate)
    holder = os.open(pkg, os.O_RDONLY)
    pool = ThreadPoolExecutor(max_workers=1)
    job = None
    try:
        fcntl.fcntl(holder, fcntl.F_SETLEASE, fcntl.F_WRLCK)
        t0 = time.monotonic()
        job = pool.submit(pkgopen.open_package, str(pkg), None)
        with pytest.raises(BuildError) as info:
            job.result(timeout=2)
        assert info.value.errno == errno.EWOULDBLOCK, info.value
        assert time.monotonic() - t0 < 1
    finally:
        fcntl.fcntl(holder, fcntl.F_SETLEASE, fcntl.F_UNLCK)  # lets a blocked open go on
        os.close(holder)
        pool.shutdown(wait=True)
        if job is not None and job.exception() is None:
            os.close(job.result())
        signal.signal(signal.SIGIO, old)


def test_new_dir_is_chowned_on_its_fd_not_by_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """fs.make_dir, with the caller's swap timed for it: right after the new dir is opened, its name
    is moved aside and replaced by a hard link to the caller's executable (the race test_hostile_fs.py runs for real
    wins that window too rarely to tell). Only the dir just made takes the owner and mode."""
    parent = tmp_path / "upper"
    parent.mkdir()
    evil = tmp_path / "evil"
    evil.write_bytes(b"#!/bin/sh\n")
    os.chown(evil, UID, UID)
    evil.chmod(0o755)
    pfd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY)
    real_fstat = os.fstat
    swapped: list[int] = []

    def fstat_after_swap(fd: int) -> os.stat_result:
        if not swapped and fd != pfd:  # the first fstat of a new fd is make_dir's check of the dir it just made
            os.rename("d", "moved", src_dir_fd=pfd, dst_dir_fd=pfd)
            os.link(evil, "d", dst_dir_fd=pfd)
            swapped.append(fd)
        return real_fstat(fd)

    monkeypatch.setattr(os, "fstat", fstat_after_swap)
    try:
        fd, made = fs.make_dir(pfd, "d", fs.DirSpec(0o2775, (0, GID_SG)), str(parent / "d"))
        os.close(fd)
    finally:
        monkeypatch.undo()
        os.close(pfd)
    assert made and swapped
    st = (parent / "moved").stat()  # the dir made, under the name the caller moved it to
    assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (0, GID_SG, 0o775), oct(st.st_mode)
    st = evil.stat()
    assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (UID, UID, 0o755), oct(st.st_mode)


def test_new_dir_swapped_before_it_is_opened_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """fs.make_dir, with the caller's swap timed for it: between mkdirat and the open, the new dir is
    moved aside and an empty dir of the caller's put in its place. It is refused, not given the
    owner and mode meant for the dir rockerd made."""
    parent = tmp_path / "upper"
    parent.mkdir()
    pfd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY)
    real_mkdir = os.mkdir

    def mkdir_then_swap(name: str, mode: int = 0o777, *, dir_fd: int | None = None) -> None:
        real_mkdir(name, mode, dir_fd=dir_fd)
        os.rename(name, "moved", src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        real_mkdir(name, 0o755, dir_fd=dir_fd)
        os.chown(name, UID, UID, dir_fd=dir_fd)

    monkeypatch.setattr(os, "mkdir", mkdir_then_swap)
    try:
        with pytest.raises(OSError, match="replaced while being made") as info:
            os.close(fs.make_dir(pfd, "d", fs.DirSpec(0o2775, (0, GID_SG)), str(parent / "d"))[0])
    finally:
        monkeypatch.undo()
        os.close(pfd)
    assert info.value.errno == errno.EEXIST
    st = (parent / "d").stat()
    assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (UID, UID, 0o755), oct(st.st_mode)


THREADS, ROUNDS = 6, 200


def _race_makers(tmp_path: Path, make: Callable[[int, str], tuple[int, Any]], rel: str) -> list[OSError]:
    """THREADS builds at once, ROUNDS times, each getting dir `rel` (with {r} the round) from `make(parent
    fd, rel)` and at once making a child of its own in it, as a build fills the dir it got. What failed."""
    pfd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    failed: list[OSError] = []

    def build(path: str, i: int) -> None:
        try:
            fd, _ = make(pfd, path)
            try:
                os.mkdir(f"child{i}", dir_fd=fd)
            finally:
                os.close(fd)
        except OSError as e:
            failed.append(e)

    try:
        with ThreadPoolExecutor(THREADS) as pool:
            for r in range(ROUNDS):
                list(pool.map(build, [rel.format(r=r)] * THREADS, range(THREADS)))
    finally:
        os.close(pfd)
    assert all(len(os.listdir(tmp_path / rel.format(r=r))) == THREADS for r in range(ROUNDS) if not failed)
    return failed


def test_concurrent_builds_of_one_layout_do_not_refuse_each_others_new_dir(tmp_path: Path) -> None:
    """Builds of the same layout at once (a threaded launcher: eight rockers on one exec dir): one
    makes a dir, another finds it and fills it before the maker's "still the empty dir I made"
    check. That must not read as a swap: the finder waits for the maker (fs.make_dir). Before,
    most rounds of this failed with "replaced while being made"."""
    failed = _race_makers(tmp_path, lambda pfd, name: fs.make_dir(pfd, name, fs.DirSpec(0o755), name), "d{r}")
    assert not failed, f"{len(failed)} of {THREADS * ROUNDS} makes refused, e.g. {failed[0]}"
    assert not fs._making, "a maker's entry is left"


def test_concurrent_ensure_dirs_of_one_path_do_not_refuse_each_others_new_dir(tmp_path: Path) -> None:
    """The same race through fs.ensure_dir, as EnsureExecAndDataDirs makes an exec or data dir: a build
    whose one-call open of the whole path finds the dir another build has just made must wait for that
    maker too, or it fills the dir before the maker's check. Seen in the suite as 50 rockers on a new
    data dir: one build refused, its undo took the exec dir it had made from under the others."""
    failed = _race_makers(tmp_path, lambda pfd, path: fs.ensure_dir(path, create=True, spec=fs.DirSpec(0o700),
                                                                    dir_fd=pfd), "p{r}/data")
    assert not failed, f"{len(failed)} of {THREADS * ROUNDS} ensure_dirs refused, e.g. {failed[0]}"


def test_owner_can_rm_rf_a_data_dir_root_asked_for(base: Path, pkg: Path, rockerd: Daemon) -> None:
    """A root launcher asks for a rocker of uid 1000 with a data dir uid 1000 owns: the dirs rockerd
    makes inside it are uid 1000's too, so it can remove the data dir itself."""
    mine = base / "mine"
    mine.mkdir()
    os.chown(mine, UID, UID)
    for p in (base, pkg.parent):
        p.chmod(0o755)
    req = make_req(mine, pkg, uid=UID, gid=UID, overlays=("/usr", "/etc"))
    run = run_app(req, lambda: {})
    assert run.res.ok, run.res.detail
    data = mine / "data"
    assert (data / "upper").is_dir() and (data / "work").is_dir() and data.stat().st_uid == UID
    assert wait_gone(run.res.guard_pid, 10) is not None
    assert wait_for(lambda: run.res.guard_pname not in {r["guard_pname"] for r in _live(rockerd)}, 10)
    p = subprocess.run(["rm", "-rf", str(data)], user=UID, group=UID, extra_groups=[],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and not data.exists(), p.stderr
