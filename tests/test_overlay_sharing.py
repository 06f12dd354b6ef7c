"""Overlay dirs on one mount share one overlayfs; what the app sees and where writes land stay the same."""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from rockers import make_req, run_app

from rocker_sys import mount as m
from rocker_sys.libc import SyscallError, libc
from rockerd import kernel
from rockerd.create.overlay_plan import OverlayGroup, common_dir, plan_overlays

MNT_DETACH = 2


@pytest.fixture
def tmpfs_at(base: Path) -> Iterator[list[Path]]:
    """Mount a fresh tmpfs at each path appended to the list; all unmounted afterwards."""
    mounted: list[Path] = []
    yield mounted
    for p in reversed(mounted):
        if libc.umount2(str(p).encode(), 0) != 0:
            libc.umount2(str(p).encode(), MNT_DETACH)
            pytest.fail(f"{p} was still busy after the test")


def _tmpfs(mounted: list[Path], path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    m.mount("rocker-test", str(path), "tmpfs", 0, "mode=0755")
    mounted.append(path)
    return path


def test_common_dir() -> None:
    assert common_dir(["/usr", "/etc"]) == "/"
    assert common_dir(["/srv/a/x", "/srv/a/y", "/srv/ab"]) == "/srv"
    assert common_dir(["/srv/a"]) == "/srv/a"


def test_plan_groups_by_the_mount_that_reaches_them(base: Path, tmpfs_at: list[Path]) -> None:
    for d in ("h/a", "h/b/deep"):
        (base / d).mkdir(parents=True)
    mnt = _tmpfs(tmpfs_at, base / "m")
    (mnt / "c").mkdir()
    (mnt / "d").mkdir()
    (_tmpfs(tmpfs_at, base / "n") / "e").mkdir()
    (base / "link").symlink_to("h")
    dirs = [f"{base}/{d}" for d in ("h/a", "m/c", "h/b/deep", "m/d", "n/e", "nowhere", "link/a")]
    plan = plan_overlays(dirs, share=True)
    assert sorted(plan_overlays(dirs, share=False), key=lambda g: g.members) == [
        OverlayGroup(d, (i,)) for i, d in enumerate(dirs)], "no shared overlay where subdirs cannot be cloned"
    assert sorted(plan, key=lambda g: g.members) == [
        OverlayGroup(f"{base}/h", (0, 2)), OverlayGroup(f"{base}/m", (1, 3)), OverlayGroup(f"{base}/n/e", (4,)),
        OverlayGroup(f"{base}/nowhere", (5,)), OverlayGroup(f"{base}/link/a", (6,))]
    depths = [len(g.lower.split("/")) for g in plan]
    assert depths == sorted(depths, reverse=True), "an overlay over an ancestor must be mounted last"


def test_plan_leaves_a_covered_dir_alone(base: Path, tmpfs_at: list[Path]) -> None:
    """An overlay over the ancestor would show what lies under the mount, not the mount."""
    (base / "h/a").mkdir(parents=True)
    _tmpfs(tmpfs_at, base / "h/b")
    plan = plan_overlays([f"{base}/h/a", f"{base}/h/b"], share=True)
    assert sorted(plan, key=lambda g: g.members) == [OverlayGroup(f"{base}/h/a", (0,)),
                                                     OverlayGroup(f"{base}/h/b", (1,))]


@pytest.mark.skipif(not kernel.probe(None).tree_clone, reason="this kernel clones no subdir of a detached mount")
def test_clone_subdir_follows_no_symlink_and_crosses_no_mount(base: Path, tmpfs_at: list[Path]) -> None:
    fsfd = m.fsopen("tmpfs")
    try:
        m.fsconfig_create(fsfd, "tmpfs")
        mfd = m.fsmount(fsfd, 0, "tmpfs")
    finally:
        os.close(fsfd)
    try:
        os.mkdir("d", dir_fd=mfd)
        os.mkdir("d/sub", dir_fd=mfd)
        os.symlink("/", "l", dir_fd=mfd)
        os.symlink("d", "ld", dir_fd=mfd)
        clone = m.clone_subdir(mfd, "d", "test d")
        try:
            assert os.listdir(f"/proc/self/fd/{clone}") == ["sub"]
        finally:
            os.close(clone)
        for rel, err in (("l", errno.ELOOP), ("ld/sub", errno.ELOOP), ("none", errno.ENOENT)):
            with pytest.raises(SyscallError) as e:
                m.clone_subdir(mfd, rel, f"test {rel}")
            assert e.value.errno == err, rel
    finally:
        os.close(mfd)


@pytest.mark.usefixtures("rockerd")
def test_shared_overlay_inside(base: Path, pkg: Path, tmpfs_at: list[Path]) -> None:
    """Dirs on one mount are one overlayfs inside (one st_dev), a dir on another mount its own;
    each shows its host dir, and writes, new dirs and deletions land in upper/<D> only. Where the
    kernel cannot clone subdirs of a detached mount (or ROCKER_FORCE_FALLBACK says so) as well:
    the clones are made in rockerd's staging namespace (stage.py)."""
    host = base / "host"
    for d in ("a", "b"):
        (host / d).mkdir(parents=True)
        (host / d / "keep").write_text(f"host {d}")
    mnt = _tmpfs(tmpfs_at, base / "m")
    (mnt / "c").mkdir()
    (mnt / "c" / "keep").write_text("host c")
    dirs = [str(host / "a"), str(host / "b"), str(mnt / "c")]

    def probe() -> dict[str, object]:
        out: dict[str, object] = {"dev": [os.stat(d).st_dev for d in dirs], "fstype": {}}
        with open("/proc/self/mountinfo") as f:
            for line in f:
                fields = line.split()
                if fields[4] in dirs:
                    out["fstype"][fields[4]] = fields[fields.index("-") + 1]  # type: ignore[index]
        out["read"] = [Path(d, "keep").read_text() for d in dirs]
        for d in dirs:
            with open(f"{d}/new", "w") as f:
                f.write("inside")
            os.mkdir(f"{d}/newdir")
            os.unlink(f"{d}/keep")
        out["after"] = [sorted(os.listdir(d)) for d in dirs]
        out["parent"] = sorted(os.listdir(f"{dirs[0]}/.."))
        return out

    run = run_app(make_req(base, pkg, overlays=tuple(dirs)), probe)
    assert run.res.ok, run.res.detail
    rep = run.report
    assert "probe_error" not in rep, rep
    dev = rep["dev"]
    assert dev[0] == dev[1] != dev[2], "a and b should share one overlayfs (without tree clones too), c have its own"
    assert rep["fstype"] == {d: "overlay" for d in dirs}
    assert rep["read"] == ["host a", "host b", "host c"]
    assert rep["after"] == [["new", "newdir"]] * 3
    assert rep["parent"] == sorted(os.listdir(host)), "the dir's parent is the host's, not the overlay's"
    for d in dirs:
        assert sorted(os.listdir(d)) == ["keep"], f"the app changed the host's {d}"
        upper = Path(f"{base}/data/upper{d}")
        assert (upper / "new").read_text() == "inside"
        assert (upper / "newdir").is_dir()
        wh = os.lstat(upper / "keep")
        assert stat.S_ISCHR(wh.st_mode) and wh.st_rdev == 0, "the deletion is a whiteout in the upper"
    assert not (base / "data/upper" / str(host).lstrip("/") / "keep").exists()


@pytest.mark.usefixtures("rockerd")
def test_symlink_in_a_shared_upper_is_refused(base: Path, pkg: Path) -> None:
    """The app owns its data dir: a symlink it puts on the way to an upper must not lead the
    overlay (or a bind of it) anywhere else."""
    host = base / "host"
    (host / "p/a").mkdir(parents=True)
    (host / "q").mkdir()
    elsewhere = base / "elsewhere"
    elsewhere.mkdir()
    upper_p = Path(f"{base}/data/upper{host}/p")
    upper_p.parent.mkdir(parents=True)
    upper_p.symlink_to(elsewhere)
    run = run_app(make_req(base, pkg, overlays=(str(host / "p/a"), str(host / "q"))), lambda: {})
    assert not run.res.ok
    assert "prepare overlay layers" in run.res.detail and "symbolic links" in run.res.detail, run.res.detail
    assert list(elsewhere.iterdir()) == []
