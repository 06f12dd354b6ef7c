"""What every command shares: exit codes, the one-line Failure, and a short-lived connection to rockerd."""

from __future__ import annotations

import argparse
import errno
import os
import sys
from collections.abc import Sequence

from .. import wire
from .loghint import with_hint

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs every start of the CLI (issue 21); annotations only
    from typing import Any

EXIT_OK = 0
EXIT_NO_SUCH_ROCKER = 1
EXIT_USAGE = 2
EXIT_ROCKER = 125
EXIT_CANNOT_RUN = 126
EXIT_NOT_FOUND = 127

LIST = "io.rocker.Rocker.List"
KILL = "io.rocker.Rocker.Kill"
KERNEL = "io.rocker.Rocker.Kernel"
GET_INFO = "org.varlink.service.GetInfo"
START_HINT = "start it with `systemctl start rockerd.socket` or `rockerd --socket {path}`"


class UsageError(Exception):
    def __init__(self, prog: str, message: str) -> None:
        super().__init__(message)
        self.prog = prog
        self.message = message



def client_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("rocker")
    except PackageNotFoundError:
        return "unknown"


# -- talking to rockerd -------------------------------------------------------------------------

class Failure(Exception):
    """A failure of rocker itself: one line for stderr and the exit code."""

    def __init__(self, message: str, code: int = EXIT_ROCKER) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


def socket_path(args: argparse.Namespace) -> str:
    return getattr(args, "socket", None) or wire.default_socket_path()


def unreachable(path: str, cause: BaseException | None, text: object = None) -> Failure:
    """Why connecting to rockerd failed, and what to do about it."""
    err = cause.errno if isinstance(cause, OSError) else None
    if err == errno.ENOENT:
        return Failure(f"rockerd is not running (no socket at {path}): {START_HINT.format(path=path)}")
    if err == errno.ECONNREFUSED:
        return Failure(f"rockerd is not running (nothing listens on {path}): {START_HINT.format(path=path)}")
    if err in (errno.EACCES, errno.EPERM):
        return Failure(f"permission denied on rockerd's socket {path}: run as root, or ask for access to "
                       "the socket (docs/operations.md)")
    why = os.strerror(err) if err else str(text or cause)
    return Failure(f"cannot connect to rockerd at {path}: {why}: check --socket and $ROCKER_SOCKET")


class Daemon:
    """A connection to rockerd for a few calls; every failure becomes a Failure."""

    def __init__(self, path: str) -> None:
        self.path = path
        try:
            self.conn = wire.Connection(path, timeout=30.0)
        except wire.ConnectFailed as e:
            raise unreachable(path, e.__cause__) from None

    def __enter__(self) -> Daemon:
        return self

    def __exit__(self, *_: object) -> None:
        self.conn.close()

    def call(self, method: str, parameters: dict[str, Any] | None = None) -> dict[str, Any]:
        try:
            reply, fds = self.conn.call(method, parameters)
        except wire.RemoteError:
            raise
        except wire.WireError as e:
            raise Failure(f"lost rockerd at {self.path} during {method.rsplit('.', 1)[-1]}: {e}: "
                          "check that it still runs (`rocker status`) and its log") from None
        for fd in fds:
            os.close(fd)
        return reply

    def rockers(self) -> list[dict[str, Any]]:
        try:
            reply = self.call(LIST)
        except wire.RemoteError as e:
            raise Failure(with_hint(f"rockerd could not list the rockers: {e}", self.path)) from None
        rockers = reply.get("rockers")
        if not isinstance(rockers, list) or not all(isinstance(r, dict) for r in rockers):
            raise Failure("rockerd sent a malformed List reply: is the client older than the daemon? "
                          "(`rocker status` shows both versions)")
        return sorted(rockers, key=lambda r: (r.get("created", 0), r.get("guard_pname", "")))


def find(rockers: list[dict[str, Any]], name: str) -> dict[str, Any]:
    for r in rockers:
        if r.get("guard_pname") == name:
            return r
    raise Failure(f"no live rocker is called {name!r}: `rocker ps` lists the live ones", EXIT_NO_SUCH_ROCKER)


# -- processes in a rocker ----------------------------------------------------------------------
def age(seconds: float) -> str:
    s = int(max(0.0, seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def table(header: Sequence[str], rows: list[Sequence[str]]) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=True)]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
             for row in (header, *rows)]
    return "\n".join(lines)



def say(message: str, prog: str = "rocker") -> None:
    print(f"{prog}: {message}", file=sys.stderr, flush=True)

