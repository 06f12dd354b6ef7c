"""A refused mount says what the kernel said (the fs context's messages), which dir, which fs, what to do.

Overlayfs before Linux 6.5 (Debian 12's 6.1) parses its options itself: the fs context gets no
messages (the reasons go to dmesg), an unknown option is refused only at create, and its layers
cannot be fds (EOPNOTSUPP; 6.13 has them). There the refusal must still name the fs and the advice."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from rocker_sys import fs
from rocker_sys import mount as m
from rockerd.create.host import set_layers

# Overlayfs on the fs-context API (its own messages, options checked at fsconfig): Linux 6.5.
OVERLAY_FS_CONTEXT = tuple(int(x) for x in os.uname().release.split("-")[0].split(".")[:2]) >= (6, 5)


def _has_fd_layers() -> bool:
    fsfd = m.fsopen("overlay")
    fd = os.open("/", fs.O_PATH_DIR)
    try:
        m.fsconfig_fd(fsfd, "lowerdir+", fd, "probe")
        return True
    except OSError as e:
        assert e.errno in (errno.EOPNOTSUPP, errno.EINVAL), e  # before 6.5, and 6.5 to 6.12
        return False
    finally:
        os.close(fd)
        os.close(fsfd)


FD_LAYERS = _has_fd_layers()


def _overlay(lower: int, upper: int, work: int, what: str, fds: bool = FD_LAYERS) -> int:
    """Layers as fds (6.13), else as /proc/self/fd/N strings (rockerd/create/host.py's two paths)."""
    fsfd = m.fsopen("overlay")
    try:
        set_layers(fsfd, lower, upper, work, what, fds)
        m.fsconfig_create(fsfd, what, upper_work=(upper, work))
        return m.fsmount(fsfd, 0, what)
    finally:
        os.close(fsfd)


def _dirs(root: Path, *names: str) -> list[int]:
    fds = []
    for n in names:
        (root / n).mkdir(parents=True)
        fds.append(os.open(root / n, fs.O_PATH_DIR))
    return fds


@pytest.mark.parametrize("layers", ["fds", "strings"])
def test_an_upper_dir_on_another_overlay(tmp_path: Path, layers: str) -> None:
    """Today's `[Errno 22] fsconfig(overlay / upperdir): Invalid argument` becomes the kernel's words
    (where it has any), the filesystem the dir is on, and where to put the data dir instead."""
    fds = _dirs(tmp_path, "a/lower", "a/upper", "a/work", "b/lower")
    outer = _overlay(fds[0], fds[1], fds[2], "outer")
    try:
        os.mkdir("up", dir_fd=outer)
        os.mkdir("wk", dir_fd=outer)
        up, wk = (fs.open_nofollow(n, fs.O_PATH_DIR, dir_fd=outer) for n in ("up", "wk"))
        fds += [up, wk]
        with pytest.raises(m.KernelSaid) as info:
            os.close(_overlay(fds[3], up, wk, "overlay /srv/x", fds=layers == "fds"))
        text = str(info.value)
        if layers == "fds" and not FD_LAYERS:  # refused as kernel.py's probe expects: the string path then
            assert info.value.errno in (errno.EOPNOTSUPP, errno.EINVAL) and "lowerdir+" in text, text
            return
        assert "overlay /srv/x" in text, text
        if OVERLAY_FS_CONTEXT:
            assert "the kernel says: overlay:" in text and info.value.messages, text
        else:
            assert info.value.errno == errno.EINVAL and info.value.messages == [], text
        assert m.UPPER_ADVICE in text, text
        assert "overlayfs" in text, text
    finally:
        os.close(outer)
        for fd in fds:
            os.close(fd)


def test_messages_are_read_once_and_a_good_config_has_none(tmp_path: Path) -> None:
    fsfd = m.fsopen("overlay")
    try:
        if not OVERLAY_FS_CONTEXT:  # the option is kept for overlayfs' own parser: refused at create, silently
            m.fsconfig_string(fsfd, "nosuchoption", "1", "overlay /srv/y")
            with pytest.raises(m.KernelSaid) as info:
                m.fsconfig_create(fsfd, "overlay /srv/y")
            assert info.value.errno == errno.EINVAL and info.value.messages == [], info.value
            assert m.fs_messages(fsfd) == []
            return
        with pytest.raises(m.KernelSaid) as info:
            m.fsconfig_string(fsfd, "nosuchoption", "1", "overlay /srv/y")
        assert info.value.messages, "the kernel left no message"
        assert m.fs_messages(fsfd) == []
    finally:
        os.close(fsfd)
