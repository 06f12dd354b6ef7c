"""`rocker`: run a command in a new rocker, list, inspect and kill rockers, check on rockerd.

Every command's help (``rocker COMMAND --help``) is built from the ``PAGES``
below, and so is the command-line part of docs/api.md (scripts/gen_docs.py).
Errors are one line on stderr that names the problem and the fix; the exit
codes are the EXIT_* constants, the same for every command.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import signal
import sys
import textwrap
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from . import wire
from ._job import Job, run_command
from .enter import enter_rocker
from .errors import RockerErr
from .guardname import get_guardname
from .structs import MAX_OVERLAY_DIRS, OPTION_OF_FIELD, Cause, request_new

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


# -- the manual ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Page:
    """One command's manual page; argparse renders it for --help, gen_docs.py as Markdown."""

    name: str
    summary: str
    synopsis: str
    description: str
    sections: tuple[tuple[str, str], ...] = ()  # (title, preformatted text) after the options
    examples: tuple[tuple[str, str], ...] = ()  # (what it does, command line)
    exit_status: tuple[tuple[str, str], ...] = ()


EXIT_STATUS_ROCKER = ("125", "rocker failed: rockerd is unreachable, or it answered with an error")
EXIT_STATUS_USAGE = ("2", "usage error: an unknown option, a missing or malformed argument")

