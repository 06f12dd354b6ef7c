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

The move runs in a worker thread, not on the event loop: a cgroup.procs write takes the kernel's
cgroup_threadgroup_rwsem for writing, which waits for an RCU grace period (~10 ms after an idle
moment) unless the hierarchy is mounted favordynmods (docs/operations.md). The rocker's user
namespace is known by its identity (device, inode), taken through the registry's pidfd when the
channel is made (manager.py), never looked up by the guard's PID at move time: an adopted guard is
not rockerd's child, so by then its PID could name another process.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
import struct
from concurrent.futures import ThreadPoolExecutor

log = logging.getLogger("rockerd.cgroups")
SO_PASSCRED = 16
SCM_CREDENTIALS = 2
UCRED = struct.Struct("iII")  # struct ucred: pid, uid, gid
MAX_OPEN = 4  # channels of one rocker waiting for their app (a launcher uses its own at once); beyond, the oldest goes
NsId = tuple[int, int]  # a namespace's (st_dev, st_ino)
_pool: ThreadPoolExecutor | None = None  # one thread: the kernel makes moves one at a time anyway (cgroup_mutex)


def _mover_pool() -> ThreadPoolExecutor:
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rockerd-cgmove")
    return _pool


class Mover:
    def __init__(self) -> None:
        self.open: dict[str, list[socket.socket]] = {}

    def channel(self, name: str, procs: str, userns: NsId | None) -> int:
        """The launcher's end of a new channel for one app process of the rocker `name` (the reply's);
        `userns` is the rocker's user namespace, the only one whose processes it moves (None: the
        guard was gone when asked: it moves nobody)."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            ours.setsockopt(socket.SOL_SOCKET, SO_PASSCRED, 1)
            ours.setblocking(False)
            asyncio.get_running_loop().add_reader(ours.fileno(), self._asked, name, ours, procs, userns)
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

    def _asked(self, name: str, s: socket.socket, procs: str, userns: NsId | None) -> None:
        try:
            data, anc, _, _ = s.recvmsg(16, socket.CMSG_SPACE(UCRED.size))
        except BlockingIOError:
            return
        except OSError:
            data, anc = b"", []
        pid = next((UCRED.unpack(d[:UCRED.size])[0] for lvl, typ, d in anc
                    if lvl == socket.SOL_SOCKET and typ == SCM_CREDENTIALS), 0)
        if not data or pid <= 0:
            self._close(name, s)
            return
        loop = asyncio.get_running_loop()
        loop.remove_reader(s.fileno())  # one move per channel; it stays in `open` (drop closes it) until answered
        moving = loop.run_in_executor(_mover_pool(), move, name, pid, procs, userns)
        moving.add_done_callback(lambda f: self._answer(name, s, f))

    def _answer(self, name: str, s: socket.socket, moving: asyncio.Future[int]) -> None:
        err = moving.result() if not moving.cancelled() and moving.exception() is None else errno.EIO
        if s.fileno() >= 0:  # else drop() closed it meanwhile: the asker gets EOF (the rocker ended)
            try:
                s.send(str(err).encode())
            except OSError:
                pass  # the asker is gone: nothing to tell
        self._close(name, s)


def userns_of(pid: int) -> NsId:
    """The identity of process `pid`'s user namespace (OSError if it is gone)."""
    st = os.stat(f"/proc/{pid}/ns/user")
    return st.st_dev, st.st_ino


def move(name: str, pid: int, procs: str, userns: NsId | None) -> int:
    """Put process `pid` in the cgroup whose cgroup.procs is `procs` if it is in the user namespace
    `userns` (the rocker `name`'s); 0, or the errno."""
    if userns is None:
        return errno.ESRCH
    try:
        asker = userns_of(pid)
    except OSError as e:
        return errno.ESRCH if e.errno == errno.ENOENT else e.errno or errno.EIO
    if asker != userns:
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
