"""argparse set up from the manual: one line for a usage error, never argparse's usage dump."""

from __future__ import annotations

import argparse
import sys

from ..structs import MAX_OVERLAY_DIRS
from ..units import parse_size
from .common import UsageError, client_version
from .environ import add_env_options
from .manual import PAGES, PAGES_COMMANDS, Page, epilog
from .pack import PACK_COMPRESSORS

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs every start of the CLI (issue 21); annotations only
    from typing import NoReturn


class Parser(argparse.ArgumentParser):
    """One line for a usage error, naming the help to read; never argparse's usage dump. The
    manual page's epilog is rendered when help is asked for, not at every start (issue 21)."""

    page: Page | None = None

    def error(self, message: str) -> NoReturn:
        if message.startswith("argument COMMAND: invalid choice: "):
            bad = message.split(": ")[2].split(" ")[0]
            message = f"unknown command {bad}: the commands are {', '.join(PAGES_COMMANDS)}"
        raise UsageError(self.prog, message)

    def format_help(self) -> str:
        if self.page is not None and self.epilog is None:
            self.epilog = epilog(self.page)
        return super().format_help()


class _Version(argparse.Action):
    """--version, looking the version up only when asked (importlib.metadata is slow to import)."""

    def __init__(self, option_strings: list[str], dest: str = argparse.SUPPRESS, help: str | None = None) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS,
                         help=help or "show program's version number and exit")

    def __call__(self, parser: argparse.ArgumentParser, *_: object) -> NoReturn:
        sys.stdout.write(f"rocker {client_version()}\n")
        parser.exit()


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


def command_in(argv: list[str]) -> str | None:
    """The command argv names, if it can be told without parsing: only the top level's own
    --socket PATH may come before it (anything else, e.g. an abbreviated option: None)."""
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--socket":
            i += 2
        elif arg.startswith("--socket="):
            i += 1
        elif arg.startswith("-"):
            return None
        else:
            return arg if arg in PAGES_COMMANDS else None
    return None


def build_parser(only: str | None = None) -> Parser:
    """The whole command line's parser; with `only`, just that command's (a start builds only the
    command it runs: each command's options cost time to set up)."""
    top = PAGES["rocker"]
    parser = Parser(prog="rocker", usage=top.synopsis, description=top.description, formatter_class=_formatter)
    parser.page = top
    _socket_option(parser)
    parser.add_argument("-V", "--version", action=_Version)
    # listed by the "commands" section of the epilog instead of argparse's own, less readable list
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", help=argparse.SUPPRESS, parser_class=Parser)
    for name in _OPTIONS:
        if only is None or name == only:
            p = PAGES[name]
            cmd = sub.add_parser(name, prog=f"rocker {name}", usage=p.synopsis, description=p.description,
                                 formatter_class=_formatter)
            cmd.page = p
            _OPTIONS[name](cmd)
    return parser


