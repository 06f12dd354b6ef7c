"""CMD's environment in `rocker run` and `rocker exec`: what the user asked for, and nothing of rocker's own.

The caller's environment (or none, with --clear-env) less the ROCKER_* variables that
configure the client itself (ROCKER_SOCKET names the host's rockerd, which an app has
no business with), then each --env-file in order, then each --env; last one wins. The
package's bin/ goes first on PATH.
"""

from __future__ import annotations

import argparse
import os

from .common import UsageError

CLIENT_PREFIX = "ROCKER_"  # the client's own settings; passed on only when an --env names them


def add_env_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-e", "--env", action="append", default=[], metavar="NAME[=VALUE]",
                        help="set NAME to VALUE in CMD's environment; NAME alone passes on your value; repeatable")
    parser.add_argument("--env-file", action="append", default=[], metavar="FILE",
                        help="read NAME=VALUE lines from FILE (# comments and blank lines skipped); repeatable")
    parser.add_argument("--clear-env", action="store_true",
                        help="start CMD with no environment but what --env and --env-file set (and PATH)")


def _entry(text: str, prog: str, where: str) -> tuple[str, str] | None:
    """NAME=VALUE, or NAME alone (the caller's value; None if unset)."""
    name, eq, value = text.partition("=")
    if not name or "\0" in text or name != name.strip() or any(c.isspace() for c in name):
        raise UsageError(prog, f"{where}: {text!r} is not NAME=VALUE (a name without spaces or '=')")
    if not eq:
        mine = os.environ.get(name)
        return None if mine is None else (name, mine)
    return name, value


def _file_entries(path: str, prog: str) -> list[tuple[str, str]]:
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        why = e.strerror if isinstance(e, OSError) else "not UTF-8 text"
        raise UsageError(prog, f"--env-file {path}: {why}") from None
    entries = []
    for number, line in enumerate(lines, 1):
        text = line.strip()
        if text and not text.startswith("#"):
            entry = _entry(text, prog, f"--env-file {path}, line {number}")
            if entry is not None:
                entries.append(entry)
    return entries


def command_env(args: argparse.Namespace, exec_dir: str | None, prog: str) -> dict[str, str]:
    env = {} if args.clear_env else {k: v for k, v in os.environ.items() if not k.startswith(CLIENT_PREFIX)}
    for path in args.env_file:
        env.update(_file_entries(path, prog))
    for text in args.env:
        entry = _entry(text, prog, "--env")
        if entry is not None:
            env[entry[0]] = entry[1]
    if exec_dir is not None:
        env["PATH"] = f"{exec_dir}/bin:{env.get('PATH') or os.defpath}"
    elif "PATH" not in env:
        env["PATH"] = os.defpath
    return env
