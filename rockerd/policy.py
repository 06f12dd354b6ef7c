"""Who may ask for what: the one place that sees the caller's credentials.

Root may ask for any uid/gid and gets missing dirs created. Anyone else may
only run as themselves, with dirs that already exist and that they own, and
a package they can read. The checks open each path without following
symlinks and look at the opened file.
"""

from __future__ import annotations

import os
import stat
from typing import Protocol

from rocker_client._sys import fs


class Peer(Protocol):
    pid: int
    uid: int
    gid: int


class Request(Protocol):
    uid: int
    gid: int
    app_pkg_path: str
    app_exec_dir: str
    app_data_dir: str


class Denied(Exception):
    """A refusal with a reason the caller can act on."""


def may_create_dirs(peer: Peer) -> bool:
    return peer.uid == 0


def check(peer: Peer, req: Request) -> None:
    if peer.uid == 0:
        return
    if req.uid != peer.uid:
        raise Denied(f"uid {peer.uid} may only ask for a rocker of its own uid, not {req.uid}")
    if req.gid != peer.gid:
        raise Denied(f"uid {peer.uid} may only ask for its own gid {peer.gid}, not {req.gid}")
    for what, path in (("exec dir", req.app_exec_dir), ("data dir", req.app_data_dir)):
        st = _stat_nofollow(what, path, os.O_PATH | os.O_DIRECTORY)
        if st.st_uid != peer.uid:
            raise Denied(f"{what} {path} must be owned by uid {peer.uid}")
    st = _stat_nofollow("package", req.app_pkg_path, os.O_PATH)
    if not _readable(st, peer.uid, peer.gid):
        raise Denied(f"package {req.app_pkg_path} is not readable by uid {peer.uid}")


def _stat_nofollow(what: str, path: str, flags: int) -> os.stat_result:
    try:
        fd = fs.open_nofollow(path, flags)
    except OSError as e:
        raise Denied(f"{what} {path}: {e.strerror} (it must exist, with no symlink on the way)") from None
    try:
        return os.fstat(fd)
    finally:
        os.close(fd)


def _readable(st: os.stat_result, uid: int, gid: int) -> bool:
    if not stat.S_ISREG(st.st_mode):
        return False
    if st.st_uid == uid:
        return bool(st.st_mode & stat.S_IRUSR)
    if st.st_gid == gid:
        return bool(st.st_mode & stat.S_IRGRP)
    return bool(st.st_mode & stat.S_IROTH)
