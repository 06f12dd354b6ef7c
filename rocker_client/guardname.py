"""The seed's PID-reuse guard: read a process's name before signalling it."""

from __future__ import annotations

from .errors import RockerErr
from .structs import RockerResult


def read_comm(pid: int) -> str:
    """comm from /proc/PID/stat; it sits between the first '(' and the last ')'."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        raw = f.read()
    return raw[raw.index(b"(") + 1: raw.rindex(b")")].decode(errors="replace")


def get_guardname(pid: int) -> RockerResult:
    """The name of process `pid` from /proc/PID/stat, in `guard_pname`.

    Compare it with the name `enter_rocker` returned before signalling
    `guard_pid`: PIDs are reused, names are unique among live guards.
    """
    if type(pid) is not int or pid <= 0:
        return RockerResult(RockerErr.get_guardname_failed, detail=f"not a PID: {pid!r}")
    try:
        name = read_comm(pid)
    except (OSError, ValueError) as e:
        return RockerResult(RockerErr.get_guardname_failed, guard_pid=pid, detail=f"/proc/{pid}/stat: {e}")
    return RockerResult(RockerErr.success, guard_pid=pid, guard_pname=name)
