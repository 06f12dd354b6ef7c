"""The one place where rockerd's events are logged.

Each event is one line for a person and a set of fields for a machine; the
fields ride along on the log record so a journald handler can send them as
structured fields.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

log = logging.getLogger("rockerd")

CREATED = "created"
ENDED = "ended"
REFUSED = "refused"
FAILED = "failed"


def event(kind: str, message: str, level: int = logging.INFO, **fields: Any) -> None:
    log.log(level, message, extra={"rocker_event": kind, "rocker_fields": fields})


def setup_stderr(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s rockerd[%(process)d] %(levelname)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
