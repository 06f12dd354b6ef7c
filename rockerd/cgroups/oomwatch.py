"""OOM kills as they happen: the kernel wakes rockerd when a rocker's cgroup runs out of memory, so
the journal says so while the rocker lives, not only when it ends or someone lists it.

v2: one inotify fd for all rockers, a watch on each rocker's memory.events (the kernel notifies a
change of it, at most 50 times a second per file). v1: an eventfd per rocker, registered on its
memory.oom_control through cgroup.event_control (the kernel signals it at each OOM, before the kill,
and once more when the cgroup is removed). Either way the manager then reads the oom_kill count.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import struct
from collections.abc import Callable

from rocker_sys.libc import SyscallError, check, libc

log = logging.getLogger("rockerd.cgroups")
IN_MODIFY = 0x2
IN_EVENT = struct.Struct("iIII")  # struct inotify_event: wd, mask, cookie, len (then len bytes of name)


class OomWatch:
    """Calls `woken(name)` when the rocker `name`'s cgroup may have had an OOM kill."""

    def __init__(self, mode: str, woken: Callable[[str], None]) -> None:
        self.mode, self.woken = mode, woken
        self.ifd = -1
        self.by_wd: dict[int, str] = {}  # v2: inotify watch -> rocker
        self.of: dict[str, int] = {}  # rocker -> its watch (v2) or eventfd (v1)

    def watch(self, name: str, memdir: str) -> None:
        """Start watching; OSError (SyscallError) if the kernel refuses (the caller logs and goes on)."""
        loop = asyncio.get_running_loop()
        if self.mode == "v2":
            if self.ifd < 0:
                self.ifd = check(libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC), "inotify_init1")
                loop.add_reader(self.ifd, self._inotify_ready)
            path = os.path.join(memdir, "memory.events")
            wd = check(libc.inotify_add_watch(self.ifd, path.encode(), ctypes.c_uint32(IN_MODIFY)),
                       "inotify_add_watch", path)
            self.by_wd[wd], self.of[name] = name, wd
        elif self.mode == "v1":
            efd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
            try:
                _register_v1(memdir, efd)
            except BaseException:
                os.close(efd)
                raise
            self.of[name] = efd
            loop.add_reader(efd, self._eventfd_ready, name, efd)

    def unwatch(self, name: str) -> None:
        handle = self.of.pop(name, None)
        if handle is None:
            return
        if self.mode == "v2":
            self.by_wd.pop(handle, None)
            libc.inotify_rm_watch(self.ifd, handle)  # EINVAL if the cgroup went first: nothing to do then
        else:
            asyncio.get_running_loop().remove_reader(handle)
            os.close(handle)

    def close(self) -> None:
        for name in list(self.of):
            self.unwatch(name)
        if self.ifd >= 0:
            with contextlib.suppress(RuntimeError):
                asyncio.get_running_loop().remove_reader(self.ifd)
            os.close(self.ifd)
            self.ifd = -1

    def _inotify_ready(self) -> None:
        try:
            data = os.read(self.ifd, 65536)
        except BlockingIOError:
            return
        woken: dict[str, None] = {}
        off = 0
        while off + IN_EVENT.size <= len(data):
            wd, _, _, n = IN_EVENT.unpack_from(data, off)
            off += IN_EVENT.size + n
            if wd in self.by_wd:
                woken[self.by_wd[wd]] = None
        for name in woken:
            self.woken(name)

    def _eventfd_ready(self, name: str, efd: int) -> None:
        try:
            os.eventfd_read(efd)
        except BlockingIOError:
            return
        self.woken(name)


def _register_v1(memdir: str, efd: int) -> None:
    """cgroup.event_control: "<eventfd> <fd of memory.oom_control>" arms an OOM notification."""
    ofd = _open(os.path.join(memdir, "memory.oom_control"), os.O_RDONLY)
    try:
        ctl = os.path.join(memdir, "cgroup.event_control")
        cfd = _open(ctl, os.O_WRONLY)
        try:
            os.write(cfd, f"{efd} {ofd}".encode())
        except OSError as e:
            raise SyscallError(e.errno or 0, "write", ctl) from None
        finally:
            os.close(cfd)
    finally:
        os.close(ofd)


def _open(path: str, flags: int) -> int:
    try:
        return os.open(path, flags | os.O_CLOEXEC)
    except OSError as e:
        raise SyscallError(e.errno or 0, "open", path) from None
