"""cgroup v2 and a non-root launcher: rockerd moves the app into the rocker's cgroup when the app asks.

The v2 kernel moves a process only for someone with write access to cgroup.procs of the common
ancestor of its cgroup and the target: for a uid-1000 launcher's app, going from the user's session
to rockerd's subtree, that is the root cgroup's, root's. clone3(CLONE_INTO_CGROUP) makes the same
check with the caller's credentials. A root-opened cgroup.procs fd would do, but the kernel checks
the opener, not the writer: in a launcher's hands it would move any process the launcher names.

So the launcher gets one end of a socket pair instead (in the reply's `cgroups`). The app, once it
has joined the rocker's namespaces and before it runs anything, writes on it and waits for the
answer (rocker-join.c). rockerd learns the writer's PID from the kernel (SO_PASSCRED: nobody without
CAP_SYS_ADMIN can claim another process's PID), checks the process is in the rocker's user
namespace (only the rocker's processes and those that joined it are: moving them into the rocker's
cgroup can only bound them), writes the PID to cgroup.procs and answers "0" or the errno. One move
per channel; rockerd then closes its end (the app's children are born in the cgroup).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
import struct

log = logging.getLogger("rockerd.cgroups")
SO_PASSCRED = 16
SCM_CREDENTIALS = 2
UCRED = struct.Struct("iII")  # struct ucred: pid, uid, gid
MAX_OPEN = 4  # channels of one rocker waiting for their app (a launcher uses its own at once); beyond, the oldest goes


class Mover:
    def __init__(self) -> None:
        self.open: dict[str, list[socket.socket]] = {}

    def channel(self, name: str, procs: str, guard_pid: int) -> int:
        """The launcher's end of a new channel for one app process of the rocker `name` (the reply's)."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            ours.setsockopt(socket.SOL_SOCKET, SO_PASSCRED, 1)
            ours.setblocking(False)
            asyncio.get_running_loop().add_reader(ours.fileno(), self._asked, name, ours, procs, guard_pid)
        except BaseException:
            ours.close()
            theirs.close()
            raise
        chans = self.open.setdefault(name, [])
        chans.append(ours)
        if len(chans) > MAX_OPEN:
            self._close(name, chans[0])
        return theirs.detach()

    def drop(self, name: str) -> None:
        """The rocker ended: apps still to come get EOF (rocker-join.c reports ESRCH, as for a gone rocker)."""
        for s in list(self.open.get(name, [])):
            self._close(name, s)

    def _close(self, name: str, s: socket.socket) -> None:
        chans = self.open.get(name, [])
        if s in chans:
            chans.remove(s)
            asyncio.get_running_loop().remove_reader(s.fileno())
            s.close()
        if not chans:
            self.open.pop(name, None)

    def _asked(self, name: str, s: socket.socket, procs: str, guard_pid: int) -> None:
        try:
            data, anc, _, _ = s.recvmsg(16, socket.CMSG_SPACE(UCRED.size))
        except BlockingIOError:
            return
        except OSError:
            data, anc = b"", []
        pid = next((UCRED.unpack(d[:UCRED.size])[0] for lvl, typ, d in anc
                    if lvl == socket.SOL_SOCKET and typ == SCM_CREDENTIALS), 0)
        if data and pid > 0:
            err = move(name, pid, procs, guard_pid)
            try:
                s.send(str(err).encode())
            except OSError:
                pass  # the asker is gone: nothing to tell
        self._close(name, s)


def move(name: str, pid: int, procs: str, guard_pid: int) -> int:
    """Put process `pid` in the cgroup whose cgroup.procs is `procs` if it is in the user namespace
    of the rocker `name`'s guard; 0, or the errno."""
    try:
        asker, guard = os.stat(f"/proc/{pid}/ns/user"), os.stat(f"/proc/{guard_pid}/ns/user")
    except OSError as e:
        return errno.ESRCH if e.errno == errno.ENOENT else e.errno or errno.EIO
    if (asker.st_dev, asker.st_ino) != (guard.st_dev, guard.st_ino):
        log.warning("cgroups: process %d asked to join %s's cgroup from outside its user namespace: refused",
                    pid, name)
        return errno.EPERM
    try:
        fd = os.open(procs, os.O_WRONLY | os.O_CLOEXEC)
    except OSError as e:
        return errno.ESRCH if e.errno == errno.ENOENT else e.errno or errno.EIO
    try:
        os.write(fd, str(pid).encode())
    except OSError as e:
        return e.errno or errno.EIO
    finally:
        os.close(fd)
    return 0
