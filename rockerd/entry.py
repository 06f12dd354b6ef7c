"""What a launcher needs to enter a rocker: the reply Create and Join share, and who may Join.

Create answers with a new rocker's namespace fds; Join (`rocker exec`) with a live one's, in
the same reply, built by `entry_reply` for both, so whatever a launcher needs to enter (more
fds, more fields) reaches a second process the same way it reaches the first.
"""

from __future__ import annotations

import errno
import os

from rocker_sys import ns

from .create import NS_NAMES, open_ns_fds
from .policy import Denied, Peer, is_root
from .registry import Rocker
from .varlink.server import Reply


class Gone(Exception):
    """The rocker ended (its guard is gone) while we looked at it."""


def entry_reply(rocker: Rocker, ns_fds: dict[str, int]) -> Reply:
    """Create's and Join's reply: the rocker's name and guard, and its namespace fds beside it."""
    return Reply({"err_no": 0, "app_pid": 0, "guard_pid": rocker.pid, "guard_pname": rocker.name,
                  "namespaces": {n: i for i, n in enumerate(NS_NAMES)}},
                 [ns_fds[n] for n in NS_NAMES])


def check_join(peer: Peer, rocker: Rocker) -> None:
    """Root, and the uid the rocker runs as (the owner of its user namespace), may join it; nobody else:
    joining is root over the app's files and processes. (A non-root caller only gets rockers of its own uid.)"""
    if is_root(peer) or peer.uid == rocker.uid:
        return
    raise Denied(f"{rocker.name} runs as uid {rocker.uid}: only root and uid {rocker.uid} may join it, "
                 f"not uid {peer.uid}")


def live_ns_fds(rocker: Rocker) -> dict[str, int]:
    """The guard's namespace fds, opened through /proc/PID and then checked against its pidfd.

    An adopted guard is not our child, so its PID could be another process's once it has ended:
    if the pidfd's process still exists after the opens, it held the PID during them.
    """
    try:
        fds = open_ns_fds(rocker.pid)
    except OSError as e:
        if e.errno in (errno.ENOENT, errno.ESRCH):
            raise Gone(rocker.name) from None
        raise
    try:
        ns.pidfd_send_signal(rocker.pidfd, 0)
    except OSError:
        for fd in fds.values():
            os.close(fd)
        raise Gone(rocker.name) from None
    return fds
