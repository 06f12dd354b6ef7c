"""An app that is a program: started in its rocker without a fork of the caller.

`enter_rocker(req, app)` runs a callable in a fork of the caller. When the app
is a program, `Exec(path, argv, env)` says so, and the caller then starts it the
way posix_spawn would (librocker-exec, see rocker_client/_native): a root
caller's thread joins the rocker's PID namespace for its children only, a
CLONE_VM child joins the other five namespaces, takes the app's credentials and
execs, and the thread goes back to its own PID namespace; any other caller's
CLONE_VM child is an intermediate that joins all six and clones the app as the
caller's child. A fork of a 20 MB Python launcher and the teardown of that copy
at the exec are most of the time between rockerd's reply and the app's main();
this path has neither.

Where the library is not built, an Exec is an ordinary app callable: the forked
child execs the program.
"""

from __future__ import annotations

import ctypes
import errno
import os
import signal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ._native import Spec, library
from ._sys import proc
from .caps import APP_CAP_MASK
from .errors import GONE_ERRNOS, GONE_WHY, RockerErr

__all__ = ["Exec"]

STACK_SIZE = 64 * 1024


@dataclass(frozen=True)
class Exec:
    """The app is the program at `path` inside the rocker (an absolute path, or relative to the
    rocker's `/`; not looked up in `$PATH`), run with `argv` (default: `[path]`) and `env`
    (default: the caller's environment when it is started); `app_args` is not used. It inherits
    the caller's fds that are not close-on-exec, as a forked app would.

    `enter_rocker` starts it without forking the caller and reports a failed exec as
    `app_exec_failed` (with the reason) instead of an app that exits 1. Called as a function,
    it execs the program: that is what the fork path does with it (where librocker-exec is
    not built).
    """

    path: str
    argv: Sequence[str] | None = None
    env: Mapping[str, str] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.path, str) or not self.path or "\0" in self.path:
            raise ValueError("Exec: path must be a non-empty string without NUL bytes")
        if self.argv is not None:
            if isinstance(self.argv, str | bytes) or not all(isinstance(a, str) and "\0" not in a for a in self.argv):
                raise ValueError("Exec: argv must be a sequence of strings without NUL bytes")
            object.__setattr__(self, "argv", tuple(self.argv))
        if self.env is not None:
            for k, v in self.env.items():
                if not isinstance(k, str) or not isinstance(v, str) or not k or "=" in k or "\0" in k + v:
                    raise ValueError(f"Exec: bad environment entry {k!r}: names are non-empty, without '=', "
                                     "and neither side has NUL bytes")
            object.__setattr__(self, "env", dict(self.env))

    def args(self) -> list[str]:
        """The argv the program gets."""
        return list(self.argv) if self.argv is not None else [self.path]

    def environ(self) -> Mapping[str, str]:
        """The environment the program gets: `env`, else the caller's at this moment."""
        return self.env if self.env is not None else os.environ

    def __call__(self, _app_args: Any = None) -> int:
        os.execve(self.path, self.args(), self.environ())  # raises on failure: the app exits 1


def _rocker_exec() -> Any:
    lib = library()
    return None if lib is None else lib.rocker_exec


def available() -> bool:
    """Whether this process can start an Exec app without forking itself."""
    return _rocker_exec() is not None


def _strings(items: Sequence[bytes]) -> ctypes.Array[ctypes.c_char_p]:
    return (ctypes.c_char_p * (len(items) + 1))(*items, None)


def start(ns_fds: list[int], app: Exec) -> tuple[RockerErr, int, str] | None:
    """Start `app` in the rocker whose namespace fds (user, mnt, pid, net, uts, ipc) are given.

    (err, app_pid, detail), or None when this path is not open here and the caller should fork."""
    fn = _rocker_exec()
    if fn is None:
        return None
    try:
        last_cap = proc.cap_last_cap()
        # root joins the PID namespace itself and comes back; anyone else goes through an intermediate
        own = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC) if os.geteuid() == 0 else -1
    except OSError:
        return None
    argv = _strings([os.fsencode(a) for a in app.args()])
    envp = _strings([os.fsencode(k) + b"=" + os.fsencode(v) for k, v in app.environ().items()])
    stack = ctypes.create_string_buffer(STACK_SIZE)
    r, w = os.pipe2(os.O_CLOEXEC)
    spec = Spec((ctypes.c_int * 6)(*ns_fds), own, w, last_cap, APP_CAP_MASK, os.fsencode(app.path), argv, envp,
                ctypes.addressof(stack), STACK_SIZE)
    pid = ctypes.c_int(-1)
    try:
        rc = fn(ctypes.byref(spec), ctypes.byref(pid))  # returns once the child has exec'd or exited
    finally:
        os.close(w)
        if own >= 0:
            os.close(own)
    try:
        os.set_blocking(r, False)  # a thread of ours that forked meanwhile may hold a copy of w
        report = os.read(r, 4096)
    except BlockingIOError:
        report = b""
    finally:
        os.close(r)
    return _outcome(rc, pid.value, report, app)


def _outcome(rc: int, pid: int, report: bytes, app: Exec) -> tuple[RockerErr, int, str] | None:
    if rc == -errno.EREMCHG:  # started, but this thread's children would go to the rocker: stop it
        if pid > 0:
            _kill_and_reap(pid)
        return RockerErr.enter_rocker_failed, 0, "setns(pid): cannot go back to the caller's PID namespace"
    if rc < 0:
        err = -rc
        if err in GONE_ERRNOS:
            return RockerErr.enter_rocker_failed, 0, f"setns(pid): {os.strerror(err)}{GONE_WHY}"
        return None  # e.g. EPERM joining the PID namespace, EAGAIN cloning: the fork path says what it is
    if not report:
        return RockerErr.success, pid, ""
    if pid > 0:
        os.waitpid(pid, 0)  # the app exited after its report (-1: an intermediate failed, already reaped)
    head, _, stage = report.decode(errors="replace").partition(" ")
    err = int(head) if head.isdigit() else errno.EIO
    if stage == "exec":
        return RockerErr.app_exec_failed, 0, f"exec {app.path}: {os.strerror(err)}"
    gone = err in GONE_ERRNOS
    return RockerErr.enter_rocker_failed, 0, f"{stage}: {os.strerror(err)}{GONE_WHY if gone else ''}"


def _kill_and_reap(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    except (ProcessLookupError, ChildProcessError):
        pass
