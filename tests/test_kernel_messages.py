"""A refused mount says what the kernel said (the fs context's messages), which dir, which fs, what to do."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from rocker_sys import fs
from rocker_sys import mount as m


def _overlay(lower: int, upper: int, work: int, what: str) -> int:
    fsfd = m.fsopen("overlay")
    try:
        m.fsconfig_fd(fsfd, "lowerdir+", lower, what)
        m.fsconfig_fd(fsfd, "upperdir", upper, what)
        m.fsconfig_fd(fsfd, "workdir", work, what)
        m.fsconfig_create(fsfd, what)
        return m.fsmount(fsfd, 0, what)
    finally:
        os.close(fsfd)


def _dirs(root: Path, *names: str) -> list[int]:
    fds = []
    for n in names:
        (root / n).mkdir(parents=True)
        fds.append(os.open(root / n, fs.O_PATH_DIR))
    return fds


def test_an_upper_dir_on_another_overlay(tmp_path: Path) -> None:
    """Today's `[Errno 22] fsconfig(overlay / upperdir): Invalid argument` becomes the kernel's words,
    the filesystem the dir is on, and where to put the data dir instead."""
    fds = _dirs(tmp_path, "a/lower", "a/upper", "a/work", "b/lower")
    try:
        outer = _overlay(fds[0], fds[1], fds[2], "outer")
    except OSError as e:
        pytest.skip(f"no overlay with fd layers here: {e}")
    try:
        os.mkdir("up", dir_fd=outer)
        os.mkdir("wk", dir_fd=outer)
        up, wk = (fs.open_nofollow(n, fs.O_PATH_DIR, dir_fd=outer) for n in ("up", "wk"))
        fds += [up, wk]
        with pytest.raises(m.KernelSaid) as info:
            os.close(_overlay(fds[3], up, wk, "overlay /srv/x"))
        text = str(info.value)
        assert "overlay /srv/x upperdir" in text or "overlay /srv/x" in text, text
        assert "the kernel says: overlay:" in text and info.value.messages, text
        assert m.UPPER_ADVICE in text, text
        assert "overlayfs" in text, text
    finally:
        os.close(outer)
        for fd in fds:
            os.close(fd)


def test_messages_are_read_once_and_a_good_config_has_none(tmp_path: Path) -> None:
    fsfd = m.fsopen("overlay")
    try:
        with pytest.raises(m.KernelSaid) as info:
            m.fsconfig_string(fsfd, "nosuchoption", "1", "overlay /srv/y")
        assert info.value.messages, "the kernel left no message"
        assert m.fs_messages(fsfd) == []
    finally:
        os.close(fsfd)
