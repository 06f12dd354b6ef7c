"""`rocker run`: a new rocker for one command, with the terminal, signals and exit status of a job."""

from __future__ import annotations

import argparse
import os
import pwd
from collections.abc import Callable

from .._job import Job, Launch, run_command
from ..enter import enter_rocker
from ..errors import RockerErr
from ..structs import OPTION_OF_FIELD, Cause, RockerResult, request_new
from .common import Failure, UsageError, socket_path, unreachable
from .environ import command_env
from .loghint import with_hint
from .pack import check_package

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs every start of the CLI (issue 21); annotations only
    from typing import Any

NOBODY = 65534  # the overflow uid/gid, when the user database has no "nobody"


def default_ids() -> tuple[int, int]:
    """The app's uid and gid when --uid/--gid are not given: the caller's, except that root's apps run
    as nobody (docs/security.md): a uid-0 app holds host root's DAC powers over every dir it is not
    overlaid on, which nobody should get by leaving out an option. `--uid 0` asks for it."""
    if os.geteuid() != 0:
        return os.getuid(), os.getgid()
    try:
        pw = pwd.getpwnam("nobody")
        return pw.pw_uid, pw.pw_gid
    except KeyError:
        return NOBODY, NOBODY


def default_dirs(pkg: str, uid: int | None = None, app_uid: int = 0) -> tuple[str, str]:
    """Exec dir and data dir named after the package file: root's under /run and /var/lib, else XDG.
    Root's data dir for an app of another uid is kept apart (uid-N/), so that the files a uid-0 run
    left behind are not in the way of an app that may not write over them."""
    stem = os.path.basename(pkg.rstrip("/")).removesuffix(".squashfs") or "app"
    uid = os.geteuid() if uid is None else uid
    if uid == 0:
        data = f"/var/lib/rocker/{stem}" if app_uid == 0 else f"/var/lib/rocker/uid-{app_uid}/{stem}"
        return f"/run/rocker/apps/{stem}", data
    runtime = os.environ.get("XDG_RUNTIME_DIR") or f"/run/user/{uid}"
    data = os.environ.get("XDG_DATA_HOME")
    if not data:
        home = os.path.expanduser("~")  # $HOME, else the passwd entry; "~" itself when neither exists
        if home == "~":
            raise Failure("cannot pick a default data dir: HOME is unset and uid "
                          f"{uid} has no home in the user database: pass --data-dir DIR (and --exec-dir DIR)")
        data = f"{home}/.local/share"
    return f"{runtime}/rocker/apps/{stem}", f"{data}/rocker/{stem}"


def _refusal(cause: Cause, params: dict[str, Any]) -> str:
    """A refusal about field 'app_overlay_dirs[1]' in the CLI's words: '--overlay /proc: reason'."""
    base, _, index = cause.field.partition("[")
    option = OPTION_OF_FIELD.get(base)
    if option is None:
        return str(cause)
    value = params.get(base)
    if isinstance(value, list):
        i = index.rstrip("]")
        value = value[int(i)] if i.isdigit() and int(i) < len(value) else None
    return f"{option} {value}: {cause.reason}" if value is not None else f"{option}: {cause.reason}"


def _run_failure(err: RockerErr, cause: Cause, path: str, params: dict[str, Any]) -> Failure:
    if err == RockerErr.server_unaddr_invalid:
        return unreachable(path, OSError(cause.errno, os.strerror(cause.errno)) if cause.errno else None, cause)
    if err == RockerErr.param_invalid:
        return Failure(f"rockerd refused the request: {_refusal(cause, params)}: fix that option "
                       "(see `rocker run --help`)")
    if err == RockerErr.build_rocker_failed:
        return Failure(with_hint(f"rockerd could not build the rocker: {cause}", path))
    if err in (RockerErr.send_req_failed, RockerErr.recv_resp_failed):
        return Failure(f"lost rockerd at {path}: {cause}: check that it still runs (`rocker status`)")
    if err == RockerErr.enter_rocker_failed:
        return Failure(f"could not enter the new rocker: {cause}: see docs/operations.md")
    if err == RockerErr.app_exec_failed:
        return Failure(f"could not start CMD in the rocker: {cause}")
    return Failure(with_hint(f"rockerd failed ({err.name}): {cause}", path))


def _prepare_own_dirs(dirs: list[tuple[str, str]]) -> None:
    """rockerd creates missing dirs for root only; a user's default dirs are made here."""
    for what, path in dirs:
        try:
            os.makedirs(path, mode=0o700 if what == "data" else 0o755, exist_ok=True)
        except OSError as e:
            raise Failure(f"cannot create the default {what} dir {path}: {e.strerror}: pick one with "
                          f"--{what}-dir") from None


