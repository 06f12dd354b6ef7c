"""Pooled percentiles over rounds, the way the anchor kit reports them.

A series is a list of rounds, each a list of samples. p50/p99 are taken over
all samples pooled (nearest rank); the per-round medians show the VM's noise.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any


def pct(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..1) of a non-empty sequence."""
    v = sorted(values)
    return v[min(len(v) - 1, max(0, math.ceil(q * len(v)) - 1))]


def summary(rounds: Sequence[Sequence[float]], digits: int = 3) -> dict[str, Any] | None:
    """{n, p50, p99, mean, round_p50s} over the pooled samples; None when there are none."""
    pooled = [x for r in rounds for x in r]
    if not pooled:
        return None
    per_round = [statistics.median(r) for r in rounds if r]
    return {
        "n": len(pooled),
        "p50": round(statistics.median(pooled), digits),
        "p99": round(pct(pooled, 0.99), digits),
        "mean": round(statistics.fmean(pooled), digits),
        "round_p50s": [round(x, digits) for x in per_round],
    }


def median_of(values: Sequence[float], digits: int = 1) -> float | None:
    return round(statistics.median(values), digits) if values else None


def ratio(ours: float | None, anchor: float | None) -> float | None:
    if ours is None or anchor is None or anchor == 0:
        return None
    return round(ours / anchor, 2)
