"""`rocker`: run a command in a new rocker.

Exit status is the command's (128+N when killed by signal N); rocker's own
failures use 125 (could not get or enter a rocker), 126 (command found but
not runnable) and 127 (command not found), as env(1) and container tools do.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

from . import enter_rocker, request_new
from .errors import RockerErr

EXIT_ROCKER = 125
EXIT_CANNOT_RUN = 126
EXIT_NOT_FOUND = 127
FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2,
             signal.SIGWINCH, signal.SIGCONT)


def default_dirs(pkg: str) -> tuple[str, str]:
    """Exec dir and data dir named after the package file, root's under /run and /var/lib."""
    stem = Path(pkg).name.removesuffix(".squashfs") or "app"
    if os.geteuid() == 0:
        return f"/run/rocker/apps/{stem}", f"/var/lib/rocker/{stem}"
    runtime = os.environ.get("XDG_RUNTIME_DIR", f"/run/user/{os.getuid()}")
    data = os.environ.get("XDG_DATA_HOME", str(Path.home() / ".local/share"))
    return f"{runtime}/rocker/apps/{stem}", f"{data}/rocker/{stem}"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rocker", description="Run apps from squashfs packages in rockers.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = sub.add_parser("run", help="run a command in a new rocker",
                         description="Build a rocker for the package and run CMD in it. Writes the command makes "
                                     "to overlaid dirs land in the data dir.")
    run.add_argument("--pkg", required=True, help="the app's squashfs package")
    run.add_argument("--exec-dir", help="where the package is mounted (default: /run/rocker/apps/NAME for root)")
    run.add_argument("--data-dir", help="where the app's writes land (default: /var/lib/rocker/NAME for root)")
    run.add_argument("--overlay", action="append", default=[], metavar="DIR",
                     help="host dir to overlay copy-on-write (repeatable, at most 16)")
    run.add_argument("--uid", type=int, default=os.getuid(), help="uid of the app (default: yours)")
    run.add_argument("--gid", type=int, default=os.getgid(), help="gid of the app (default: yours)")
    run.add_argument("--app-id", type=int, default=0)
    run.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD [ARGS]")
    return p


def _exec(argv: list[str]) -> int:
    try:
        os.execvp(argv[0], argv)
    except FileNotFoundError:
        print(f"rocker: {argv[0]}: command not found in the rocker", file=sys.stderr)
        return EXIT_NOT_FOUND
    except OSError as e:
        print(f"rocker: {argv[0]}: {e.strerror}", file=sys.stderr)
        return EXIT_CANNOT_RUN


def run(args: argparse.Namespace) -> int:
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        print("rocker run: no command given: rocker run --pkg PKG -- CMD [ARGS]", file=sys.stderr)
        return 2
    exec_dir, data_dir = default_dirs(args.pkg)
    req = request_new()
    req.app_id, req.uid, req.gid = args.app_id, args.uid, args.gid
    req.app_pkg_path = os.path.abspath(args.pkg)
    req.app_exec_dir = args.exec_dir or exec_dir
    req.app_data_dir = args.data_dir or data_dir
    req.app_overlay_dirs = args.overlay
    res = enter_rocker(req, _exec, cmd)
    if res.err_no != RockerErr.success:
        print(f"rocker: {res.err_no.name}: {res.detail}", file=sys.stderr)
        return EXIT_ROCKER
    for sig in FORWARDED:
        signal.signal(sig, lambda s, _f: os.kill(res.app_pid, s))
    _, status = os.waitpid(res.app_pid, 0)
    return os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "run":
        return run(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