PAGES: dict[str, Page] = {p.name: p for p in (
    Page(
        name="rocker",
        summary="run apps from squashfs packages in sandboxes built by rockerd",
        synopsis="rocker [--socket PATH] COMMAND [OPTIONS] [ARGS]",
        description="""\
rocker runs apps shipped as one read-only squashfs package in sandboxes of
their own, called rockers. The rockerd daemon builds each rocker: a guard
process that is PID 1 of new user, mount, PID, UTS, IPC and network
namespaces, with the package mounted read-only at the app's exec dir,
copy-on-write overlays over the host dirs you name (writes land in the app's
data dir, never on the host), a fresh /proc, only lo for network, and root
inside mapped to one uid outside. rocker talks to rockerd over a unix socket.""",
        sections=(
            ("commands", """\
  run       run a command in a new rocker
  ps        list the live rockers
  inspect   print one live rocker as JSON
  kill      signal a rocker's guard (ends the rocker)
  status    show whether rockerd is up, its version and how many rockers live

Run `rocker COMMAND --help` for a command's options."""),
            ("environment", """\
  ROCKER_SOCKET   rockerd's socket when --socket is not given
                  (default /run/rocker/rockerd.sock)"""),
        ),
        examples=(
            ("is rockerd up?", "rocker status"),
            ("run the package's bin/hello in a new rocker", "rocker run --pkg hello.squashfs -- hello"),
            ("talk to a daemon on another socket", "rocker --socket /tmp/rockerd.sock ps"),
        ),
        exit_status=(
            ("0", "success"),
            ("1", "no live rocker has that name (inspect, kill)"),
            EXIT_STATUS_USAGE,
            ("125", "rocker failed: rockerd is unreachable, the package is missing, or rockerd refused "
                    "or could not build the rocker"),
            ("126", "run: CMD was found in the rocker but could not be executed"),
            ("127", "run: CMD was not found in the rocker"),
            ("128+N", "run: CMD was killed by signal N"),
            ("other", "run: CMD's own exit status"),
        ),
    ),
    Page(
        name="run",
        summary="run a command in a new rocker",
        synopsis="rocker run --pkg PKG [OPTIONS] [--] CMD [ARG...]",
        description="""\
Ask rockerd for a new rocker built from the package PKG and run CMD in it.
CMD is a child of `rocker run` with your environment, stdin, stdout, stderr
and terminal, so an interactive shell inside works. It runs as root inside
the rocker, which is --uid/--gid outside, with a reduced capability set.

The package is mounted read-only at the exec dir, and its bin/ comes first
on CMD's PATH. Each --overlay DIR puts a copy-on-write layer over the host's
DIR: what CMD writes there lands in DATA_DIR/upper/DIR, never on the host.
The rest of the file system is the host's, with the host's permissions for
the app's uid. CMD starts in the current directory (else in /) unless
--workdir says otherwise.

Signals sent to `rocker run` are passed on to CMD. Started from an
interactive shell, CMD gets the terminal while it runs, so ^C, ^Z and ^\\
go to CMD and `fg`/`bg` work as usual. `rocker run` exits when CMD does;
the rocker ends as soon as nothing runs in it any more (processes CMD left
behind keep it alive: end them with `rocker kill`).""",
        sections=(
            ("default dirs", """\
  NAME is PKG's file name without .squashfs.
  as root     exec dir /run/rocker/apps/NAME, data dir /var/lib/rocker/NAME
              (rockerd creates missing dirs)
  otherwise   exec dir $XDG_RUNTIME_DIR/rocker/apps/NAME (/run/user/UID/...)
              data dir ${XDG_DATA_HOME:-~/.local/share}/rocker/NAME
              (`rocker run` creates them: rockerd wants them to exist and
              belong to you)"""),
        ),
        examples=(
            ("run the package's bin/hello", "rocker run --pkg hello.squashfs -- hello"),
            ("a shell whose writes to /usr and /etc stay in the rocker's data dir",
             "rocker run --pkg hello.squashfs --overlay /usr --overlay /etc -- sh"),
            ("the exit status is CMD's: this prints 7", "rocker run --pkg hello.squashfs -- sh -c 'exit 7'; echo $?"),
            ("as root, run the app as uid 1000 with dirs of its own",
             "rocker run --pkg /srv/apps/hello.squashfs --uid 1000 --gid 1000 \\\n"
             "    --exec-dir /srv/rocker/hello/exec --data-dir /srv/rocker/hello/data \\\n"
             "    -- hello"),
        ),
        exit_status=(
            ("CMD's", "CMD exited: its exit status"),
            ("128+N", "CMD was killed by signal N (130 SIGINT, 137 SIGKILL, 143 SIGTERM)"),
            EXIT_STATUS_USAGE,
            ("125", "no rocker: rockerd is unreachable, the package is missing, rockerd refused the request "
                    "or could not build the rocker, or --workdir does not exist inside"),
            ("126", "CMD was found in the rocker but could not be executed"),
            ("127", "CMD was not found in the rocker"),
        ),
    ),
    Page(
        name="ps",
        summary="list the live rockers",
        synopsis="rocker ps [--json]",
        description="""\
List the live rockers you may see: root sees all of them, anyone else the
ones that run as their uid or that they asked for.""",
        sections=(
            ("columns", """\
  NAME       the rocker's name: its guard's process name and its hostname
  APP ID     the --app-id it was created with
  UID        the app's uid outside the rocker
  GUARD PID  the guard's PID on the host (it is PID 1 inside the rocker)
  AGE        time since it was created
  PROCS      processes in the rocker's PID namespace, the guard included
             ("-" where you may not look into the guard)
  PACKAGE    the package it was built from"""),
        ),
        examples=(
            ("the table", "rocker ps"),
            ("names of the rockers of app 7, with jq",
             "rocker ps --json | jq -r '.[] | select(.app_id == 7) | .guard_pname'"),
        ),
        exit_status=(("0", "success (also when no rocker lives)"), EXIT_STATUS_USAGE, EXIT_STATUS_ROCKER),
    ),
    Page(
        name="inspect",
        summary="print one live rocker as JSON",
        synopsis="rocker inspect NAME",
        description="""\
Print what is known about the live rocker NAME as one JSON object: the
fields rockerd reports (RockerInfo in docs/protocol.md: guard_pid,
guard_pname, app_id, uid, gid, created, caller_uid, app_pkg_path,
app_exec_dir, app_data_dir, app_overlay_dirs) plus "processes", the number
of processes in its PID namespace, and "pids", their PIDs on the host with
the guard first (both null where you may not look).""",
        examples=(("the data dir of a rocker, with jq", "rocker inspect rk-0a1b2c3d | jq -r .app_data_dir"),),
        exit_status=(("0", "success"), ("1", "no live rocker is called NAME"), EXIT_STATUS_USAGE,
                     EXIT_STATUS_ROCKER),
    ),
    Page(
        name="kill",
        summary="signal a rocker's guard (ends the rocker)",
        synopsis="rocker kill [-s SIG] NAME...",
        description="""\
Send the signal SIG (default KILL) to the guard of each rocker NAME, through
rockerd, which signals it through a pidfd it holds of the guard: a rocker that
has ended is reported as such, and a PID reused after it ended is never
signalled.""",
        sections=(
            ("what the guard does with the signal", """\
  KILL            the rocker ends at once: the kernel kills every process in it
  TERM, INT, HUP  passed on to every process in the rocker; the rocker ends
                  when they are gone, at most 5 s later
  STOP, CONT      stop and continue the guard alone
  any other       ignored (the guard is PID 1 of its namespace)"""),
        ),
        examples=(
            ("end a rocker now", "rocker kill rk-0a1b2c3d"),
            ("ask its processes to quit first", "rocker kill -s TERM rk-0a1b2c3d"),
        ),
        exit_status=(("0", "every rocker was signalled"), ("1", "no live rocker is called NAME (for at least one)"),
                     EXIT_STATUS_USAGE, EXIT_STATUS_ROCKER),
    ),
    Page(
        name="pack",
        summary="pack a directory into an app package (a squashfs image)",
        synopsis="rocker pack DIR -o APP.squashfs [--comp ALGO]",
        description="""\
Make the read-only package rocker mounts at an app's exec dir from the tree
DIR, with mksquashfs (Debian: squashfs-tools). The image is what a package
should be: every file owned by root:root (the package is mounted nosuid and
nodev, and a uid-1000 app must not own its own code), and reproducible: the
same DIR gives the same bytes on any machine (file times and the image's own
time set to 0, entries in sorted order, no extended attributes). An existing
APP.squashfs is replaced only when the new image is complete.""",
        sections=(("options", """\
  -o, --output FILE   the package to write (required)
  --comp ALGO         compression: gzip (default; every kernel reads it),
                      zstd, xz, lz4, lzo"""),),
        examples=(("pack an app and run it", "rocker pack ./hello -o hello.squashfs\n"
                                             "rocker run --pkg hello.squashfs -- hello"),),
        exit_status=(("0", "the package was written"), EXIT_STATUS_USAGE,
                     ("125", "mksquashfs is missing or failed; DIR is not a directory")),
    ),
    Page(
        name="status",
        summary="show whether rockerd is up, its version and how many rockers live",
        synopsis="rocker status [--json]",
        description="""\
Ask rockerd on its socket who it is (org.varlink.service.GetInfo), which
rockers live (io.rocker.Rocker.List) and which kernel paths it takes
(io.rocker.Rocker.Kernel: fast, or the fallback for an older kernel), and
print that with the socket path and this client's version.""",
        examples=(("is rockerd up? (exit status 0 if it is)", "rocker status >/dev/null && echo up"),),
        exit_status=(("0", "rockerd answered"), EXIT_STATUS_USAGE, ("125", "rockerd is unreachable or failed")),
    ),
)}


