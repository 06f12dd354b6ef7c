"""Who may ask for what: the one place that judges the caller's credentials.

Root may ask for any uid/gid and gets missing dirs created. Anyone else may
only run as themselves (their uid, a gid they hold), with an exec dir and a
data dir that already exist and that they own, and a package they can read.
The id rules are checked up front; the file rules by the build steps, which
open each path as the caller (`acting_as`: the kernel checks the whole walk
with the caller's ids), without following symlinks, check the opened file and
then use that very fd, so a path swapped after the check cannot slip through.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol

from rocker_sys import proc


class Peer(Protocol):
    pid: int
    uid: int
    gid: int
    groups: tuple[int, ...]


class Request(Protocol):
    uid: int
    gid: int


class Denied(Exception):
    """A refusal with a reason the caller can act on; passes through a build's undo unchanged."""

    passthrough = True


def is_root(peer: Peer | None) -> bool:
    return peer is None or peer.uid == 0


def check_ids(peer: Peer, req: Request) -> None:
    if is_root(peer):
        return
    if req.uid != peer.uid:
        raise Denied(f"uid {peer.uid} may only ask for a rocker of its own uid, not {req.uid}")
    if req.gid != peer.gid and req.gid not in peer.groups:
        raise Denied(f"uid {peer.uid} may only ask for a gid it holds, not {req.gid}")


class CallerNs(Protocol):
    pid: int
    foreign_ns: str  # empty when the caller runs in rockerd's user and PID namespaces


def check_caller_ns(peer: CallerNs, allow_nested: bool) -> None:
    """A caller inside a rocker resolves its paths in a mount namespace rockerd does not see, and may only
    do what its launcher gave it: not ask for more rockers, nor list or signal its launcher's other ones."""
    if peer.foreign_ns and not allow_nested:
        raise Denied(f"the caller (pid {peer.pid}) is not on the host: {peer.foreign_ns}; rockerd serves callers "
                     "inside rockers or other containers only when started with --allow-nested-callers")


def require_owned_dir(peer: Peer | None, fd: int, what: str, path: str) -> None:
    if is_root(peer):
        return
    assert peer is not None
    if os.fstat(fd).st_uid != peer.uid:
        raise Denied(f"{what} {path} must be owned by uid {peer.uid}")


@dataclass(frozen=True)
class Ids:
    """Credentials to act with that are not a socket peer's (a data dir's owner)."""

    uid: int
    gid: int
    groups: tuple[int, ...] = ()
    pid: int = 0


def data_dir_owner(peer: Peer | None, data_fd: int) -> Peer | None:
    """Whom the dirs rockerd makes inside a data dir are made as, so that its owner can remove
    them: the caller (who must own it), or for root callers the data dir's owner."""
    if not is_root(peer):
        return peer
    st = os.fstat(data_fd)
    return None if st.st_uid == 0 else Ids(st.st_uid, st.st_gid)


@contextmanager
def acting_as(peer: Peer | None) -> Iterator[None]:
    """Act on files with the caller's fsuid, fsgid and supplementary groups, so the kernel checks
    every step of a walk, and owns every dir made, as for the caller itself.

    All three are this thread's only (raw setgroups, setfsuid/setfsgid): the other threads of
    the daemon, and the guards cloned from them, keep none of the caller's. They are put back
    exactly, exceptions included.
    """
    if is_root(peer):
        yield
        return
    assert peer is not None
    old_groups = os.getgroups()  # getgroups(2) reads the calling thread's credentials
    same = sorted(old_groups) == sorted(peer.groups)  # (rockerd keeps none: a caller without any)
    if not same:
        proc.set_thread_groups(peer.groups)
    try:
        old_gid = proc.setfsgid(peer.gid)
        old_uid = proc.setfsuid(peer.uid)
        try:
            yield
        finally:
            proc.setfsuid(old_uid)
            proc.setfsgid(old_gid)
    finally:
        if not same:
            proc.set_thread_groups(old_groups)
