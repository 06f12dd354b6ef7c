"""RemoveData: its owner deletes a data dir, with root's help only for what overlayfs made there.

After use a data dir holds entries its owner cannot remove: whiteouts
(root's 0:0 char devices, often in a root-owned sticky dir such as
upper/tmp), copy-ups of other owners' dirs (upper/<D> mirrors the host's
owners and modes) and overlayfs's work dirs (root, mode 000). The removal,
off the event loop with a deadline, goes in three passes:

1. as the caller (its fsuid, fsgid and groups): every entry of the data dir
   the kernel lets it remove, on fds opened O_NOFOLLOW (never by a path
   again, never across a mount);
2. as root, inside `upper/` and `work/` only, the same walk removes an entry
   only if overlayfs or rockerd made it or the caller owns it: a whiteout,
   an entry carrying a `trusted.overlay.*` xattr (which only the kernel's
   overlayfs or root can set), an entry of the caller's uid, or an empty
   dir. A dir of someone else that the caller moved in keeps its contents;
3. as the caller again: what pass 2 emptied, and the data dir itself
   (unlinkat from its parent opened as the caller, if the name is still it).

Refused while a rocker uses the dir (datashare.py knows, by inode), and no
rocker may claim it meanwhile; refused too if the dir holds anything but
upper/ and work/ at its top (it is not a data dir: a typo must cost nothing).
"""

from __future__ import annotations

import asyncio
import errno
import os
import stat
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from rocker_sys import fs

from . import policy
from .create import layout
from .create.datashare import DataShares
from .create.dirsteps import done_within

OPEN_DEADLINE = 5.0  # seconds the caller's path may take to open
REMOVE_DEADLINE = 120.0  # seconds a removal may take before the caller hears it is still going
O_WALK = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC

_pool: ThreadPoolExecutor | None = None


@dataclass
class Removal:
    removed: int = 0
    left: int = 0  # entries that stay (not the caller's to remove, and not made by overlayfs)


class RemoveRefused(Exception):
    """A problem with the request: (varlink error name suffix, reason)."""

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.kind = kind
        self.reason = reason


def _run(fn: Callable[..., object], *args: object) -> asyncio.Future[object]:
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="rockerd-rmdata")
    return asyncio.get_running_loop().run_in_executor(_pool, fn, *args)


async def remove_data_dir(path: object, peer: policy.Peer, shares: DataShares) -> Removal:
    if not isinstance(path, str) or not path.startswith("/") or os.path.normpath(path) != path or path == "/":
        raise RemoveRefused("InvalidRequest", "data_dir must be an absolute, normalised path other than /")
    opening = _run(_open_as, path, peer)
    try:
        fd = await asyncio.wait_for(asyncio.shield(opening), OPEN_DEADLINE)
    except TimeoutError:
        opening.add_done_callback(lambda f: f.exception() is None and os.close(f.result()))  # type: ignore[arg-type]
        raise RemoveRefused("PermissionDenied", f"data dir {path} did not open within {OPEN_DEADLINE:g} s") from None
    assert isinstance(fd, int)
    try:
        st = os.fstat(fd)
        if not policy.is_root(peer) and st.st_uid != peer.uid:
            raise RemoveRefused("PermissionDenied", f"data dir {path} is owned by uid {st.st_uid}, not {peer.uid}")
        key = (st.st_dev, st.st_ino)
        clearing = shares.ending(key)  # its overlays linger (they end now), or its work slot is being cleared
        if clearing is not None:
            await done_within(clearing, OPEN_DEADLINE)
        shares.begin_removal(key, path)  # refuses while a rocker uses it; no rocker may claim it meanwhile
    except BaseException:
        os.close(fd)
        raise
    job = _run(_remove, path, fd, peer)
    job.add_done_callback(lambda _: (os.close(fd), shares.end_removal(key)))
    try:
        result = await asyncio.wait_for(asyncio.shield(job), REMOVE_DEADLINE)
    except TimeoutError:
        raise RemoveRefused("PermissionDenied", f"removing {path} takes more than {REMOVE_DEADLINE:g} s; "
                                                "it goes on in the background") from None
    assert isinstance(result, Removal)
    return result