def _section(title: str, body: str) -> str:
    return f"{title}:\n{body}"


def epilog(page: Page) -> str:
    parts = [_section(title, text) for title, text in page.sections]
    if page.examples:
        parts.append(_section("examples", "\n\n".join(
            f"  # {what}\n" + textwrap.indent(cmd, "  ") for what, cmd in page.examples)))
    if page.exit_status:
        width = max(len(code) for code, _ in page.exit_status)
        rows = []
        for code, meaning in page.exit_status:
            wrapped = textwrap.wrap(meaning, 76 - width - 4) or [""]
            rows.append(f"  {code:<{width}}  {wrapped[0]}")
            rows += [f"  {'':<{width}}  {more}" for more in wrapped[1:]]
        parts.append(_section("exit status", "\n".join(rows)))
    return "\n\n".join(parts)


PAGES_COMMANDS = [name for name in PAGES if name != "rocker"]


# -- parsing ------------------------------------------------------------------------------------

class UsageError(Exception):
    def __init__(self, prog: str, message: str) -> None:
        super().__init__(message)
        self.prog = prog
        self.message = message


class Parser(argparse.ArgumentParser):
    """One line for a usage error, naming the help to read; never argparse's usage dump."""

    def error(self, message: str) -> NoReturn:
        if message.startswith("argument COMMAND: invalid choice: "):
            bad = message.split(": ")[2].split(" ")[0]
            message = f"unknown command {bad}: the commands are {', '.join(PAGES_COMMANDS)}"
        raise UsageError(self.prog, message)


