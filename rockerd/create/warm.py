"""Warm a freshly mounted package's executables, on another CPU, while its first rocker is built.

A new squashfs superblock starts with an empty page cache: the app's exec
then reads and decompresses its binary on the start's critical path (4-5 ms
for a 700 KB gzip binary on the development VM, most of a cold start). The
decompression has to happen anyway; done by a thread right after the mount,
it overlaps the rest of the build, the reply and the launcher's fork, and
the exec finds the pages in memory.

Bounded: only files with an execute bit (what an exec needs first), at most
`budget` bytes and `MAX_ENTRIES` directory entries per package, and it stops
early when the package's last rocker ends. The thread holds its own fd of the
mount, so it never reads a dead one; its reads are syscalls, which release
the GIL, in 1 MiB steps.
"""

from __future__ import annotations

import logging
import os
import stat
import threading

log = logging.getLogger("rockerd.warm")

CHUNK = 1 << 20
MAX_ENTRIES = 4096
DEFAULT_BUDGET = 16 << 20


class Warmer:
    """One package's warm-up; `stop()` makes it end at its next chunk."""

    def __init__(self, mount_fd: int, label: str, budget: int) -> None:
        self._fd = os.dup(mount_fd)  # ours: the mount stays valid until we are done
        self._label = label
        self._budget = budget
        self._stop = threading.Event()
        self._dirs: list[int] = []  # open while the files in them are read
        self._thread = threading.Thread(target=self._run, name=f"warm {label}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        try:
            left = self._budget
            for dir_fd, name, size in self._executables():
                if left <= 0 or self._stop.is_set():
                    break
                left -= self._read(dir_fd, name, min(size, left))
        except OSError as e:  # a warm-up is only an optimisation
            log.debug("warming %s stopped: %s", self._label, e)
        finally:
            for fd in self._dirs:
                os.close(fd)
            os.close(self._fd)  # if the package was released meanwhile, this unmounts it

    def _executables(self) -> list[tuple[int, str, int]]:
        """(dir fd, name, size) of executable regular files, breadth first, smallest first per dir."""
        found: list[tuple[int, str, int]] = []
        seen = 0
        dirs = self._dirs
        dirs.append(os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=self._fd))
        i = 0
        while i < len(dirs) and seen < MAX_ENTRIES and not self._stop.is_set():
            here: list[tuple[int, str, int]] = []
            with os.scandir(dirs[i]) as it:
                for entry in it:
                    seen += 1
                    if seen > MAX_ENTRIES:
                        break
                    st = entry.stat(follow_symlinks=False)
                    if stat.S_ISDIR(st.st_mode):
                        dirs.append(os.open(entry.name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                                            dir_fd=dirs[i]))
                    elif stat.S_ISREG(st.st_mode) and st.st_mode & 0o111:
                        here.append((dirs[i], entry.name, st.st_size))
            found += sorted(here, key=lambda f: f[2])
            i += 1
        return found

    def _read(self, dir_fd: int, name: str, limit: int) -> int:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
        done = 0
        try:
            while done < limit and not self._stop.is_set():
                n = len(os.read(fd, min(CHUNK, limit - done)))
                if not n:
                    break
                done += n
        finally:
            os.close(fd)
        return done
