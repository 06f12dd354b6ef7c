"""`rocker rm-data` and `rocker diff`: a data dir is its owner's, to read and to delete."""

from __future__ import annotations

import argparse
import os
import stat
from collections.abc import Iterator

from .. import wire
from .common import EXIT_OK, Daemon, Failure, find, say, socket_path

REMOVE_DATA = "io.rocker.Rocker.RemoveData"
UPPER = "upper"  # rockerd/create/layout.py: <data dir>/upper/<host dir D> holds what was written over D


def cmd_rm_data(args: argparse.Namespace) -> int:
    """rockerd removes it (as you, and as root only for what overlayfs made there)."""
    path = os.path.abspath(args.dir)
    with Daemon(socket_path(args)) as d:
        try:
            reply = d.call(REMOVE_DATA, {"data_dir": path})
        except wire.RemoteError as e:
            reason = e.parameters.get("reason") or str(e)
            raise Failure(f"cannot remove {path}: {reason}") from None
    if reply.get("left"):
        raise Failure(f"removed {reply.get('removed', 0)} entries of {path}, but {reply['left']} stay: they are "
                      f"not yours and rocker did not make them (see `find {path} ! -user $USER`)")
    say(f"removed {path} ({reply.get('removed', 0)} entries)", "rocker rm-data")
    return EXIT_OK


def changes(data_dir: str) -> Iterator[tuple[str, str]]:
    """(kind, host path) for each entry the overlays hold: A added, C changed (it hides the host's),
    D deleted (a whiteout); a dir the app replaced whole (opaque) is C with a trailing /."""
    top = os.path.join(data_dir, UPPER)
    for root, dirs, files in os.walk(top, onerror=_unreadable):
        rel = root[len(top):] or "/"
        for name in sorted(dirs):
            host = os.path.join(rel, name)
            full = os.path.join(root, name)
            if _opaque(full):
                yield "C", host + "/"
            elif not os.path.lexists(host):
                yield "A", host + "/"
        for name in sorted(files):
            host = os.path.join(rel, name)
            st = os.lstat(os.path.join(root, name))
            if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
                yield "D", host
            else:
                yield ("C" if os.path.lexists(host) else "A"), host
        dirs.sort()


def _opaque(path: str) -> bool:
    try:
        return os.getxattr(path, "trusted.overlay.opaque", follow_symlinks=False) == b"y"
    except OSError:
        return False  # none, or not root: trusted.* is root's to read


def _unreadable(e: OSError) -> None:
    say(f"cannot read {e.filename}: {e.strerror}", "rocker diff")


def cmd_diff(args: argparse.Namespace) -> int:
    target = args.target
    if "/" in target or target.startswith("."):
        data_dir = os.path.abspath(target)
    else:
        with Daemon(socket_path(args)) as d:
            data_dir = str(find(d.rockers(), target)["app_data_dir"])
    if not os.path.isdir(data_dir):
        raise Failure(f"no data dir at {data_dir}")
    for kind, path in changes(data_dir):
        print(f"{kind} {path}")
    return EXIT_OK
