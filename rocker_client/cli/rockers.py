"""`rocker ps`, `inspect` and `kill`: the live rockers, as rockerd lists them and /proc shows them."""

from __future__ import annotations

import argparse
import json
import os
import signal
import time
from typing import Any

from .. import wire
from ..guardname import get_guardname
from .common import EXIT_NO_SUCH_ROCKER, EXIT_OK, KILL, Daemon, Failure, UsageError, age, find, say, socket_path, table
from .loghint import with_hint


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
             "-" if r["processes"] is None else str(r["processes"]), *usage_columns(r),
             str(r.get("app_pkg_path", ""))) for r in rockers]
    print(table(("NAME", "APP ID", "UID", "GUARD PID", "AGE", "PROCS", "MEM", "CPU", "PACKAGE"), rows))
    return EXIT_OK


def size(n: float) -> str:
    """1126400 -> 1.1M (binary units, as --memory takes them)."""
    for unit in ("", "K", "M", "G"):
        if n < 1024:
            return f"{n:.0f}{unit}" if unit == "" or n >= 10 else f"{n:.1f}{unit}"
        n /= 1024
    return f"{n:.1f}T"


def usage_columns(r: dict[str, Any]) -> tuple[str, str]:
    """MEM (used, and /limit when there is one; ! after an OOM kill) and CPU (time used, and /CPUs
    when limited), from the rocker's cgroup; "-" without one (limits off)."""
    usage, limits = r.get("usage") or {}, r.get("limits") or {}
    if not usage:
        return "-", "-"
    mem = size(usage.get("memory", 0)) + (f"/{size(limits['memory_max'])}" if limits.get("memory_max") else "")
    if usage.get("oom_kills"):
        mem += "!"
    cpu = f"{usage.get('cpu_usec', 0) / 1e6:.2f}s" + (f"/{limits['cpu_max']:g}" if limits.get("cpu_max") else "")
    return mem, cpu


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
                raise Failure(with_hint(f"rockerd could not signal {name}: {e}", d.path)) from None
    for message in missing:
        say(message)
    return EXIT_NO_SUCH_ROCKER if missing else EXIT_OK