def _run_options(run: Parser) -> None:
    run.add_argument("--pkg", required=True, metavar="PKG", help="the app's package: a squashfs image")
    run.add_argument("--pkg-sha256", metavar="HEX",
                     help="refuse the package unless its SHA-256 is HEX (as sha256sum prints it); rockerd checks "
                          "the file it mounts")
    run.add_argument("--exec-dir", metavar="DIR", help="where the package is mounted (default: see below)")
    run.add_argument("--data-dir", metavar="DIR",
                     help="where the app's writes to overlaid dirs are kept (default: see below)")
    run.add_argument("--overlay", action="append", default=[], metavar="DIR",
                     help=f"put a copy-on-write layer over the host dir DIR; repeatable, at most "
                          f"{MAX_OVERLAY_DIRS}; not /, /proc, /sys or /dev")
    run.add_argument("--uid", type=_id, default=None, metavar="UID",
                     help="the app's uid outside the rocker (default: yours; root's apps run as nobody, "
                          "--uid 0 asks for root; only root may pick another)")
    run.add_argument("--gid", type=_id, default=None, metavar="GID",
                     help="the app's gid outside the rocker (default: yours; root's apps run as nobody's "
                          "group; only root may pick another)")
    run.add_argument("--app-id", type=_id, default=0, metavar="N",
                     help="a number of your choosing that `rocker ps` shows (default 0)")
    run.add_argument("--network", choices=("none", "host", "bridge"), metavar="MODE",
                     help="none (only lo), host (the host's network) or bridge (own address, NAT outside); "
                          "default: rockerd's --default-network, none unless set")
    run.add_argument("-p", "--publish", action="append", default=[], metavar="HOST:PORT[/udp]",
                     help="forward the host's port HOST to the app's PORT (--network bridge); repeatable")
    run.add_argument("--seccomp", choices=("default", "nested", "complain", "unconfined"), default="default",
                     metavar="PROFILE", help="the app's syscall filter: default, nested (default, but the app may make "
                     "user namespaces), complain (allow and log what default denies) or unconfined (none); "
                     "only root may lift it (docs/security.md)")
    run.add_argument("-w", "--workdir", metavar="DIR",
                     help="where CMD starts, inside the rocker (default: the current directory, else /)")
    run.add_argument("--memory", type=parse_size, metavar="SIZE",
                     help="the most memory the rocker may use (e.g. 256M, 2G; suffixes K, M, G, T: powers "
                          "of 1024); beyond it the kernel kills a process inside (default: rockerd's)")
    run.add_argument("--pids", type=_positive, metavar="N",
                     help="the most processes and threads it may have at once (default: rockerd's, 4096 "
                          "unless configured)")
    run.add_argument("--cpus", type=_cpus, metavar="CPUS",
                     help="the most CPU time it may use, in CPUs (0.5: half of one; default: rockerd's)")
    add_env_options(run)
    _socket_option(run)
    run.add_argument("cmd", nargs=argparse.REMAINDER, metavar="CMD [ARG...]",
                     help="the command to run and its arguments; put -- before it if it starts with -")


def _exec_options(exe: Parser) -> None:
    exe.add_argument("-w", "--workdir", metavar="DIR",
                     help="where CMD starts, inside the rocker (default: the current directory, else /)")
    add_env_options(exe)
    _socket_option(exe)
    exe.add_argument("name", metavar="NAME", help="the rocker's name, as `rocker ps` shows it")
    exe.add_argument("cmd", nargs=argparse.REMAINDER, metavar="CMD [ARG...]",
                     help="the command to run and its arguments; put -- before it if it starts with -")


def _ps_options(ps: Parser) -> None:
    ps.add_argument("--json", action="store_true", help="print a JSON array instead of the table")
    _socket_option(ps)


def _inspect_options(inspect: Parser) -> None:
    inspect.add_argument("name", metavar="NAME", help="the rocker's name, as `rocker ps` shows it")
    _socket_option(inspect)


def _pack_options(pack: Parser) -> None:
    pack.add_argument("dir", metavar="DIR", help="the app's files")
    pack.add_argument("-o", "--output", required=True, metavar="FILE", help="the package to write")
    pack.add_argument("--comp", default="gzip", choices=PACK_COMPRESSORS, metavar="ALGO",
                      help="compression: " + ", ".join(PACK_COMPRESSORS) + " (default gzip)")


def _kill_options(kill: Parser) -> None:
    kill.add_argument("-s", "--signal", default="KILL", metavar="SIG",
                      help="a signal name (TERM, SIGTERM) or number (15); default KILL")
    kill.add_argument("names", nargs="+", metavar="NAME", help="the rockers' names, as `rocker ps` shows them")
    _socket_option(kill)


def _rm_data_options(rm_data: Parser) -> None:
    rm_data.add_argument("dir", metavar="DIR", help="the data dir to delete")
    _socket_option(rm_data)


def _diff_options(diff: Parser) -> None:
    diff.add_argument("target", metavar="NAME|DIR", help="a live rocker's name, or a data dir (a path)")
    _socket_option(diff)


def _status_options(status: Parser) -> None:
    status.add_argument("--json", action="store_true", help="print a JSON object instead of text")
    _socket_option(status)


_OPTIONS = {"run": _run_options, "exec": _exec_options, "ps": _ps_options, "inspect": _inspect_options,
            "pack": _pack_options, "kill": _kill_options, "rm-data": _rm_data_options, "diff": _diff_options,
            "status": _status_options}




def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"not a positive number: {text!r}")
    return int(text)


def _cpus(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of CPUs: {text!r} (e.g. 0.5, 2)") from None
    if not 0 < value <= 4096:
        raise argparse.ArgumentTypeError(f"out of range: {text!r}: above 0, at most 4096")
    return value
