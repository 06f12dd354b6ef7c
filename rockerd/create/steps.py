"""A rocker's build as a declarative list of small steps.

Each step knows how to do itself, undo itself and say what it is, so a
failure anywhere undoes exactly what was done, in reverse, and the error
names the step that failed.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Sequence
from typing import Generic, TypeVar

from rocker_sys.libc import SyscallError

log = logging.getLogger("rockerd.create")
C = TypeVar("C")


class BuildError(Exception):
    """A step failed: which one, the errno, and why."""

    def __init__(self, step: str, err: int, reason: str) -> None:
        super().__init__(f"{step}: {reason}")
        self.step = step
        self.errno = err
        self.reason = reason


class Step(Generic[C]):
    def describe(self) -> str:
        raise NotImplementedError

    def execute(self, ctx: C) -> None:
        raise NotImplementedError

    def undo(self, ctx: C) -> None:
        """Reverse execute(); must not raise. Most steps' fds die with the context."""


def run_steps(steps: Sequence[Step[C]], ctx: C) -> None:
    """Execute steps in order; on failure undo the done ones in reverse and raise BuildError."""
    done: list[Step[C]] = []
    for step in steps:
        try:
            step.execute(ctx)
        except Exception as e:
            undo_steps([*done, step], ctx)  # the failing step too: every undo copes with half-done work
            if getattr(e, "passthrough", False):  # a refusal, not a failure: keep its type
                raise
            raise as_build_error(step.describe(), e) from e
        done.append(step)


def undo_steps(done: Sequence[Step[C]], ctx: C) -> None:
    for step in reversed(done):
        try:
            step.undo(ctx)
        except Exception:  # undo must go on with the rest whatever one step does
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