def _formatter(prog: str) -> argparse.HelpFormatter:
    return argparse.RawDescriptionHelpFormatter(prog, max_help_position=26, width=80)


def _socket_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--socket", metavar="PATH", default=argparse.SUPPRESS,
                        help="rockerd's socket (default: $ROCKER_SOCKET, else /run/rocker/rockerd.sock)")


def _id(text: str) -> int:
    try:
        value = int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative: {value}")
    return value


def build_parser() -> Parser:
    top = PAGES["rocker"]
    parser = Parser(prog="rocker", usage=top.synopsis, description=top.description, epilog=epilog(top),
                    formatter_class=_formatter)
    _socket_option(parser)
    parser.add_argument("-V", "--version", action="version", version=f"rocker {client_version()}")
    # listed by the "commands" section of the epilog instead of argparse's own, less readable list
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", help=argparse.SUPPRESS, parser_class=Parser)

    def page(name: str) -> Parser:
        p = PAGES[name]
        prog = f"rocker {name}"
        cmd = sub.add_parser(name, prog=prog, usage=p.synopsis, description=p.description,
                             epilog=epilog(p), formatter_class=_formatter)
        return cmd

    run = page("run")
    run.add_argument("--pkg", required=True, metavar="PKG", help="the app's package: a squashfs image")
    run.add_argument("--exec-dir", metavar="DIR", help="where the package is mounted (default: see below)")
    run.add_argument("--data-dir", metavar="DIR",
                     help="where the app's writes to overlaid dirs are kept (default: see below)")
    run.add_argument("--overlay", action="append", default=[], metavar="DIR",
                     help=f"put a copy-on-write layer over the host dir DIR; repeatable, at most "
                          f"{MAX_OVERLAY_DIRS}; not /, /proc, /sys or /dev")
    run.add_argument("--uid", type=_id, default=os.getuid(), metavar="UID",
                     help="the app's uid outside the rocker (default: yours; only root may pick another)")
    run.add_argument("--gid", type=_id, default=os.getgid(), metavar="GID",
                     help="the app's gid outside the rocker (default: yours; only root may pick another)")
    run.add_argument("--app-id", type=_id, default=0, metavar="N",
                     help="a number of your choosing that `rocker ps` shows (default 0)")
    run.add_argument("-w", "--workdir", metavar="DIR",
                     help="where CMD starts, inside the rocker (default: the current directory, else /)")
    _socket_option(run)
    run.add_argument("cmd", nargs=argparse.REMAINDER, metavar="CMD [ARG...]",
                     help="the command to run and its arguments; put -- before it if it starts with -")

    ps = page("ps")
    ps.add_argument("--json", action="store_true", help="print a JSON array instead of the table")
    _socket_option(ps)

    inspect = page("inspect")
    inspect.add_argument("name", metavar="NAME", help="the rocker's name, as `rocker ps` shows it")
    _socket_option(inspect)

    pack = page("pack")
    pack.add_argument("dir", metavar="DIR", help="the app's files")
    pack.add_argument("-o", "--output", required=True, metavar="FILE", help="the package to write")
    pack.add_argument("--comp", default="gzip", choices=PACK_COMPRESSORS, metavar="ALGO",
                      help="compression: " + ", ".join(PACK_COMPRESSORS) + " (default gzip)")

    kill = page("kill")
    kill.add_argument("-s", "--signal", default="KILL", metavar="SIG",
                      help="a signal name (TERM, SIGTERM) or number (15); default KILL")
    kill.add_argument("names", nargs="+", metavar="NAME", help="the rockers' names, as `rocker ps` shows them")
    _socket_option(kill)

    status = page("status")
    status.add_argument("--json", action="store_true", help="print a JSON object instead of text")
    _socket_option(status)
    return parser


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
            raise Failure(f"rockerd could not list the rockers: {e}: see rockerd's log") from None
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

