"""Spare cgroups, made ahead so that a Create does not make its rocker's cgroup on its critical path.

On cgroup v1 a rocker's cgroup is a dir in each of four hierarchies (memory, pids, cpu, cpuacct), and
making them with their limits is most of what limits add to a create (mkdir of a memcg is the dear
part). The pool keeps a few made ahead, with the daemon's default limits already written, as
BASE/sp-<rockerd's pid>-<n> in each hierarchy; a Create renames one into place (v1 cgroupfs renames
within a parent: 4 renames instead of 4 mkdirs + 5 limit writes) and writes only the limits its
request has beyond the defaults, all before its guard starts. The pool is refilled after the reply
(docs/operations.md, "Spare cgroups").

Nothing runs in a spare (it is renamed before anything joins it), so removing one always works:
rockerd removes its own at exit, and at start those of a rockerd that is gone (killed, crashed).
v2 has no rename (cgroup2 refuses it: EPERM), and there a rocker's cgroup is one dir: made in place.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
from collections.abc import Callable

from .limits import Limits

log = logging.getLogger("rockerd.cgroups")
PREFIX = "sp-"
SIZE = 4  # spares kept: a burst beyond this makes the rest in place, as without the pool


class SparePool:
    """Spare cgroups under `bases` (the tree's v1 bases, MOUNT/rocker), each with `limits`.

    `make(name, limits)` makes the cgroup `name` in every base with those limits written, or raises
    leaving nothing behind (the tree's CgroupTree.make): the pool knows nothing of the controllers' files."""

    def __init__(self, bases: list[str], limits: Limits, make: Callable[[str, Limits], object],
                 size: int = SIZE) -> None:
        self.bases, self.limits, self._make, self.size = bases, limits, make, size
        self.spares: list[str] = []  # names (the same in every base), the next to take last
        self._seq = 0
        self.broken = ""  # why making spares stopped (an error the kernel gave): then Creates make their own

    def take(self, name: str) -> Limits | None:
        """Rename a spare into place as `name` in every base: the limits written in it, or None if
        there is none (or a rename failed: then nothing of it is left and the caller makes its own)."""
        while self.spares:
            spare = self.spares.pop()
            done: list[str] = []
            try:
                for b in self.bases:
                    os.rename(os.path.join(b, spare), os.path.join(b, name))
                    done.append(b)
                return self.limits
            except OSError as e:
                log.warning("cgroups: cannot rename the spare cgroup %s to %s: %s", spare, name, e.strerror)
                for b in self.bases:  # empty: no process ever joined a spare
                    for n in ((name,) if b in done else (spare,)):
                        with contextlib.suppress(OSError):
                            os.rmdir(os.path.join(b, n))
                if e.errno == errno.EEXIST:
                    return None  # the name is taken: making it in place fails the same way, and says so
        return None

    def refill(self) -> bool:
        """Make one spare if the pool is short; True if it is still short (call again)."""
        if self.broken or len(self.spares) >= self.size:
            return False
        self._seq += 1
        spare = f"{PREFIX}{os.getpid()}-{self._seq}"
        try:
            self._make(spare, self.limits)
        except Exception as e:  # CgroupError/OSError: Creates make their own from now on
            self.broken = str(e)
            log.warning("cgroups: cannot make a spare cgroup (%s): rockers' cgroups are made at create", e)
            return False
        self.spares.append(spare)
        return len(self.spares) < self.size

    def clear(self) -> None:
        """At rockerd's exit: its spares go, and none is made after (a refill already scheduled may
        still run while the event loop shuts down)."""
        self.broken = "rockerd is stopping"
        for spare in self.spares:
            _rmdirs([os.path.join(b, spare) for b in self.bases])
        self.spares = []

    def sweep(self) -> None:
        """At start: remove the spares of rockerds that are gone (one killed or crashed left them)."""
        for b in self.bases:
            with contextlib.suppress(OSError):
                for entry in os.listdir(b):
                    if entry.startswith(PREFIX) and not _alive(entry[len(PREFIX):].partition("-")[0]):
                        log.info("cgroups: removing the spare cgroup %s left by a rockerd that is gone",
                                 os.path.join(b, entry))
                        _rmdirs([os.path.join(b, entry)])


def _alive(pid: str) -> bool:
    """The spare's owner still runs (our own spares included); a name we did not make counts as gone."""
    if not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _rmdirs(paths: list[str]) -> None:
    for p in paths:
        try:
            os.rmdir(p)
        except FileNotFoundError:
            pass
        except OSError as e:
            log.warning("cgroups: cannot remove the spare cgroup %s: %s", p, e.strerror)
