"""The one failure report of every process that joins a rocker or starts something for rocker.

    E<errno> <step>[: <detail>]

written in one piece on a pipe or socket: by the client's joining children (rocker-join.c's
rocker_report, or failure_report here), by librocker-exec's children, by librocker-spawn's child
and by the guard's setup (rockerd/create/spawn.py reads it with parse_report). An empty report
means the process died before it could say anything.
"""

from __future__ import annotations

import errno as errnos
import os

from .errors import GONE_ERRNOS, GONE_WHY
from .structs import Cause

APP_STEPS = ("exec", "chdir", "clone app", "fork app")  # what failed is starting the app, not entering


def failure_report(err: int, step: str, detail: str = "") -> bytes:
    return f"E{err} {step}{': ' + detail if detail else ''}".encode()


def parse_report(data: bytes, default_step: str) -> tuple[int, str, str]:
    """(errno, step, detail) of a report; EIO and `default_step` where it says less."""
    if data[:1] != b"E":
        return errnos.EIO, default_step, data.decode(errors="replace")
    head, _, rest = data[1:].decode(errors="replace").partition(" ")
    err = int(head) if head.isdigit() else errnos.EIO
    step, _, detail = rest.partition(": ")
    return err, step or default_step, detail


def cause_of_report(data: bytes) -> Cause:
    """kind "gone" when the rocker's guard has exited under us, "app" when starting the app
    failed, else "enter"."""
    if not data:
        return Cause("enter", "the process entering the rocker died")
    err, step, detail = parse_report(data, "enter")
    reason = f"{detail}: {os.strerror(err)}" if detail else os.strerror(err)
    if err in GONE_ERRNOS and step not in ("exec", "chdir"):  # their ENOENT is the program's or dir's
        return Cause("gone", reason + GONE_WHY, step=step, errno=err)
    return Cause("app" if step in APP_STEPS else "enter", reason, step=step, errno=err)