def pid_namespaces() -> dict[int, list[int]]:
    """Host PIDs grouped by the inode of their PID namespace (what /proc/PID/ns/pid names)."""
    groups: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ino = os.stat(f"/proc/{entry}/ns/pid").st_ino
            except OSError:
                continue  # gone, or not ours to look at
            groups.setdefault(ino, []).append(int(entry))
    return groups


def rocker_pids(info: dict[str, Any], groups: dict[int, list[int]]) -> list[int] | None:
    """The processes in a rocker's PID namespace, guard first; None if we cannot tell."""
    pid, name = info.get("guard_pid"), info.get("guard_pname")
    if not isinstance(pid, int) or get_guardname(pid).guard_pname != name:
        return None  # ended meanwhile, and the PID may be another process's now
    try:
        ino = os.stat(f"/proc/{pid}/ns/pid").st_ino
    except OSError:
        return None  # the guard is not dumpable: only root (or the rocker's owner) may look
    return sorted(groups.get(ino, [pid]), key=lambda p: (p != pid, p))


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


# -- commands -----------------------------------------------------------------------------------

def default_dirs(pkg: str, uid: int | None = None) -> tuple[str, str]:
    """Exec dir and data dir named after the package file: root's under /run and /var/lib, else XDG."""
    stem = Path(pkg).name.removesuffix(".squashfs") or "app"
    uid = os.geteuid() if uid is None else uid
    if uid == 0:
        return f"/run/rocker/apps/{stem}", f"/var/lib/rocker/{stem}"
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
        return Failure(f"rockerd could not build the rocker: {cause}: see rockerd's log "
                       "(`journalctl -u rockerd`) for more")
    if err in (RockerErr.send_req_failed, RockerErr.recv_resp_failed):
        return Failure(f"lost rockerd at {path}: {cause}: check that it still runs (`rocker status`)")
    if err == RockerErr.enter_rocker_failed:
        return Failure(f"could not enter the new rocker: {cause}: see docs/operations.md")
    if err == RockerErr.app_exec_failed:
        return Failure(f"could not start CMD in the rocker: {cause}")
    return Failure(f"rockerd failed ({err.name}): {cause}: see rockerd's log")


def _prepare_own_dirs(dirs: list[tuple[str, str]]) -> None:
    """rockerd creates missing dirs for root only; a user's default dirs are made here."""
    for what, path in dirs:
        try:
            os.makedirs(path, mode=0o700 if what == "data" else 0o755, exist_ok=True)
        except OSError as e:
            raise Failure(f"cannot create the default {what} dir {path}: {e.strerror}: pick one with "
                          f"--{what}-dir") from None


def cmd_run(args: argparse.Namespace) -> int:
    cmd = list(args.cmd)
    if cmd[:1] == ["--"]:
        cmd = cmd[1:]
    if not cmd:
        raise UsageError("rocker run", "no CMD given: put it after the options, e.g. `rocker run --pkg PKG -- sh`")
    pkg = args.pkg
    check_package(pkg)
    if args.exec_dir and args.data_dir:
        exec_dir, data_dir = os.path.abspath(args.exec_dir), os.path.abspath(args.data_dir)
    else:
        default_exec, default_data = default_dirs(pkg)
        exec_dir = os.path.abspath(args.exec_dir or default_exec)
        data_dir = os.path.abspath(args.data_dir or default_data)
    if os.geteuid() != 0:
        _prepare_own_dirs([(what, d) for what, d, given in (("exec", exec_dir, args.exec_dir),
                                                             ("data", data_dir, args.data_dir)) if not given])

    req = request_new()
    req.app_id, req.uid, req.gid = args.app_id, args.uid, args.gid
    req.app_pkg_path = os.path.realpath(pkg)  # rockerd refuses paths through symlinks
    req.app_exec_dir, req.app_data_dir = exec_dir, data_dir
    req.app_overlay_dirs = [os.path.abspath(d) for d in args.overlay]

    env = dict(os.environ)  # CMD's environment: the caller's, with the package's bin/ first on PATH
    env["PATH"] = f"{exec_dir}/bin:{env.get('PATH') or os.defpath}"
    path = socket_path(args)
    job = Job.prepare()
    try:
        res = enter_rocker(req, run_command, job.launch(cmd, env, args.workdir), socket=path)
        if res.cause is not None:
            raise _run_failure(res.err_no, res.cause, path, req.to_params())
        job.started(res.app_pid)
        return job.wait()
    finally:
        job.close()


