"""A rocker's limits: the request's fields, the daemon's defaults where they are absent, and the
ceilings a non-root caller may not exceed (an operator's choice, rockerd's options)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

CPU_PERIOD_US = 100_000  # the kernel's default CFS period; cpu_max CPUs = quota / period
DEFAULT_PIDS_MAX = 4096  # bounds a fork bomb; far above what an app needs (a desktop session: ~300)


@dataclass(frozen=True)
class Limits:
    """None: unbounded. memory_max in bytes (RAM, and swap too: no swap beyond it), pids_max in
    tasks (processes and threads), cpu_max in CPUs (0.5: half of one CPU's time)."""

    memory_max: int | None = None
    pids_max: int | None = None
    cpu_max: float | None = None

    def any(self) -> bool:
        return any(v is not None for v in (self.memory_max, self.pids_max, self.cpu_max))

    def as_info(self) -> dict[str, Any]:
        return {"memory_max": self.memory_max, "pids_max": self.pids_max, "cpu_max": self.cpu_max}


FIELDS = ("memory_max", "pids_max", "cpu_max")


class LimitRefused(Exception):
    """A request's limit a caller may not have: `field` names it."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(field, reason)
        self.field, self.reason = field, reason

    def __str__(self) -> str:
        return f"{self.field}: {self.reason}"


@dataclass(frozen=True)
class LimitPolicy:
    defaults: Limits = Limits(pids_max=DEFAULT_PIDS_MAX)
    ceilings: Limits = Limits()  # for non-root callers; None: no ceiling

    def resolve(self, asked: Limits, caller_uid: int) -> Limits:
        """The limits to apply; LimitRefused if a non-root caller asks above a ceiling. A field
        absent from the request takes the default, bounded by the ceiling for non-root callers."""
        out = {}
        for f in FIELDS:
            value, default, ceiling = getattr(asked, f), getattr(self.defaults, f), getattr(self.ceilings, f)
            if caller_uid != 0 and ceiling is not None:
                if value is not None and value > ceiling:
                    raise LimitRefused(f, f"{value:g} is above this daemon's ceiling of {ceiling:g} for "
                                          "non-root callers")
                if value is None:
                    value = ceiling if default is None else min(default, ceiling)
            out[f] = default if value is None else value
        return replace(asked, **out)
