"""The guard protocol, as rocker-guard-proto.h defines it for the C side: read from that header.

The header is the one definition (rocker-spawn.c and rocker-guard.c include it); this
module parses its ``#define ROCKER_GUARD_*`` lines once, at import, so a change there
reaches rockerd without a second copy to forget. tests/test_guard_proto.py compiles a
program against the header and checks every value read here.
"""

from __future__ import annotations

import os
import re

__all__ = ["ARGC", "FAILED", "HEADER", "MAX_MOUNTS", "READY", "REPORT_MAX", "SETUP", "STATUS_FD", "TARGET_MAX",
           "guard_argv", "read_header"]

HEADER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "rocker-guard-proto.h")
_DEFINE = re.compile(r'^#define ROCKER_GUARD_([A-Z0-9_]+) +(\d+|\'.\'|"[^"\\]*")\s*(?:/\*.*\*/)?$')


def read_header(path: str = HEADER) -> dict[str, int | bytes]:
    """NAME (without ROCKER_GUARD_) -> value: a number as int, a char or a string as bytes."""
    values: dict[str, int | bytes] = {}
    with open(path, encoding="ascii") as f:
        for line in f:
            if not line.startswith("#define ROCKER_GUARD_") or line.startswith("#define ROCKER_GUARD_PROTO_H"):
                continue
            m = _DEFINE.match(line.rstrip("\n"))
            if m is None:
                raise ImportError(f"{path}: cannot read {line.strip()!r}: one number, 'c' or \"string\" per #define")
            name, raw = m.groups()
            values[name] = int(raw) if raw.isdigit() else raw[1:-1].encode()
    return values


_V = read_header()
STATUS_FD = int(_V["STATUS_FD"])  # where the guard finds its status socket
ARGC = int(_V["ARGC"])
SETUP = bytes(_V["SETUP"])
READY = bytes(_V["READY"])
FAILED = bytes(_V["FAILED"])
MAX_MOUNTS = int(_V["MAX_MOUNTS"])
TARGET_MAX = int(_V["TARGET_MAX"])
REPORT_MAX = int(_V["REPORT_MAX"])


def guard_argv(name: str, first_entry_timeout: float) -> list[bytes]:
    """The guard's argv, as the header says: name (also its process name), status fd, timeout, --setup."""
    return [name.encode(), str(STATUS_FD).encode(), f"{first_entry_timeout:g}".encode(), SETUP]
