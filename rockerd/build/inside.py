"""What the cloned child does inside the new namespaces before it becomes the guard.

It runs in a raw clone of the daemon, outside the event loop: it must never
return into the daemon's code, never import anything (the uid it runs as
may not be able to read the daemon's files), and it ends in exec of the C
guard or in os._exit. Nothing needs undoing here: if it fails, its mount,
network and other namespaces die with it.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
from dataclasses import dataclass
from typing import NoReturn

from rocker_client._sys import mount as m
from rocker_client._sys import ns, proc

from .net import loopback_up
from .steps import Step, as_build_error

STATUS_FD = 3
GUARD_FD = 4


@dataclass
class InsidePlan:
    name: str
    mounts: list[tuple[str, int]]
    guard_fd: int
    go_r: int
    go_w: int
    status_r: int
    status_w: int
    first_entry_timeout: float


class BecomeRootInside(Step[InsidePlan]):
    """The daemon has written the maps: become uid 0 inside (the app's uid outside) for good."""

    def describe(self) -> str:
        return "switch to the app's ids"

    def execute(self, plan: InsidePlan) -> None:
        os.setresgid(0, 0, 0)
        os.setresuid(0, 0, 0)


class MakeRootPrivate(Step[InsidePlan]):
    def describe(self) -> str:
        return "make / rprivate"

    def execute(self, plan: InsidePlan) -> None:
        m.make_rprivate("/")


class AttachMounts(Step[InsidePlan]):
    """Overlays first, then the package: an exec dir may lie inside an overlay dir."""

    def describe(self) -> str:
        return "attach package and overlays"

    def execute(self, plan: InsidePlan) -> None:
        for target, mfd in plan.mounts:
            m.move_mount(mfd, target)
            os.close(mfd)


class MountProc(Step[InsidePlan]):
    def describe(self) -> str:
        return "mount /proc"

    def execute(self, plan: InsidePlan) -> None:
        m.mount("proc", "/proc", "proc", m.MS_NOSUID | m.MS_NODEV | m.MS_NOEXEC)


class SetHostname(Step[InsidePlan]):
    def describe(self) -> str:
        return "set hostname"

    def execute(self, plan: InsidePlan) -> None:
        proc.sethostname(plan.name)


class LoopbackUp(Step[InsidePlan]):
    def describe(self) -> str:
        return "bring lo up"

    def execute(self, plan: InsidePlan) -> None:
        loopback_up()


class ExecGuard(Step[InsidePlan]):
    """Hand over to the C guard: only the status pipe goes with it."""

    def describe(self) -> str:
        return "exec guard"

    def execute(self, plan: InsidePlan) -> None:
        # lift both above the targets first: either may already sit on fd 3 or 4
        status = fcntl.fcntl(plan.status_w, fcntl.F_DUPFD_CLOEXEC, GUARD_FD + 1)
        guard = fcntl.fcntl(plan.guard_fd, fcntl.F_DUPFD_CLOEXEC, GUARD_FD + 1)
        os.dup2(status, STATUS_FD, inheritable=True)
        os.dup2(guard, GUARD_FD, inheritable=False)
        plan.status_w = STATUS_FD  # a failed exec still reports through the pipe
        ns.close_range(GUARD_FD + 1)
        proc.execveat(GUARD_FD, [plan.name, str(STATUS_FD), f"{plan.first_entry_timeout:g}"], [])


INSIDE_STEPS: list[Step[InsidePlan]] = [
    BecomeRootInside(), MakeRootPrivate(), AttachMounts(), MountProc(), SetHostname(), LoopbackUp(), ExecGuard(),
]


def child_main(plan: InsidePlan) -> NoReturn:
    """Entry point of the cloned child; reports a failure as one JSON object on the status pipe."""
    try:
        signal.set_wakeup_fd(-1)  # the daemon's loop owns that fd; a signal here must not wake it
        os.close(plan.go_w)
        os.close(plan.status_r)
        if os.read(plan.go_r, 1) != b"G":  # the daemon failed or died before writing our maps
            os._exit(2)
        os.close(plan.go_r)
        for step in INSIDE_STEPS:
            try:
                step.execute(plan)
            except BaseException as e:
                err = as_build_error(step.describe(), e)
                os.write(plan.status_w, json.dumps(
                    {"step": err.step, "errno": err.errno, "reason": err.reason}).encode())
                os._exit(1)
    finally:
        os._exit(3)
