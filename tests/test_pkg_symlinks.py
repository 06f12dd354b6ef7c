"""A package path with symlinks: followed as the caller could follow them; refusals name the component."""

from __future__ import annotations

import errno
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
from daemon import Daemon
from rockers import make_req

from rocker_client import enter_rocker
from rockerd import policy
from rockerd.create import pkgopen
from rockerd.create.steps import BuildError

UID = 1000


@dataclass(frozen=True)
class Caller:
    pid: int = 0
    uid: int = UID
    gid: int = UID
    groups: tuple[int, ...] = ()


@pytest.fixture
def tree(base: Path, pkg: Path) -> Path:
    """base/pkgs/app-2.3.squashfs and app.squashfs -> app-2.3.squashfs; base/lib -> pkgs (as Debian's /lib);
    base/secret (0700, root) with a package in it and a link to it from base/pkgs."""
    (base / "pkgs").mkdir()
    shutil.copy(pkg, base / "pkgs/app-2.3.squashfs")
    (base / "pkgs/app.squashfs").symlink_to("app-2.3.squashfs")
    (base / "lib").symlink_to("pkgs")
    (base / "secret").mkdir(mode=0o700)
    shutil.copy(pkg, base / "secret/app.squashfs")
    (base / "pkgs/hidden.squashfs").symlink_to(base / "secret/app.squashfs")
    (base / "pkgs/dangling.squashfs").symlink_to("gone.squashfs")
    for p in (base / "pkgs", base / "pkgs/app-2.3.squashfs", base / "secret/app.squashfs"):
        p.chmod(0o755 if p.is_dir() else 0o644)
    return base


@pytest.mark.parametrize("caller", [None, Caller()], ids=["root", "uid1000"])
@pytest.mark.parametrize("rel", ["pkgs/app.squashfs", "lib/app.squashfs", "lib/app-2.3.squashfs"])
def test_symlinks_the_caller_can_follow_work(tree: Path, caller: Caller | None, rel: str) -> None:
    fd = pkgopen.open_package(str(tree / rel), caller)
    try:
        assert os.fstat(fd).st_ino == os.stat(tree / "pkgs/app-2.3.squashfs").st_ino
    finally:
        os.close(fd)


def _refusal(path: str, caller: Caller | None) -> Exception:
    with pytest.raises((BuildError, policy.Denied)) as info:
        os.close(pkgopen.open_package(path, caller))
    return info.value


def test_a_link_into_a_dir_the_caller_cannot_search_is_refused_naming_it(tree: Path) -> None:
    link = tree / "pkgs/hidden.squashfs"
    os.close(pkgopen.open_package(str(link), None))  # root may: it can search there
    err = _refusal(str(link), Caller())
    assert isinstance(err, policy.Denied)
    assert str(err) == (f"package {link} is not readable by uid {UID}: {link}: a symlink to "
                        f"{tree}/secret/app.squashfs, uid {UID} may not look it up: no search permission on the "
                        "dir it is in, or on a dir its target goes through")


@pytest.mark.parametrize(("rel", "err", "says"), [
    ("pkgs/dangling.squashfs", errno.ENOENT, "{tree}/pkgs/dangling.squashfs: a symlink to gone.squashfs, which does "
                                             "not exist"),
    ("lib/nope/app.squashfs", errno.ENOENT, "{tree}/lib/nope: it does not exist"),
    ("pkgs/app-2.3.squashfs/x", errno.ENOTDIR, "{tree}/pkgs/app-2.3.squashfs: not a directory, but the path goes "
                                               "on below it"),
])
def test_a_failed_path_names_the_component_and_why(tree: Path, rel: str, err: int, says: str) -> None:
    for caller in (None, Caller()):
        e = _refusal(str(tree / rel), caller)
        assert isinstance(e, BuildError) and e.errno == err, e
        assert f"package {tree / rel}: {says.format(tree=tree)}" in str(e), str(e)


def test_rockerds_own_files_are_not_a_package(tree: Path) -> None:
    """/proc/self is rockerd: a magic link there would open rockerd's own fds, and its files are its own."""
    fd = os.open(tree / "pkgs/app-2.3.squashfs", os.O_RDONLY)
    try:
        for caller in (None, Caller()):
            e = _refusal(f"/proc/self/fd/{fd}", caller)
            assert isinstance(e, BuildError) and e.errno == errno.ELOOP
            assert "a /proc magic link, which rockerd does not follow" in str(e), str(e)
            e = _refusal(f"/proc/{os.getpid()}/environ", caller)
            assert isinstance(e, BuildError) and "is on procfs" in str(e), str(e)
    finally:
        os.close(fd)


def test_rockerd_builds_from_a_versioned_symlink(rockerd: Daemon, tree: Path, pkg: Path) -> None:
    req = make_req(tree, tree / "lib/app.squashfs", overlays=())
    res = enter_rocker(req, lambda _: 0, socket=rockerd.socket)
    assert res.ok, res.detail
    os.waitpid(res.app_pid, 0)
