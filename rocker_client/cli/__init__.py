"""`rocker`: run a command in a new rocker, list, inspect and kill rockers, check on rockerd.

Every command's help (``rocker COMMAND --help``) is built from the ``PAGES``
below, and so is the command-line part of docs/api.md (scripts/gen_docs.py).
Errors are one line on stderr that names the problem and the fix; the exit
codes are the EXIT_* constants, the same for every command.
"""

from __future__ import annotations

import os
import sys
from importlib import import_module

from .common import EXIT_OK, EXIT_USAGE, Failure, UsageError, say
from .manual import PAGES, Page
from .parser import build_parser, command_in

__all__ = ["PAGES", "Page", "build_parser", "main"]

# command -> (module, function): a command imports only what it uses (start time, issue 21)
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("run", "cmd_run"), "exec": ("join", "cmd_exec"), "ps": ("rockers", "cmd_ps"),
    "inspect": ("rockers", "cmd_inspect"),
    "kill": ("rockers", "cmd_kill"), "pack": ("pack", "cmd_pack"), "status": ("status", "cmd_status"),
    "rm-data": ("datadir", "cmd_rm_data"), "diff": ("datadir", "cmd_diff"),
}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser(command_in(sys.argv[1:] if argv is None else argv))
    try:
        args, extra = parser.parse_known_args(argv)
        if extra:
            raise UsageError(f"rocker {args.command}" if args.command else "rocker",
                             f"unknown option or extra argument: {' '.join(extra)}")
        if args.command is None:
            raise UsageError("rocker", "no command given: try `rocker run --help`, or `rocker --help` for all")
        module, function = COMMANDS[args.command]
        return getattr(import_module(f".{module}", __name__), function)(args)
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