FRONT_FAILURE = "ROCKER_FRONT_FAILURE"  # the C front's failed Create (clients/cli/main.c), to word here


def front_failure() -> RockerResult | None:
    """The result of the Create the C front made for this command, if it handed its failure over: it is
    worded here without asking rockerd again (one request per command: a second Create would log twice,
    repeat any side effect, and lose a signal held meanwhile). Taken out of the environment first thing;
    a malformed one is a Failure, never a reason to ask again."""
    text = os.environ.pop(FRONT_FAILURE, None)
    if text is None:
        return None
    import json  # here only: a failure's path (start time, issue 21)

    try:
        d = json.loads(text)
        keys = {"err_no": int, "kind": str, "reason": str, "field": str, "step": str, "errno": int}
        if type(d) is not dict or set(d) != set(keys) or any(type(d[k]) is not t for k, t in keys.items()):
            raise ValueError(f"not an object of {', '.join(keys)}")
        err = RockerErr(d["err_no"])
        if err == RockerErr.success or not d["kind"] or d["errno"] < 0:
            raise ValueError("not a failure")
    except ValueError as e:
        raise Failure(f"${FRONT_FAILURE} is malformed ({e}): it is set by the `rocker` front for rocker-py "
                      f"only: unset it") from None
    cause = Cause(d["kind"], d["reason"], field=d["field"], step=d["step"], errno=d["errno"])
    return RockerResult.failed(err, cause)


def cmd_run(args: argparse.Namespace) -> int:
    handed_over = front_failure()
    cmd = command_of(args, "rocker run", "rocker run --pkg PKG -- sh")
    pkg = args.pkg
    check_package(pkg)
    uid, gid = default_ids()
    uid = uid if args.uid is None else args.uid
    gid = gid if args.gid is None else args.gid
    if args.exec_dir and args.data_dir:
        exec_dir, data_dir = os.path.abspath(args.exec_dir), os.path.abspath(args.data_dir)
    else:
        default_exec, default_data = default_dirs(pkg, app_uid=uid)
        exec_dir = os.path.abspath(args.exec_dir or default_exec)
        data_dir = os.path.abspath(args.data_dir or default_data)
    if os.geteuid() != 0:
        _prepare_own_dirs([(what, d) for what, d, given in (("exec", exec_dir, args.exec_dir),
                                                             ("data", data_dir, args.data_dir)) if not given])

    req = request_new()
    req.app_id, req.uid, req.gid, req.seccomp = args.app_id, uid, gid, args.seccomp
    req.app_pkg_path = os.path.abspath(pkg)  # rockerd follows symlinks as the caller, where it opens it
    req.app_exec_dir, req.app_data_dir = exec_dir, data_dir
    req.app_overlay_dirs = [os.path.abspath(d) for d in args.overlay]
    req.network, req.publish = args.network, list(args.publish)
    req.memory_max, req.pids_max, req.cpu_max = args.memory, args.pids, args.cpus
    if args.pkg_sha256 is not None:
        req.app_pkg_sha256 = args.pkg_sha256.strip().lower()

    path = socket_path(args)
    return run_job(lambda launch: handed_over or enter_rocker(req, run_command, launch, socket=path),
                   command_env(args, exec_dir, "rocker run"), cmd, args.workdir,
                   lambda res: _run_failure(res.err_no, res.cause or Cause("?", "?"), path, req.to_params()))


def run_job(start: Callable[[Launch], RockerResult], env: dict[str, str], cmd: list[str], workdir: str | None,
            failure: Callable[[RockerResult], Failure], prog: str = "rocker run") -> int:
    """Start CMD in a rocker as a job of ours (run and exec alike) and wait for it: its exit status."""
    job = Job.prepare()
    try:
        res = start(job.launch(cmd, env, workdir, prog))
        if res.cause is not None:
            raise failure(res)
        job.started(res.app_pid)
        return job.wait()
    finally:
        job.close()


def command_of(args: argparse.Namespace, prog: str, example: str) -> list[str]:
    """CMD from the command line, without the `--` that may precede it."""
    cmd = list(args.cmd)
    if cmd[:1] == ["--"]:
        cmd = cmd[1:]
    if not cmd:
        raise UsageError(prog, f"no CMD given: put it after the options, e.g. `{example}`")
    return cmd
