"""The host steps (dirs, overlays) off the event loop, with a deadline.

Their paths are the caller's: the exec and data dirs and each overlay dir
are opened (as the caller) by name, and a lookup on a hung NFS or FUSE mount
would stall every other request if it ran on the loop. So they run on a
worker thread, as pkgopen.py opens the package, on a copy of the build's
context: when the deadline passes, the build fails at once with ETIMEDOUT
and the thread, whenever it returns, undoes what it did on its own copy;
the build's context stays empty, so nothing is undone or closed twice.
A build that finds another one making the overlays of its data dir
(datashare.SharePending) waits for it, then joins them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import logging
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from . import pkgopen
from .datashare import ENDING_GRACE, HolderDiffers, SharePending
from .host import HostContext
from .steps import BuildError, Step, run_plain_steps, undo_plain_steps

log = logging.getLogger("rockerd.create")

DEADLINE = 10.0  # seconds the host steps may take (a hung lookup keeps only its own thread)
SHARE_WAIT = 30.0  # seconds a build waits for another one to make the overlays it would share
THREADS = 8  # builds at once on this pool; a ninth waits, within its own deadline

_pool: ThreadPoolExecutor | None = None


def _fresh(ctx: HostContext) -> HostContext:
    """A copy with containers of its own, for the thread to fill."""
    return dataclasses.replace(ctx, created=[], made_in_data=[], mounts=[], dir_fds={}, overlays=[], expect={})


def _adopt_result(ctx: HostContext, work: HostContext) -> None:
    for f in dataclasses.fields(HostContext):  # what the host steps fill; a BuildContext's own stay
        setattr(ctx, f.name, getattr(work, f.name))


async def run_host_steps(steps: list[Step[HostContext]], ctx: HostContext, deadline: float = DEADLINE,
                         first: Callable[[], None] | None = None) -> None:
    """run_steps off the loop, within `deadline`; undoes itself when it fails (as run_steps does).
    `first` runs on the thread before the steps (the build's package open: pkgopen.Deferred)."""
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(max_workers=THREADS, thread_name_prefix="rockerd-dirs")
    waited_for_holder = False
    while True:
        work = _fresh(ctx)
        job = _pool.submit(_run_job, first, steps, work)
        try:
            finished = await done_within(job, deadline)
        except asyncio.CancelledError:
            job.add_done_callback(lambda f, w=work: _undo_late(f, steps, w))
            raise
        if not finished:
            job.add_done_callback(lambda f, w=work: _undo_late(f, steps, w))
            raise BuildError("prepare dirs", errno.ETIMEDOUT, f"the exec, data and overlay dirs of "
                             f"{ctx.name} were not ready within {deadline:g} s (a hung filesystem?)")
        failed = job.exception()
        if failed is not None:
            work.close_fds()  # run_steps undid the steps
            if isinstance(failed, HolderDiffers):  # held with other overlays: refused unless it ends soon
                if waited_for_holder or not await done_within(failed.ended, ENDING_GRACE):
                    raise failed.refusal
                waited_for_holder = True
                continue
            if not isinstance(failed, SharePending):
                raise failed
            if not await done_within(failed.first, SHARE_WAIT):
                raise BuildError("claim data dir", errno.ETIMEDOUT, f"data dir {ctx.req.app_data_dir}: the "
                                 f"rocker building its overlays did not finish within {SHARE_WAIT:g} s")
            continue
        _adopt_result(ctx, work)
        return


def _run_job(first: Callable[[], None] | None, steps: list[Step[HostContext]], work: HostContext) -> None:
    if first is not None:
        first()  # never raises: it keeps its outcome for PackageOpened
    run_plain_steps(steps, work)


async def done_within(job: Future[Any], timeout: float) -> bool:
    """Whether a thread's `job` is done within `timeout`, the loop free meanwhile. One loop future,
    woken by the job or by a timer: ~25 us less per trip than wait_for(shield(wrap_future(job)))."""
    loop = asyncio.get_running_loop()
    woken = loop.create_future()
    job.add_done_callback(lambda _: _wake_from_thread(loop, woken))
    timer = loop.call_later(timeout, _wake, woken)
    try:
        await woken
    finally:
        timer.cancel()
    return job.done()


def _wake(woken: asyncio.Future[None]) -> None:
    if not woken.done():
        woken.set_result(None)


def _wake_from_thread(loop: asyncio.AbstractEventLoop, woken: asyncio.Future[None]) -> None:
    try:
        loop.call_soon_threadsafe(_wake, woken)
    except RuntimeError:  # the loop is closed: nobody waits any more
        pass


def _undo_late(job: Future[None], steps: list[Step[HostContext]], work: HostContext) -> None:
    """The thread of an abandoned build returned: undo what it did (if it failed, it undid itself)."""
    if not job.cancelled() and job.exception() is None:
        log.warning("undoing the late host steps of %s", work.name)
        undo_plain_steps(steps, work)
    work.close_fds()


class HostDirs(Step[HostContext]):
    """The host's dir and overlay steps as one step of the build, run by run_host_steps: off the
    loop, within DEADLINE, undoing themselves when they fail (so a failed run leaves the build's
    context empty, and this step's undo then finds nothing to undo)."""

    def __init__(self, *steps: Step[HostContext]) -> None:
        self.steps = list(steps)

    def describe(self) -> str:
        return "prepare dirs"

    async def execute(self, ctx: HostContext) -> None:
        opening = getattr(ctx, "opening", None)  # the build's package, when OpenPackage deferred it to us
        first = opening.run if isinstance(opening, pkgopen.Deferred) else None
        try:
            await run_host_steps(self.steps, ctx, first=first)
        except BuildError as e:
            if e.errno == errno.ETIMEDOUT and first is not None and not opening.done():
                raise BuildError(pkgopen.STEP, errno.ETIMEDOUT, f"package {ctx.req.app_pkg_path} did not open "
                                 f"within {DEADLINE:g} s") from None
            raise

    def undo(self, ctx: HostContext) -> None:
        undo_plain_steps(self.steps, ctx)
