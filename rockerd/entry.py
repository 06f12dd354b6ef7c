"""What a launcher needs to enter a rocker: the reply Create and Join share, and who may Join.

Create answers with a new rocker's namespace fds; Join (`rocker exec`) with a live one's, in
the same reply, built by `entry_reply` for both, so whatever a launcher needs to enter (more
fds, more fields) reaches a second process the same way it reaches the first.
"""

from __future__ import annotations

import errno
import os

from rocker_sys import ns

from .confine import Filters
from .create import NS_NAMES
from .create.handoff import open_ns_fds
from .policy import Denied, Peer, is_root
from .registry import Rocker
from .varlink.server import Reply


class Gone(Exception):
    """The rocker ended (its guard is gone) while we looked at it."""


def entry_reply(rocker: Rocker, ns_fds: dict[str, int], cgroup_fds: list[int], filters: Filters) -> Reply:
    """Create's and Join's reply: the rocker's name and guard, and beside it its namespace fds (no
    net fd for the host's network), its cgroup.procs fds (the app joins them) and last the app's
    syscall filter. Every fd given is the reply's: closed once sent."""
    if rocker.request.network == "host" and "net" in ns_fds:  # the host's: the client keeps its own
        os.close(ns_fds.pop("net"))
    names = [n for n in NS_NAMES if n in ns_fds]
    fds = [ns_fds[n] for n in names]
    reply: dict[str, object] = {"err_no": 0, "app_pid": 0, "guard_pid": rocker.pid, "guard_pname": rocker.name,
                                "namespaces": {n: i for i, n in enumerate(names)}}
    if cgroup_fds:  # the app joins through these before it runs (rocker-join.c)
        reply["cgroups"] = list(range(len(fds), len(fds) + len(cgroup_fds)))
        fds += cgroup_fds
    reply.update(filters.reply_part(rocker.request.seccomp, fds))
    return Reply(reply, fds)


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
