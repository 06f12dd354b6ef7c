"""Ask rockerd for a rocker, enter it, and start the app as the caller's child.

A root, single-threaded caller (an app store's launcher, a CI runner) takes one fork:

    caller: setns pid (applies to its children only) ── fork ──> app: PID n in the rocker
    caller: setns back to its own PID namespace              setns user, mnt, net, uts, ipc;
                                                             become uid 0 inside; app
                                                             capability set; no_new_privs;
                                                             run the app

Everyone else (a non-root caller cannot join a PID namespace before it holds the
rocker's user namespace; in a threaded caller a signal taken by another thread
could run its Python handler in this one, and fork, while this thread's children
go to the rocker) goes through an intermediate:

    caller ── fork ──> intermediate (single-threaded): setns user, mnt, pid, net,
                       uts, ipc; uid 0 inside; capabilities; no_new_privs
                       └─ clone(CLONE_PARENT) ──> app: PID n in the rocker,
                          child of the caller, so os.waitpid(app_pid) works

A threaded process cannot enter a user namespace and a PID-namespace setns
only applies to children, hence the intermediate. Each fork of a Python
caller copies its page tables (about 1 ms for 20 MB), so one fork instead of
two is most of the difference.

An app that is a program (`Exec`) needs no fork of the caller at all, root or
not, threaded or not: librocker-exec starts it (see execapp.py). A callable's
forked child joins in one call of that library's rocker_join. The join itself
(setgroups, setns, ids, capabilities, no_new_privs) is rocker-join.c's, the
same code the C client runs; every process that joins reports a failure as
"E<errno> <step>" (errors.parse_report), an intermediate its app as "P<pid>".
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Callable, Mapping
from dataclasses import replace

from rocker_sys import ns

from . import execapp, wire
from ._native import JoinFailed, NativeMissing, SyscallFilter, prepare_join, read_filter
from .errors import RockerErr
from .execapp import Exec
from .reports import cause_of_report, failure_report
from .structs import Cause, RockerRequest, RockerResult

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs every start of the CLI (issue 21); annotations only
    from typing import Any
    App = Callable[[Any], "int | None"]
    Join = Callable[[bool], None]  # the native join, made before the fork; its argument: join the PID namespace too
    Started = tuple[RockerErr, int, "Cause | None"]

CREATE = "io.rocker.Rocker.Create"
JOIN = "io.rocker.Rocker.Join"
NS_ORDER = ("user", "mnt", "pid", "net", "uts", "ipc")  # user first: it owns the others


def enter_rocker(req: RockerRequest, app: App, app_args: Any = None, *, socket: str | None = None,
                 cwd: str | None = None, env: Mapping[str, str] | None = None) -> RockerResult:
    """Ask rockerd for a rocker, enter it and run `app(app_args)` in a new process inside.

    That process is the caller's child: `os.waitpid(res.app_pid, 0)` returns its
    status, and `app`'s int return value is its exit code. It starts in the dir `cwd`
    inside the rocker (default: the rocker's `/`) with `env` as its whole environment
    (default: the caller's); for an `Exec` app these fill in the Exec's own `cwd` and
    `env` where it has none. A `cwd` that does not exist inside is `app_exec_failed`
    (step "chdir DIR"). Failures come back as `res.err_no` (the seed's numbers) with
    the reason in `res.cause` (and as text in `res.detail`); this never raises. The
    socket is `socket`, else `$ROCKER_SOCKET`, else `/run/rocker/rockerd.sock`.
    """
    return _enter(CREATE, lambda: req.to_params(), app, app_args, socket, cwd, env)


def join_rocker(guard_pname: str, app: App, app_args: Any = None, *, socket: str | None = None,
                cwd: str | None = None, env: Mapping[str, str] | None = None) -> RockerResult:
    """Run `app(app_args)` in a new process inside the live rocker `guard_pname` (`rocker exec`).

    The same as `enter_rocker` once rockerd has answered: the process joins the
    rocker's namespaces as its first app did (same PID namespace, same mounts, same
    ids and capabilities) and is the caller's child. Only root and the uid the
    rocker runs as may join it (PermissionDenied: `err_no` param_invalid); a rocker
    that has ended is NoSuchRocker (`err_no` enter_rocker_failed, `cause.kind`
    "NoSuchRocker"). This never raises.
    """
    if not isinstance(guard_pname, str):
        return RockerResult.failed(RockerErr.param_invalid, Cause("guard_pname", "guard_pname must be a string"))
    return _enter(JOIN, lambda: {"guard_pname": guard_pname}, app, app_args, socket, cwd, env)


def _enter(method: str, params: Callable[[], dict[str, Any]], app: App, app_args: Any,
           socket: str | None, cwd: str | None, env: Mapping[str, str] | None) -> RockerResult:
    """Create or Join, then start the app inside with the fds the reply brought."""
    if not callable(app):
        return RockerResult.failed(RockerErr.param_invalid, Cause("app", "app must be callable"))
    try:
        app = _with_place(app, cwd, env)
    except ValueError as e:
        return RockerResult.failed(RockerErr.param_invalid, Cause("app", str(e)))
    try:
        reply, fds = wire.call(socket or wire.default_socket_path(), method, params())
    except wire.WireError as e:
        return RockerResult.failed(*wire_failure(e))
    try:
        guard_pid, name = int(reply["guard_pid"]), str(reply["guard_pname"])
        ns_fds = [_ns_fd(fds, reply["namespaces"], n) for n in NS_ORDER]
        cgroup_fds = [fds[int(i)] for i in reply.get("cgroups") or []]  # the app joins them (rocker-join.h)
        seccomp = reply.get("seccomp")  # absent or null: the unconfined profile
        syscall_filter = None
        if seccomp is not None:  # read now, and closed: the app must not inherit it
            syscall_filter = read_filter(fds[int(seccomp)])
            os.close(fds.pop(int(seccomp)))
    except (KeyError, TypeError, ValueError, IndexError, OSError) as e:
        for fd in fds:
            os.close(fd)
        what = method.rpartition(".")[2]
        return RockerResult.failed(RockerErr.recv_resp_failed, Cause("receive", f"malformed {what} reply: {e!r}"))
    try:
        err, app_pid, cause = _start_inside(ns_fds, app, app_args, cgroup_fds, syscall_filter)
    except NativeMissing as e:
        err, app_pid, cause = RockerErr.sys, 0, Cause("enter", str(e))
    finally:
        for fd in fds:
            os.close(fd)
    if cause is not None:
        return RockerResult.failed(err, cause, guard_pid, name)
    return RockerResult(err, app_pid, guard_pid, name)


class _Placed:
    """A callable app with the dir and environment it starts with (applied in its own process)."""

    def __init__(self, app: App, cwd: str | None, env: Mapping[str, str] | None) -> None:
        self.app, self.cwd, self.env = app, cwd, env

    def __call__(self, app_args: Any) -> int | None:
        return self.app(app_args)


def _with_place(app: App, cwd: str | None, env: Mapping[str, str] | None) -> App:
    if cwd is None and env is None:
        return app
    if isinstance(app, Exec):  # the Exec's own settings win; the native start applies them
        return replace(app, cwd=app.cwd if app.cwd is not None else cwd, env=app.env if app.env is not None else env)
    if cwd is not None and (not isinstance(cwd, str) or not cwd or "\0" in cwd):
        raise ValueError("cwd must be a non-empty string without NUL bytes")
    if env is not None:
        env = dict(env)
        if not all(isinstance(k, str) and isinstance(v, str) and k and "=" not in k and "\0" not in k + v
                   for k, v in env.items()):
            raise ValueError("env: names are non-empty strings without '=', values strings, neither with NUL")
    return _Placed(app, cwd, env)


def _ns_fd(fds: list[int], namespaces: dict[str, Any], name: str) -> int:
    """The fd of a namespace in the reply; -1 for a net namespace it leaves out (network "host")."""
    if name == "net" and namespaces.get("net") is None:
        return -1
    return fds[int(namespaces[name])]


def _start_inside(ns_fds: list[int], app: App, app_args: Any, cgroup_fds: list[int] | None = None,
                  syscall_filter: SyscallFilter | None = None) -> Started:
    if isinstance(app, Exec):
        return execapp.start(ns_fds, app, cgroup_fds, syscall_filter)  # no fork of ours at all
    join = prepare_join(ns_fds, cgroup_fds, syscall_filter)  # here once, not in every fork of ours
    ns_fds = ns_fds + (cgroup_fds or [])  # the app closes all of them before it runs
    if os.geteuid() == 0 and _single_threaded():
        started = _start_direct(ns_fds, join, app, app_args)
        if started is not None:
            return started
    return _start_via_intermediate(ns_fds, join, app, app_args)


def _single_threaded() -> bool:
    """Threads the kernel knows of (threading.active_count() misses those started from C)."""
    try:
        with open("/proc/self/stat", "rb") as f:
            return f.read().rpartition(b")")[2].split()[17] == b"1"  # field 20: num_threads
    except (OSError, IndexError):
        return False


_ALL_SIGNALS = signal.valid_signals()


def _start_direct(ns_fds: list[int], join: Join, app: App, app_args: Any) -> Started | None:
    """The one-fork path; None when this caller cannot join the PID namespace itself."""
    try:
        own = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    # No Python signal handler may run (and fork) while our children go to the rocker.
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, _ALL_SIGNALS)
    try:
        try:
            ns.setns(ns_fds[NS_ORDER.index("pid")], ns.CLONE_NEWPID, "pid")
        except OSError as e:
            cause = cause_of_report(failure_report(e.errno or 0, "setns(pid)"))
            if cause.kind == "gone":
                return RockerErr.enter_rocker_failed, 0, cause
            return None  # e.g. EPERM without CAP_SYS_ADMIN here: take the intermediate
        r, w = os.pipe2(os.O_CLOEXEC)
        pid = -1
        try:
            _flush_std_streams()
            pid = os.fork()
        except OSError as e:
            os.close(r)
            os.close(w)
            return _outcome(failure_report(e.errno or 0, "fork app"))
        finally:
            if pid != 0:  # not in the child: it could not go back, and need not
                ns.setns(own, ns.CLONE_NEWPID, "pid (back to our own)")
        if pid == 0:
            os.close(r)
            os.close(own)
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
            _become_app(ns_fds, join, w, app, app_args)
        os.close(w)
    finally:
        os.close(own)
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
    report = _read_to_eof(r)  # the app closes its end right before it runs
    if not report:
        return RockerErr.success, pid, None
    os.waitpid(pid, 0)
    return _outcome(report)


def _start_via_intermediate(ns_fds: list[int], join: Join, app: App, app_args: Any) -> Started:
    r, w = os.pipe2(os.O_CLOEXEC)
    _flush_std_streams()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        _intermediate(ns_fds, join, w, app, app_args)
    os.close(w)
    # Not read-to-EOF: in a threaded caller, apps forked meanwhile by other threads hold
    # copies of `w`. The intermediate writes its one report (< PIPE_BUF) before it exits.
    os.waitpid(pid, 0)
    os.set_blocking(r, False)
    try:
        report = os.read(r, 4096)
    except BlockingIOError:
        report = b""
    finally:
        os.close(r)
    if report[:1] == b"P" and report[1:].isdigit():
        return RockerErr.success, int(report[1:]), None
    return _outcome(report)


def _outcome(report: bytes) -> Started:
    """A child's "E<errno> <step>" (or nothing: it died) as the seed's number and a cause."""
    cause = cause_of_report(report)
    return (RockerErr.app_exec_failed if cause.kind == "app" else RockerErr.enter_rocker_failed), 0, cause


def _read_to_eof(fd: int) -> bytes:
    chunks = []
    try:
        while chunk := os.read(fd, 4096):
            chunks.append(chunk)
    finally:
        os.close(fd)
    return b"".join(chunks)


def _flush_std_streams() -> None:
    """Empty the caller's stdio buffers before a fork (as multiprocessing does): the app flushes
    its copies when it exits, and must not print what the caller had buffered a second time."""
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):
            pass  # closed or broken: nothing the child could print either


def _become_app(ns_fds: list[int], join: Join, w: int, app: App, app_args: Any) -> None:
    """The one-fork path's child (the caller joined the PID namespace for it): join the rest,
    then run the app; never returns."""
    try:
        _join_or_exit(join, w, with_pid=False)
        _take_place(app, w, in_pid_ns=True)
        _app_main(ns_fds, w, app, app_args)
    finally:
        os._exit(1)


def _intermediate(ns_fds: list[int], join: Join, w: int, app: App, app_args: Any) -> None:
    """Runs in the forked child; never returns."""
    try:
        _join_or_exit(join, w, with_pid=True)
        _take_place(app, w, in_pid_ns=False)  # the app inherits both
        try:
            app_pid = ns.clone(ns.CLONE_PARENT)
        except OSError as e:
            os.write(w, failure_report(e.errno or 0, "clone app"))
            os._exit(1)
        if app_pid == 0:
            _app_main(ns_fds, w, app, app_args)
        os.write(w, b"P%d" % app_pid)
        os._exit(0)
    finally:
        os._exit(1)


def _join_or_exit(join: Join, w: int, *, with_pid: bool) -> None:
    try:
        join(with_pid)
    except JoinFailed as f:
        os.write(w, failure_report(f.errno, f.step))
        os._exit(1)


def _take_place(app: App, w: int, *, in_pid_ns: bool) -> None:
    """In the rocker, before the app runs: its cwd (a failure is reported like a failed exec) and env.

    An intermediate is not in the rocker's PID namespace: when it fails here, a child of it enters
    and leaves, so the guard sees an app come and go and ends the rocker now, not at its timeout."""
    if not isinstance(app, _Placed):
        return
    if app.cwd is not None:
        try:
            os.chdir(app.cwd)
        except OSError as e:
            if not in_pid_ns:
                with contextlib.suppress(OSError):
                    pid = ns.clone(0)
                    if pid == 0:
                        os._exit(127)
                    os.waitpid(pid, 0)
            os.write(w, failure_report(e.errno or 0, "chdir", app.cwd))
            os._exit(127)
    if app.env is not None:
        os.environ.clear()
        os.environ.update(app.env)


def _app_main(ns_fds: list[int], w: int, app: App, app_args: Any) -> None:
    """The app does not keep the rocker's namespace fds (they would keep it alive from inside);
    closing `w` tells the launcher it is in."""
    for fd in ns_fds:
        if fd >= 0:
            os.close(fd)
    os.close(w)
    _run_app(app, app_args)


def _nudge_guard() -> None:
    """Any signal wakes the guard (PID 1 here; it ignores what it gets from inside), and a woken
    guard finds us and watches our pidfd: it then ends the rocker as soon as we exit, instead
    of noticing at its next poll, up to 20 ms later."""
    try:
        os.kill(1, signal.SIGCHLD)
    except OSError:
        pass


def _run_app(app: App, app_args: Any) -> None:
    """The app process: run the callable, exit with its return value."""
    code = 1
    try:
        try:
            signal.set_wakeup_fd(-1)  # the caller's event loop must not hear the app's signals
        except ValueError:
            pass
        _nudge_guard()
        ret = app(app_args)
        code = ret if isinstance(ret, int) else 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:
        import traceback  # here only: the CLI's start time (issue 21)

        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        os._exit(code & 0xFF)


_ERR_OF_REMOTE = {"InvalidRequest": RockerErr.param_invalid, "PermissionDenied": RockerErr.param_invalid,
                  "InvalidParameter": RockerErr.param_invalid, "ProtocolViolation": RockerErr.param_invalid,
                  "BuildFailed": RockerErr.build_rocker_failed, "LimitReached": RockerErr.build_rocker_failed,
                  "NoSuchRocker": RockerErr.enter_rocker_failed}


def wire_failure(e: wire.WireError) -> tuple[RockerErr, Cause]:
    """The seed's number and the structured cause of a failed call."""
    if isinstance(e, wire.RemoteError):
        kind = e.name.rsplit(".", 1)[-1]
        p = e.parameters or {}
        reason = str(p.get("reason") or p.get("parameter") or e.name)
        if kind == "NoSuchRocker":
            reason = f"no live rocker is called {p.get('guard_pname')!r}"
        code = p.get("errno")
        cause = Cause(kind, reason, field=str(p.get("field") or ("request" if "field" in p else "")),
                      step=str(p.get("step") or ""), errno=code if type(code) is int else 0)
        return _ERR_OF_REMOTE.get(kind, RockerErr.unknown), cause
    errnum = e.__cause__.errno if isinstance(e.__cause__, OSError) and e.__cause__.errno else 0
    if isinstance(e, wire.ConnectFailed):
        return RockerErr.server_unaddr_invalid, Cause("connect", str(e), errno=errnum)
    if isinstance(e, wire.SendFailed):
        return RockerErr.send_req_failed, Cause("send", str(e), errno=errnum)
    return RockerErr.recv_resp_failed, Cause("receive", str(e), errno=errnum)
