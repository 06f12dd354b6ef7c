"""What a restarted rockerd needs to re-adopt live rockers: one small JSON file per rocker.

Kept on tmpfs (/run): it describes processes, which do not survive a reboot
either. Each file is written to a temporary name and renamed into place, so a
crash leaves either the old record or the new one, never half of one. A
record is only a claim: adoption checks it against the live process (pidfd,
name, start time) before trusting it.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, fields
from typing import Any

from rocker_client.guardname import read_comm

log = logging.getLogger("rockerd.state")


@dataclass(frozen=True)
class Record:
    """The runtime fields of a live rocker, and its request as one value (checked again at adoption)."""

    name: str
    pid: int
    starttime: int  # field 22 of /proc/PID/stat: tells a reused PID apart
    caller_uid: int
    created: float
    work_slot: int
    request: dict[str, Any]

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Record:
        if not isinstance(data, dict):
            raise ValueError("not an object")
        if "request" not in data:  # rockerd 0.1 wrote the request's fields beside the others
            data = {k: v for k, v in data.items() if k in _RUNTIME} | {
                "request": {k: v for k, v in data.items() if k not in _RUNTIME}}
        known = {f.name for f in fields(cls)}
        if set(data) != known:
            raise ValueError(f"fields {sorted(set(data) ^ known)} do not match")
        rec = cls(**data)
        if not rec.name.startswith("rk-") or "/" in rec.name or type(rec.pid) is not int or rec.pid <= 1:
            raise ValueError("not a rocker record")
        if not isinstance(rec.request, dict):
            raise ValueError("its request is not an object")
        return rec


_FIELDS = tuple(f.name for f in fields(Record))
_RUNTIME = frozenset(_FIELDS) - {"request"}


def proc_starttime(pid: int) -> int:
    with open(f"/proc/{pid}/stat", "rb") as f:
        raw = f.read()
    return int(raw[raw.rindex(b")") + 2:].split()[19])


def matches(rec: Record) -> bool:
    """Is the process at rec.pid still the guard the record describes?"""
    try:
        return read_comm(rec.pid) == rec.name and proc_starttime(rec.pid) == rec.starttime
    except (OSError, ValueError, IndexError):
        return False


class StateDir:
    def __init__(self, path: str) -> None:
        self.path = path
        os.makedirs(path, mode=0o700, exist_ok=True)

    def save(self, rec: Record) -> None:
        final = os.path.join(self.path, rec.name + ".json")
        tmp = final + ".tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        try:
            os.write(fd, json.dumps({f: getattr(rec, f) for f in _FIELDS}).encode())  # asdict's deep copy: 36 us
        finally:
            os.close(fd)
        os.rename(tmp, final)

    def remove(self, name: str) -> None:
        try:
            os.unlink(os.path.join(self.path, name + ".json"))
        except FileNotFoundError:
            pass

    def load(self) -> list[Record]:
        """Every readable record; unreadable ones and leftovers of a crash mid-write are dropped."""
        out = []
        for entry in sorted(os.listdir(self.path)):
            path = os.path.join(self.path, entry)
            if not entry.endswith(".json"):
                os.unlink(path)
                continue
            try:
                with open(path, "rb") as f:
                    out.append(Record.from_json(json.load(f)))
            except (OSError, ValueError, TypeError, KeyError) as e:
                log.warning("dropping unreadable rocker record %s: %s", path, e)
                os.unlink(path)
        return out
