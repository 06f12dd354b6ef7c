"""Ask rockerd for a rocker, enter it, and start the app as the caller's child.

    caller ── fork ──> intermediate (single-threaded): setns user, mnt, pid, net,
                       uts, ipc; become uid 0 inside; app capability set
                       (caps.py); no_new_privs
                       └─ clone(CLONE_PARENT) ──> app: PID n in the rocker,
                          child of the caller, so os.waitpid(app_pid) works

The intermediate exists because a threaded process cannot enter a user
namespace and a PID-namespace setns only applies to children.
"""

from __future__ import annotations

import errno
import os
import signal
import sys
import traceback
from collections.abc import Callable
from typing import Any

from . import wire
from ._sys import ns, proc
from .caps import APP_CAP_MASK
from .errors import RockerErr
from .structs import RockerRequest, RockerResult

CREATE = "io.rocker.Rocker.Create"
NS_ORDER = ("user", "mnt", "pid", "net", "uts", "ipc")  # user first: it owns the others
_GONE = (errno.ESRCH, errno.ENOMEM, errno.ENOENT)  # what a rocker whose guard just died looks like

App = Callable[[Any], "int | None"]


def enter_rocker(req: RockerRequest, app: App, app_args: Any = None) -> RockerResult:
    """Ask rockerd for a rocker, enter it and run `app(app_args)` in a new process inside.

    That process is the caller's child: `os.waitpid(res.app_pid, 0)` returns its
    status, and `app`'s int return value is its exit code. Failures come back as
    `res.err_no` (the seed's numbers) with a reason in `res.detail`; this never
    raises. The socket is `$ROCKER_SOCKET`, else `/run/rocker/rockerd.sock`.
    """
    if not callable(app):
        return RockerResult(RockerErr.param_invalid, detail="app must be callable")
    try:
        reply, fds = wire.call(wire.default_socket_path(), CREATE, req.to_params())
    except wire.RemoteError as e:
        return RockerResult(_remote_err(e.name), detail=_describe_remote(e))
    except wire.ConnectFailed as e:
        return RockerResult(RockerErr.server_unaddr_invalid, detail=str(e))
    except wire.SendFailed as e:
        return RockerResult(RockerErr.send_req_failed, detail=str(e))
    except wire.WireError as e:
        return RockerResult(RockerErr.recv_resp_failed, detail=str(e))
    try:
        guard_pid, name = int(reply["guard_pid"]), str(reply["guard_pname"])
        ns_fds = [fds[int(reply["namespaces"][n])] for n in NS_ORDER]
    except (KeyError, TypeError, ValueError, IndexError) as e:
        for fd in fds:
            os.close(fd)
        return RockerResult(RockerErr.recv_resp_failed, detail=f"malformed Create reply: {e!r}")
    try:
        err, app_pid, detail = _start_inside(ns_fds, app, app_args)
    finally:
        for fd in fds:
            os.close(fd)
    return RockerResult(err, app_pid, guard_pid, name, detail)


def _start_inside(ns_fds: list[int], app: App, app_args: Any) -> tuple[RockerErr, int, str]:
    r, w = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:
        os.close(r)
        _intermediate(ns_fds, w, app, app_args)
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
    kind, _, rest = report.decode(errors="replace").partition(" ")
    if kind == "ok":
        return RockerErr.success, int(rest), ""
    if kind == "app":
        return RockerErr.app_exec_failed, 0, rest
    return RockerErr.enter_rocker_failed, 0, rest or "the process entering the rocker died"


def _intermediate(ns_fds: list[int], w: int, app: App, app_args: Any) -> None:
    """Runs in the forked child; never returns."""
    stage = "setgroups"
    try:
        last_cap = proc.cap_last_cap()
        if os.geteuid() == 0:
            os.setgroups([])  # else the caller's groups would follow the app (they cannot be dropped later)
        for name, fd in zip(NS_ORDER, ns_fds, strict=True):
            stage = f"setns({name})"
            ns.setns(fd, 0, name)
        stage = "setresuid"
        os.setresgid(0, 0, 0)
        os.setresuid(0, 0, 0)
        stage = "limit capabilities"
        proc.limit_caps(APP_CAP_MASK, last_cap)
        proc.prctl(proc.PR_SET_NO_NEW_PRIVS, 1)
        stage = "clone app"
        app_pid = ns.clone(ns.CLONE_PARENT)
        if app_pid == 0:
            os.close(w)
            _run_app(app, app_args)
        os.write(w, f"ok {app_pid}".encode())
        os._exit(0)
    except OSError as e:
        gone = e.errno in _GONE
        kind = "app" if stage == "clone app" and not gone else "enter"
        why = " (the rocker is gone: its guard exited)" if gone else ""
        os.write(w, f"{kind} {stage}: {e.strerror}{why}".encode())
        os._exit(1)
    finally:
        os._exit(1)


def _run_app(app: App, app_args: Any) -> None:
    """The app process: run the callable, exit with its return value."""
    code = 1
    try:
        try:
            signal.set_wakeup_fd(-1)  # the caller's event loop must not hear the app's signals
        except ValueError:
            pass
        ret = app(app_args)
        code = ret if isinstance(ret, int) else 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:
        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        os._exit(code & 0xFF)


def _remote_err(name: str) -> RockerErr:
    short = name.rsplit(".", 1)[-1]
    if short in ("InvalidRequest", "PermissionDenied", "InvalidParameter", "ProtocolViolation"):
        return RockerErr.param_invalid
    if short in ("BuildFailed", "LimitReached"):
        return RockerErr.build_rocker_failed
    return RockerErr.unknown


def _describe_remote(e: wire.RemoteError) -> str:
    p = e.parameters or {}
    if "field" in p:
        return f"{p.get('field') or 'request'}: {p.get('reason', '')}"
    if "step" in p:
        return f"{p.get('step')}: {p.get('reason', '')}"
    return str(p.get("reason") or p.get("parameter") or e.name)