def _open_as(path: str, peer: policy.Peer) -> int:
    with policy.acting_as(peer):
        try:
            return fs.open_nofollow(path, fs.O_PATH_DIR)
        except OSError as e:
            raise RemoveRefused("PermissionDenied", f"data dir {path}: {e.strerror} (it must be a directory "
                                                    f"uid {peer.uid} can reach, with no symlink on the way)") from None


def _remove(path: str, data: int, peer: policy.Peer) -> Removal:
    out = Removal()
    dev = os.fstat(data).st_dev
    with policy.acting_as(peer):
        top = os.open(".", O_WALK, dir_fd=data)
        try:
            stray = sorted(set(os.listdir(top)) - {layout.UPPER, layout.WORK})
            if stray:  # a typo (rocker rm-data /usr) must not cost anything
                raise RemoveRefused("PermissionDenied", f"{path} does not look like a data dir: it holds "
                                                        f"{', '.join(stray[:3])}, not only upper/ and work/")
            _walk(top, dev, out, None)
        finally:
            os.close(top)
    out.left = 0
    top = os.open(".", O_WALK, dir_fd=data)  # as root
    try:
        for name in (layout.UPPER, layout.WORK):
            _enter(top, name, dev, out, _made_by_overlay_or_owned(peer))
    finally:
        os.close(top)
    with policy.acting_as(peer):
        top = os.open(".", O_WALK, dir_fd=data)
        try:
            out.left = _walk(top, dev, out, None)
        finally:
            os.close(top)
        if not out.left:
            _rmdir_self(path, data)
    return out


def _made_by_overlay_or_owned(peer: policy.Peer) -> Callable[[int, str, os.stat_result], bool]:
    uid = peer.uid

    def may(dfd: int, name: str, st: os.stat_result) -> bool:
        if st.st_uid == uid or (stat.S_ISCHR(st.st_mode) and st.st_rdev == 0):
            return True
        if stat.S_ISLNK(st.st_mode):
            return False  # no xattrs to read without following it; a link of the caller's is its uid
        try:
            fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
        except OSError:
            return False
        try:
            return any(x.startswith("trusted.overlay.") for x in os.listxattr(f"/proc/self/fd/{fd}"))
        except OSError:
            return False
        finally:
            os.close(fd)

    return may


Rule = Callable[[int, str, os.stat_result], bool] | None  # None: whatever the kernel allows (as the caller)


def _walk(dfd: int, dev: int, out: Removal, rule: Rule) -> int:
    """Remove the entries of the dir `dfd` (depth first); return how many stay."""
    left = 0
    for name in os.listdir(dfd):
        try:
            st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
        except OSError:
            left += 1
            continue
        if stat.S_ISDIR(st.st_mode):
            left += _enter(dfd, name, dev, out, rule, st)
            continue
        if rule is not None and not rule(dfd, name, st):
            left += 1
            continue
        try:
            os.unlink(name, dir_fd=dfd)
            out.removed += 1
        except OSError:
            left += 1
    return left


def _enter(dfd: int, name: str, dev: int, out: Removal, rule: Rule, st: os.stat_result | None = None) -> int:
    """Empty the subdir `name` and remove it; 1 if it stays. Never crosses a mount or follows a link."""
    try:
        sub = os.open(name, O_WALK, dir_fd=dfd)
    except OSError as e:
        return 0 if e.errno == errno.ENOENT and st is None else 1
    try:
        here = os.fstat(sub)
        if here.st_dev != dev or (st is not None and here.st_ino != st.st_ino):
            return 1  # a mount, or swapped since it was looked at
        left = _walk(sub, dev, out, rule)
    finally:
        os.close(sub)
    if left:
        return 1
    try:
        os.rmdir(name, dir_fd=dfd)  # empty now: removing it takes nothing from anyone
        out.removed += 1
        return 0
    except OSError:
        return 1


def _rmdir_self(path: str, data: int) -> None:
    parent, _, name = path.rpartition("/")
    try:
        pfd = fs.open_nofollow(parent or "/", fs.O_PATH_DIR)
    except OSError:
        return
    try:
        st, now = os.fstat(data), os.stat(name, dir_fd=pfd, follow_symlinks=False)
        if (st.st_dev, st.st_ino) == (now.st_dev, now.st_ino):
            os.rmdir(name, dir_fd=pfd)
    except OSError:
        pass
    finally:
        os.close(pfd)
