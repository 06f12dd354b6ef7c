"""`rocker exec`: another command in a live rocker, with the terminal, signals and exit status of a job."""

from __future__ import annotations

import argparse

from .._job import run_command
from ..enter import join_rocker
from ..errors import RockerErr
from ..structs import RockerResult
from .common import EXIT_NO_SUCH_ROCKER, Daemon, Failure, socket_path
from .environ import command_env
from .run import _run_failure, command_of, run_job


def _join_failure(res: RockerResult, name: str, path: str) -> Failure:
    cause = res.cause
    assert cause is not None
    if cause.kind == "NoSuchRocker":
        return Failure(f"no live rocker is called {name!r}: `rocker ps` lists the live ones", EXIT_NO_SUCH_ROCKER)
    if cause.kind == "PermissionDenied":
        return Failure(f"rockerd refused to let you join {name}: {cause.reason}: run `rocker exec` as that uid "
                       "or as root")
    if res.err_no == RockerErr.enter_rocker_failed and cause.kind == "gone":
        return Failure(f"{name} ended while CMD was being started: `rocker ps` lists the live rockers",
                       EXIT_NO_SUCH_ROCKER)
    return _run_failure(res.err_no, cause, path, {})


def cmd_exec(args: argparse.Namespace) -> int:
    cmd = command_of(args, "rocker exec", "rocker exec rk-0a1b2c3d -- sh")
    path = socket_path(args)
    with Daemon(path) as d:  # the exec dir, for PATH; a rocker List does not show us is Join's to refuse
        info = next((r for r in d.rockers() if r.get("guard_pname") == args.name), {})
    exec_dir = info.get("app_exec_dir")
    env = command_env(args, exec_dir if isinstance(exec_dir, str) else None, "rocker exec")
    return run_job(lambda launch: join_rocker(args.name, run_command, launch, socket=path), env, cmd, args.workdir,
                   lambda res: _join_failure(res, args.name, path), "rocker exec")
