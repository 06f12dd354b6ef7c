"""The dirs of a shared overlay, cloned one by one, on every kernel.

A shared overlay (overlay_plan.py) gives each of its dirs a clone of that
subdir. Linux 6.15 clones a dir inside a detached mount. Before it,
open_tree(OPEN_TREE_CLONE) wants a mount attached in the caller's mount
namespace; mounting one overlay per dir instead cost ~0.3 ms each (work dir
and upper fs probes), the largest part of the fallback's extra start time.

So before 6.15 one thread of rockerd lives in a mount namespace of its own
that holds nothing but a tiny tmpfs (it pivots into it and detaches the copy
of the host's mounts, so no host file system is kept busy by it, and it is
private: nothing mounted there propagates anywhere). For each shared overlay
the thread attaches the detached overlay at /stage there, clones each dir
from it (reached as on the fast path: no symlink, no mount crossed), and
detaches it again. Only the clones outlive the call, as on the fast path;
the namespace is the thread's, so a crashed daemon leaves nothing staged.
"""

from __future__ import annotations

import errno
import logging
import os
import queue
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future

from rocker_sys import mount as m
from rocker_sys import ns

from .. import kernel

log = logging.getLogger("rockerd.stage")

STAGE = "/stage"  # where a shared overlay is attached in the thread's namespace, for its clones
_HOST_ROOT_AT = "/proc"  # where the tmpfs is first attached (any dir would do; /proc is always there)

Job = tuple[Callable[[], list[int]], Future[list[int]], Callable[[], None] | None]


def sharing() -> bool:
    """Whether dirs on one mount may share an overlay: where the kernel clones out of detached
    mounts, or where the staging namespace could be made (else: one overlay per dir, as before)."""
    if kernel.current().tree_clone:
        return True
    return _stager().up()


def clone_subdirs(mfd: int, rels: Sequence[str], whats: Sequence[str]) -> list[int]:
    """A detached clone of each dir `rels[i]` below the detached mount `mfd` (all or none)."""
    if kernel.current().tree_clone:
        return _clones(mfd, rels, whats)
    return staged_clones(mfd, rels, whats)


def staged_clones(mfd: int, rels: Sequence[str], whats: Sequence[str]) -> list[int]:
    """The clones made on the stage thread, `mfd` attached there meanwhile; it is detached once
    the caller has them (~55 us of umount the create does not wait for), before the next job."""
    return _stager().run(lambda: _attach_and_clone(mfd, rels, whats), then=_detach_stage)


def _clones(mfd: int, rels: Sequence[str], whats: Sequence[str]) -> list[int]:
    out: list[int] = []
    try:
        for rel, what in zip(rels, whats, strict=True):
            out.append(m.clone_subdir(mfd, rel, what))
    except BaseException:
        for fd in out:
            os.close(fd)
        raise
    return out


def _attach_and_clone(mfd: int, rels: Sequence[str], whats: Sequence[str]) -> list[int]:
    m.move_mount(mfd, STAGE)
    return _clones(mfd, rels, whats)


def _detach_stage() -> None:
    """Lazily (MNT_DETACH): the caller's fd of the overlay keeps it busy. EINVAL: nothing was
    attached (move_mount failed)."""
    try:
        m.umount(STAGE, m.MNT_DETACH)
    except OSError as e:
        if e.errno != errno.EINVAL:
            log.error("cannot detach the staged overlay: %s", e)


class _Stager:
    """One thread in a private mount namespace, running jobs one at a time."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[Job] = queue.SimpleQueue()
        self._ready: Future[None] = Future()
        self.thread = threading.Thread(target=self._serve, name="rockerd-stage", daemon=True)
        self.thread.start()

    def up(self) -> bool:
        """Whether the namespace was made (waits for the thread's set-up the first time)."""
        return self._ready.exception() is None

    def run(self, job: Callable[[], list[int]], then: Callable[[], None] | None = None) -> list[int]:
        """`job`'s result, made on the thread; `then` runs there after the caller has it."""
        self._ready.result()  # raises what set-up raised, for every job
        done: Future[list[int]] = Future()
        self._jobs.put((job, done, then))
        return done.result()

    def _serve(self) -> None:
        try:
            enter_stage_namespace()
        except BaseException as e:
            log.error("cannot make the staging mount namespace: %s", e)
            self._ready.set_exception(e)
            return
        self._ready.set_result(None)
        while True:
            job, done, then = self._jobs.get()
            try:
                done.set_result(job())
            except BaseException as e:
                done.set_exception(e)
            finally:
                if then is not None:
                    then()


def enter_stage_namespace() -> None:
    """This thread into a new mount namespace whose only mount is a small tmpfs with /stage in it.

    unshare(CLONE_NEWNS) also unshares the thread's root and cwd (CLONE_FS), so the other
    threads keep theirs; pivot_root changes only the roots that are this namespace's root."""
    ns.unshare(ns.CLONE_NEWNS)
    m.make_rprivate("/")  # before anything is mounted here: nothing may propagate to the host
    fsfd = m.fsopen("tmpfs")
    try:
        m.fsconfig_string(fsfd, "size", "64k", "stage tmpfs")
        m.fsconfig_string(fsfd, "mode", "0700", "stage tmpfs")
        m.fsconfig_create(fsfd, "stage tmpfs")
        root = m.fsmount(fsfd, m.MOUNT_ATTR_NOSUID | m.MOUNT_ATTR_NODEV | m.MOUNT_ATTR_NOEXEC, "stage tmpfs")
    finally:
        os.close(fsfd)
    try:
        os.mkdir(STAGE.lstrip("/"), 0o700, dir_fd=root)
        m.move_mount(root, _HOST_ROOT_AT)
        os.fchdir(root)
    finally:
        os.close(root)
    m.pivot_root(".", ".")  # the tmpfs is the root now, the old root stacked under it...
    m.umount(".", m.MNT_DETACH)  # ...and detached with every host mount below it
    os.chdir("/")


_the_stager: _Stager | None = None
_lock = threading.Lock()


def _stager() -> _Stager:
    global _the_stager
    with _lock:
        if _the_stager is None:
            _the_stager = _Stager()
        return _the_stager
