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

Called as a function, an Exec execs the program: a caller may also run it as an
ordinary app callable.
"""

from __future__ import annotations

import ctypes
import errno
import os
import signal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ._native import Spec, SyscallFilter, library
from .errors import GONE_ERRNOS, RockerErr
from .reports import cause_of_report, failure_report
from .structs import Cause

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs every start of the CLI (issue 21); annotations only
    from typing import Any

__all__ = ["Exec"]

STACK_SIZE = 64 * 1024


@dataclass(frozen=True)
class Exec:
    """The app is the program at `path` inside the rocker (an absolute path, or relative to the
    rocker's `/`; not looked up in `$PATH`), run with `argv` (default: `[path]`) and `env`
    (default: the caller's environment when it is started), in the dir `cwd` inside the rocker
    (default: its `/`); `app_args` is not used. It inherits the caller's fds that are not
    close-on-exec, as a forked app would.

    `enter_rocker` starts it without forking the caller and reports a failed exec as
    `app_exec_failed` (with the reason) instead of an app that exits 1. Called as a function,
    it execs the program.
    """

    path: str
    argv: Sequence[str] | None = None
    env: Mapping[str, str] | None = None
    cwd: str | None = None

    def __post_init__(self) -> None:
        if self.cwd is not None and (not isinstance(self.cwd, str) or not self.cwd or "\0" in self.cwd):
            raise ValueError("Exec: cwd must be a non-empty string without NUL bytes")
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
        if self.cwd is not None:
            os.chdir(self.cwd)
        os.execve(self.path, self.args(), self.environ())  # raises on failure: the app exits 1


def _strings(items: Sequence[bytes]) -> ctypes.Array[ctypes.c_char_p]:
    return (ctypes.c_char_p * (len(items) + 1))(*items, None)


def start(ns_fds: list[int], app: Exec, cgroup_fds: list[int] | None = None,
          syscall_filter: SyscallFilter | None = None) -> tuple[RockerErr, int, Cause | None]:
    """Start `app` in the rocker whose namespace fds (user, mnt, pid, net, uts, ipc) and
    cgroup.procs fds are given, with `syscall_filter` installed last in its join:
    (err, app_pid, cause); NativeMissing without librocker-exec.

    Root joins the PID namespace itself and comes back; anyone else, or root where that join is
    not allowed here (e.g. EPERM in a container), goes through an intermediate."""
    fn = library().rocker_exec  # first: NativeMissing before anything is opened
    if os.geteuid() == 0:
        try:
            own = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            own = -1
        if own >= 0:
            started = _start(fn, ns_fds, app, own, cgroup_fds or [], syscall_filter)
            if started is not None:
                return started
    started = _start(fn, ns_fds, app, -1, cgroup_fds or [], syscall_filter)
    assert started is not None
    return started


def _start(fn: Any, ns_fds: list[int], app: Exec, own: int, cgroup_fds: list[int],
           syscall_filter: SyscallFilter | None) -> tuple[RockerErr, int, Cause | None] | None:
    """One try; None when a root caller could not join the PID namespace and should use an intermediate.
    Closes `own`."""
    argv = _strings([os.fsencode(a) for a in app.args()])
    envp = _strings([os.fsencode(k) + b"=" + os.fsencode(v) for k, v in app.environ().items()])
    stack = ctypes.create_string_buffer(STACK_SIZE)
    r, w = os.pipe2(os.O_CLOEXEC)
    spec = Spec((ctypes.c_int * 6)(*ns_fds), own, w, os.fsencode(app.path), argv, envp, ctypes.addressof(stack),
                STACK_SIZE, filter=syscall_filter.address if syscall_filter else None,
                cwd=None if app.cwd is None else os.fsencode(app.cwd))
    spec.set_cgroups(cgroup_fds)
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
    return _outcome(rc, pid.value, report, app, own)


def _outcome(rc: int, pid: int, report: bytes, app: Exec, own: int) -> tuple[RockerErr, int, Cause | None] | None:
    if rc == -errno.EREMCHG:  # started, but this thread's children would go to the rocker: stop it
        if pid > 0:
            _kill_and_reap(pid)
        return RockerErr.enter_rocker_failed, 0, Cause("enter", "cannot go back to the caller's PID namespace",
                                                       step="setns(pid)", errno=errno.EREMCHG)
    if rc < 0:  # nothing was started: joining the PID namespace or the clone failed here
        report = failure_report(-rc, "setns(pid)" if own >= 0 else "clone")
        if own >= 0 and -rc not in GONE_ERRNOS:
            return None
    elif not report:
        return RockerErr.success, pid, None
    elif pid > 0:
        os.waitpid(pid, 0)  # the app exited after its report (-1: an intermediate failed, already reaped)
    cause = cause_of_report(report)
    if cause.step in ("exec", "chdir"):
        cause = Cause("app", cause.reason, step=f"{cause.step} {app.path if cause.step == 'exec' else app.cwd}",
                      errno=cause.errno)
    return (RockerErr.app_exec_failed if cause.kind == "app" else RockerErr.enter_rocker_failed), 0, cause


def _kill_and_reap(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    except (ProcessLookupError, ChildProcessError):
        pass
