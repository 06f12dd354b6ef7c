"""Which overlay dirs share one overlayfs.

Every overlayfs mount recreates its work dir and probes the upper fs
(tmpfile, whiteout, xattr): about 0.3 ms of journal work each on this ext4,
so five overlays were the largest single cost of a create. Dirs that one
ancestor reaches without crossing a mount are instead parts of one overlayfs
over that ancestor, each attached in place as a clone of its subdir
(open_tree): one superblock, one work dir, the same merge. The app sees
exactly what separate overlays gave it: the ancestor's overlay root is never
attached, writes still land in upper/<D> (the upper of the ancestor is
upper/<ancestor>, so the layout does not change), and a dir that sits on
another mount keeps an overlay of its own.

Before Linux 6.15 a dir inside a detached mount cannot be cloned: there
the clones are made where the overlay is attached for a moment, in a mount
namespace of one rockerd thread (stage.py).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

from rocker_sys import fs
from rocker_sys.libc import SyscallError


@dataclass(frozen=True)
class OverlayGroup:
    lower: str  # the host dir this overlayfs is over
    members: tuple[int, ...]  # indexes into app_overlay_dirs, in request order

    @property
    def shared(self) -> bool:
        return len(self.members) > 1


def common_dir(paths: Sequence[str]) -> str:
    parts = [fs.components(p) for p in paths]
    n = 0
    while all(len(p) > n and p[n] == parts[0][n] for p in parts):
        n += 1
    return "/" + "/".join(parts[0][:n])


def plan_overlays(dirs: Sequence[str], share: bool = True) -> list[OverlayGroup]:
    """Group dirs by the ancestor that reaches them on one mount; the deepest first.

    Deepest first, because an overlay over an ancestor has its upper above
    the others' uppers: mounted before them, overlayfs would see each of
    those inside a live overlay's upper (a warning, or EBUSY with index=on).
    A dir that cannot be reached (missing, a symlink) is left alone, so that
    preparing it names the problem. `share`: whether dirs may share an overlay.
    """
    groups: list[OverlayGroup] = []
    if share:
        _split(dirs, list(range(len(dirs))), groups)
    else:
        groups = [OverlayGroup(d, (i,)) for i, d in enumerate(dirs)]
    return sorted(groups, key=lambda g: -len(fs.components(g.lower)))


def _split(dirs: Sequence[str], idx: list[int], out: list[OverlayGroup]) -> None:
    """Those of dirs[idx] that their common dir reaches form a group; the rest are split by
    the next component below it and tried again, deeper (a dir on its own mount ends alone)."""
    if len(idx) < 2:
        out.extend(OverlayGroup(dirs[i], (i,)) for i in idx)
        return
    top = common_dir([dirs[i] for i in idx])
    inside, outside = _reachable(top, dirs, idx)
    if len(inside) > 1:  # their own common dir lies on the way, so it reaches them too
        out.append(OverlayGroup(common_dir([dirs[i] for i in inside]), tuple(inside)))
    else:
        outside = idx
    depth = len(fs.components(top))
    below: dict[str, list[int]] = {}
    for i in outside:  # each part has a deeper common dir, so this ends
        comps = fs.components(dirs[i])
        below.setdefault(comps[depth] if len(comps) > depth else "", []).append(i)
    for part in below.values():
        _split(dirs, part, out)


def _reachable(top: str, dirs: Sequence[str], idx: list[int]) -> tuple[list[int], list[int]]:
    """Those of dirs[idx] that `top` reaches with no mount and no symlink on the way.

    That is what an overlayfs over `top` shows there: its lookups do not cross mounts.
    """
    try:
        top_fd = fs.open_nofollow(top, fs.O_PATH_DIR)
    except SyscallError:
        return [], idx
    inside: list[int] = []
    outside: list[int] = []
    try:
        for i in idx:
            rel = dirs[i][len(top):].lstrip("/")
            try:
                os.close(fs.open_nofollow(rel, fs.O_PATH_DIR, dir_fd=top_fd, same_mount=True))
            except SyscallError:
                outside.append(i)
            else:
                inside.append(i)
    finally:
        os.close(top_fd)
    return inside, outside
