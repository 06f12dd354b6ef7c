"""The one place where rockerd's events are logged.

Each event is one line for a person and a set of fields for a machine; the
fields ride along on the log record. Under systemd, when stderr is the
journal ($JOURNAL_STREAM), records go to journald directly with the fields as
structured journal fields, so `journalctl -u rockerd ROCKER_EVENT=refused` or
`ROCKER_GUARD_NAME=rk-...` finds them; otherwise they are plain lines on stderr.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

from systemd.journal import JournalHandler

log = logging.getLogger("rockerd")

CREATED = "created"
ENDED = "ended"
REFUSED = "refused"
FAILED = "failed"
ADOPTED = "adopted"
OOM = "oom"  # the kernel killed a process of a rocker at its memory_max

# One fixed MESSAGE_ID per event kind (generated once; never change them: people filter on them).
MESSAGE_IDS = {
    CREATED: "2dac394367b741f1ab526255d3e901c4",
    ENDED: "61b59f2d60af463cb201e2f786e719a0",
    REFUSED: "52cc70df1cce4897a1ccba4f2f2464c5",
    FAILED: "c0c98fe41202443cbe8a2e6a067bf433",
    ADOPTED: "30d24b4ffe2b49d8b3bd8520c5549e01",
    OOM: "8c1f3d2a5b6e4f70a9d1c2b3e4f5a6b7",
}
# Event fields whose journal name is not ROCKER_<NAME>: journald already knows them.
_FIELD_NAMES = {"errno": "ERRNO"}


def event(kind: str, message: str, level: int = logging.INFO, **fields: Any) -> None:
    log.log(level, message, extra={"rocker_event": kind, "rocker_fields": fields})


def journal_fields(kind: str, fields: dict[str, Any]) -> dict[str, str]:
    """An event's journal fields: ROCKER_EVENT, its MESSAGE_ID, ROCKER_<FIELD>=..., OBJECT_PID= the guard."""
    out = {"ROCKER_EVENT": kind}
    if kind in MESSAGE_IDS:
        out["MESSAGE_ID"] = MESSAGE_IDS[kind]
    for name, value in fields.items():
        if value is not None:
            out[_FIELD_NAMES.get(name) or "ROCKER_" + name.upper()] = str(value)
    if fields.get("guard_pid") is not None:
        out["OBJECT_PID"] = str(fields["guard_pid"])  # journald adds the guard's OBJECT_COMM, OBJECT_UID, ...
    return out


class EventJournalHandler(JournalHandler):
    """JournalHandler that sends an event's fields as journal fields and nothing else of the record.

    (The stock emit() sends every attribute of the record, most of them lowercase names journald drops.)
    """

    def emit(self, record: logging.LogRecord) -> None:
        try:
            fields = dict(self._extra)  # SYSLOG_IDENTIFIER
            kind = getattr(record, "rocker_event", None)
            if kind is not None:
                fields.update(journal_fields(kind, getattr(record, "rocker_fields", {})))
            self.send(self.format(record), PRIORITY=str(self.map_priority(record.levelno)), LOGGER=record.name,
                      CODE_FILE=record.pathname, CODE_LINE=record.lineno, CODE_FUNC=record.funcName, **fields)
        except Exception:
            self.handleError(record)


def stderr_is_journal() -> bool:
    """True when systemd connected our stderr to journald ($JOURNAL_STREAM names its device:inode)."""
    dev, _, ino = os.environ.get("JOURNAL_STREAM", "").partition(":")
    if not (dev.isdigit() and ino.isdigit()):
        return False
    try:
        st = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError, AttributeError):  # closed, or no stderr at all
        return False
    return (st.st_dev, st.st_ino) == (int(dev), int(ino))


def setup(level: str = "INFO") -> None:
    """Log to journald with structured fields when stderr is the journal, else readable lines on stderr."""
    handler: logging.Handler
    if stderr_is_journal():
        handler = EventJournalHandler(SYSLOG_IDENTIFIER="rockerd")
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s rockerd[%(process)d] %(levelname)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
