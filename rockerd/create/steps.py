"""A rocker's build as a declarative list of small steps.

Each step knows how to do itself, undo itself and say what it is, so a
failure anywhere undoes exactly what was done, in reverse, and the error
names the step that failed. A step's execute() and undo() are plain
functions, or coroutines where the step waits for work that runs beside the
event loop (the guard's clone on a worker thread, the package's open): the
runner awaits what they return, so a step that does not wait costs no trip
through the loop.
"""

from __future__ import annotations

import asyncio
import errno
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

from rocker_sys.libc import SyscallError

log = logging.getLogger("rockerd.create")
C = TypeVar("C", contravariant=True)  # a step for a HostContext serves in a build of any richer context


class BuildError(Exception):
    """A step failed: which one, the errno, and why."""

    def __init__(self, step: str, err: int, reason: str) -> None:
        super().__init__(f"{step}: {reason}")
        self.step = step
        self.errno = err
        self.reason = reason


class Step(Generic[C]):
    """One instance serves every build (STEPS is a module-level list), so a step keeps no state
    of its own: what it makes goes into the context, where its undo and later steps find it."""

    def describe(self) -> str:
        raise NotImplementedError

    def execute(self, ctx: C) -> Awaitable[None] | None:
        raise NotImplementedError

    def undo(self, ctx: C) -> Awaitable[None] | None:
        """Reverse execute(), also a half-done one; must not raise. Most steps' fds die with the context."""


async def run_steps(steps: Sequence[Step[C]], ctx: C, release: Callable[[], None] | None = None) -> None:
    """Execute steps in order; on failure or cancellation call `release` (what the context
    holds, e.g. its fds: closed before anything is undone, so no undone dir is still in use),
    undo the done steps and the failing one in reverse, then raise BuildError naming the
    failing step (a refusal, a cancellation keep their type)."""
    done: list[Step[C]] = []
    for step in steps:
        try:
            pending = step.execute(ctx)
            if pending is not None:
                await pending
        except BaseException as e:
            if release is not None:
                release()
            await undo_steps([*done, step], ctx)  # the failing step too: every undo copes with half-done work
            if not isinstance(e, Exception) or getattr(e, "passthrough", False):  # a refusal: keep its type
                raise
            raise as_build_error(step.describe(), e) from e
        done.append(step)


async def undo_steps(done: Sequence[Step[C]], ctx: C) -> None:
    """Undo in reverse, every one whatever the others do; a cancellation meanwhile is raised at the end."""
    cancelled = False
    for step in reversed(done):
        try:
            pending = step.undo(ctx)
            if pending is not None:
                await pending
        except asyncio.CancelledError:
            cancelled = True
        except Exception:  # undo must go on with the rest whatever one step does
            log.exception("undo of %r failed", step.describe())
    if cancelled:
        raise asyncio.CancelledError


def run_plain_steps(steps: Sequence[Step[C]], ctx: C) -> None:
    """run_steps for steps that never wait (their execute and undo return None), on a worker
    thread that has no event loop: dirsteps.py runs the host's dir steps so."""
    done: list[Step[C]] = []
    for step in steps:
        try:
            step.execute(ctx)
        except Exception as e:
            undo_plain_steps([*done, step], ctx)
            if getattr(e, "passthrough", False):
                raise
            raise as_build_error(step.describe(), e) from e
        done.append(step)


def undo_plain_steps(done: Sequence[Step[C]], ctx: C) -> None:
    for step in reversed(done):
        try:
            step.undo(ctx)
        except Exception:
            log.exception("undo of %r failed", step.describe())


def as_build_error(step: str, e: BaseException) -> BuildError:
    if isinstance(e, BuildError):
        return e
    if isinstance(e, OSError):
        err = e.errno or errno.EIO
        reason = str(e) if isinstance(e, SyscallError) else f"{e.strerror or e}" + (
            f": {e.filename}" if e.filename else "")
        return BuildError(step, err, reason)
    return BuildError(step, errno.EIO, f"{type(e).__name__}: {e}")