def cmd_ps(args: argparse.Namespace) -> int:
    with Daemon(socket_path(args)) as d:
        rockers = d.rockers()
    groups = pid_namespaces()
    now = time.time()
    for r in rockers:
        pids = rocker_pids(r, groups)
        r["processes"] = len(pids) if pids is not None else None
    if args.json:
        print(json.dumps(rockers, indent=2))
        return EXIT_OK
    rows = [(r.get("guard_pname", "?"), str(r.get("app_id", "?")), str(r.get("uid", "?")),
             str(r.get("guard_pid", "?")), age(now - float(r.get("created") or now)),
             "-" if r["processes"] is None else str(r["processes"]), str(r.get("app_pkg_path", "")))
            for r in rockers]
    print(table(("NAME", "APP ID", "UID", "GUARD PID", "AGE", "PROCS", "PACKAGE"), rows))
    return EXIT_OK


def cmd_inspect(args: argparse.Namespace) -> int:
    with Daemon(socket_path(args)) as d:
        info = find(d.rockers(), args.name)
    pids = rocker_pids(info, pid_namespaces())
    info["processes"] = len(pids) if pids is not None else None
    info["pids"] = pids
    print(json.dumps(info, indent=2))
    return EXIT_OK


def parse_signal(text: str) -> int:
    name = text.strip().upper()
    if name.isdigit():
        number = int(name)
        if number in {int(s) for s in signal.valid_signals()} and number != 0:
            return number
    else:
        sig = getattr(signal, name if name.startswith("SIG") else f"SIG{name}", None)
        if isinstance(sig, signal.Signals):
            return int(sig)
    raise UsageError("rocker kill", f"unknown signal {text!r}: give a name such as TERM or KILL, or a number "
                                    "(`kill -l` lists them)")


def cmd_kill(args: argparse.Namespace) -> int:
    """One Kill call per name: rockerd signals the guard through its pidfd, so a PID reused
    meanwhile is never hit, and a rocker that has ended is NoSuchRocker."""
    sig = parse_signal(args.signal)
    missing = []
    with Daemon(socket_path(args)) as d:
        for name in args.names:
            try:
                d.call(KILL, {"guard_pname": name, "signal": sig})
            except wire.RemoteError as e:
                if e.name.endswith(".NoSuchRocker"):
                    missing.append(f"no live rocker is called {name!r}: `rocker ps` lists the live ones")
                    continue
                raise Failure(f"rockerd could not signal {name}: {e}: see rockerd's log") from None
    for message in missing:
        say(message)
    return EXIT_NO_SUCH_ROCKER if missing else EXIT_OK


PACK_COMPRESSORS = ("gzip", "zstd", "xz", "lz4", "lzo")
SQUASHFS_MAGIC = b"hsqs"


def cmd_pack(args: argparse.Namespace) -> int:
    """mksquashfs with the options a package needs; written to a temporary name, then renamed."""
    import shutil
    import subprocess

    src, out = args.dir, args.output
    if not os.path.isdir(src):
        raise Failure(f"{src} is not a directory: pass the directory of the app's files")
    mksquashfs = shutil.which("mksquashfs") or next(
        (p for p in ("/usr/sbin/mksquashfs", "/sbin/mksquashfs") if os.access(p, os.X_OK)), None)
    if mksquashfs is None:
        raise Failure("mksquashfs not found: install it (Debian: apt-get install squashfs-tools)")
    tmp = f"{out}.tmp{os.getpid()}"
    cmd = [mksquashfs, src, tmp, "-noappend", "-quiet", "-no-progress", "-comp", args.comp, "-all-root",
           "-no-xattrs", "-all-time", "0", "-mkfs-time", "0", "-reproducible"]
    try:
        p = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True, check=False)
        if p.returncode != 0:
            last = (p.stdout.strip().splitlines() or ["(no output)"])[-1]
            raise Failure(f"mksquashfs failed ({p.returncode}) packing {src}: {last}")
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return EXIT_OK


def check_package(pkg: str) -> None:
    """What can be told without rockerd: the package exists, is a file, is a squashfs image."""
    if os.path.isdir(pkg):
        raise Failure(f"package {pkg} is a directory: pack it into an image first, e.g. "
                      f"`rocker pack {pkg.rstrip('/')} -o {Path(pkg).name or 'app'}.squashfs`")
    try:
        with open(pkg, "rb") as f:
            magic = f.read(4)
    except FileNotFoundError:
        raise Failure(f"package {pkg} not found: pass the path of a squashfs image to --pkg (make one with "
                      "`rocker pack DIR -o APP.squashfs`, see docs/quickstart.md)") from None
    except PermissionError:
        return  # rockerd opens it as us and says the same, with the reason
    except OSError as e:
        raise Failure(f"package {pkg}: {e.strerror}") from None
    if magic != SQUASHFS_MAGIC:
        raise Failure(f"package {pkg} is not a squashfs image: make one with `rocker pack DIR -o APP.squashfs`")


def cmd_status(args: argparse.Namespace) -> int:
    path = socket_path(args)
    with Daemon(path) as d:
        try:
            info = d.call(GET_INFO)
        except wire.RemoteError as e:
            raise Failure(f"rockerd did not say who it is: {e}: is {path} rockerd's socket?") from None
        rockers = d.rockers()
        try:
            kernel: dict[str, Any] | None = d.call(KERNEL)
        except wire.RemoteError:  # a daemon older than the Kernel method
            kernel = None
    status = {"socket": path, "client_version": client_version(), "daemon": info, "rockers": len(rockers),
              "kernel": kernel}
    if args.json:
        print(json.dumps(status, indent=2))
        return EXIT_OK
    mine = "" if os.geteuid() == 0 else " (that you may see)"
    print(f"rockerd:     running, version {info.get('version', '?')} "
          f"({info.get('vendor', '?')} {info.get('product', '?')}, {info.get('url', '?')})")
    print(f"socket:      {path}")
    print(f"interfaces:  {', '.join(info.get('interfaces') or [])}")
    print(f"rockers:     {len(rockers)} live{mine}")
    if kernel is not None:
        print(f"kernel:      {kernel.get('release', '?')}")
        for p in kernel.get("paths") or []:
            how = "fast" if p.get("fast") else "forced fallback" if p.get("forced") else \
                f"fallback (fast path needs Linux {p.get('fast_since', '?')})"
            print(f"  {p.get('feature', '?')}: {how}: {p.get('path', '?')}")
    print(f"client:      rocker {client_version()}")
    return EXIT_OK


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "run": cmd_run, "ps": cmd_ps, "inspect": cmd_inspect, "kill": cmd_kill, "pack": cmd_pack, "status": cmd_status,
}


def say(message: str, prog: str = "rocker") -> None:
    print(f"{prog}: {message}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args, extra = parser.parse_known_args(argv)
        if extra:
            raise UsageError(f"rocker {args.command}" if args.command else "rocker",
                             f"unknown option or extra argument: {' '.join(extra)}")
        if args.command is None:
            raise UsageError("rocker", "no command given: try `rocker run --help`, or `rocker --help` for all")
        return COMMANDS[args.command](args)
    except UsageError as e:
        say(f"{e.message}: see `{e.prog} --help`" if "--help" not in e.message else e.message, e.prog)
        return EXIT_USAGE
    except Failure as e:
        say(e.message)
        return e.code
    except BrokenPipeError:  # `rocker ps | head`: the reader has all it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
