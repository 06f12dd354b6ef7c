"""bench.ab's arithmetic: each figure divided by its own run's floor, arms compared round by round.

No kernel: synthetic results in the shape `python -m bench` writes. The point of the A/B is that a
machine slowing down between runs (the floor with it) does not show up as a difference between trees.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pytest

from bench import ab


def _result(create: float, floor_create: float, start: float, floor_total: float) -> dict[str, Any]:
    p50 = lambda v: {"p50": v}  # noqa: E731 (a table of literals)
    return {"figures": {"create_daemon_ms": p50(create), "warm": {"create_daemon_ms": p50(create),
                                                                   "start_exec_ms": p50(start)},
                        "exec_app": {"warm": {"start_exec_ms": p50(start)}, "cold": {"start_exec_ms": p50(start)}},
                        "teardown_ms": p50(1.0), "memory": {"0": {}, "50": {"guard_pss_kib_p50": 68}}},
            "anchors": {"floor_c1": {"create": p50(floor_create), "total": p50(floor_total), "teardown": p50(1.0)},
                        "floor_shared_c1": {"create": p50(floor_create), "total": p50(floor_total)},
                        "floor_guard_pss": {"guard_pss_kib_p50": 34}}}


def _runs(tmp_path: Path, rows: dict[str, list[dict[str, Any]]]) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for arm, results in rows.items():
        out[arm] = []
        for i, r in enumerate(results):
            f = tmp_path / f"{arm}-r{i}.json"
            f.write_text(json.dumps(r))
            out[arm].append(ab.figures_of(f))
    return out


def _args(arms: list[str]) -> argparse.Namespace:
    return argparse.Namespace(arms={a: "/nowhere" for a in arms}, extra={}, rounds=2, bench_args="")


def test_a_slower_machine_is_not_a_slower_tree(tmp_path: Path) -> None:
    # round 2 runs on a machine twice as slow: both trees and the floor double; B costs the same as A
    runs = _runs(tmp_path, {"A": [_result(4, 2, 8, 6), _result(8, 4, 16, 12)],
                            "B": [_result(4, 2, 8, 6), _result(8, 4, 16, 12)]})
    s = ab.summarize(_args(["A", "B"]), runs)["series"]
    for series in ("create_daemon package mounted", "start package mounted (Exec)"):
        assert s[series]["B"]["vs_ref"]["median"] == pytest.approx(1.0)
        assert s[series]["B"]["vs_ref"]["paired"] == pytest.approx([1.0, 1.0])
    assert s["guard PSS KiB"]["A"]["ratio_median"] == pytest.approx(2.0)


def test_a_slower_tree_shows_in_every_round(tmp_path: Path) -> None:
    # B's create costs 1.5x A's in both rounds, whatever the floor of each run was
    runs = _runs(tmp_path, {"A": [_result(4, 2, 8, 6), _result(6, 5, 9, 7)],
                            "B": [_result(6, 2, 8, 6), _result(9, 5, 9, 7)]})
    s = ab.summarize(_args(["A", "B"]), runs)["series"]
    v = s["create_daemon first rocker"]["B"]["vs_ref"]
    assert v["paired"] == pytest.approx([1.5, 1.5])
    assert (v["min"], v["max"]) == pytest.approx((1.5, 1.5))
    assert s["start package mounted (Exec)"]["B"]["vs_ref"]["median"] == pytest.approx(1.0)
    table = ab.render(ab.summarize(_args(["A", "B"]), runs))
    assert "| create_daemon first rocker |" in table and "1.500 (1.50..1.50)" in table


def test_a_missing_figure_is_left_out_not_zero(tmp_path: Path) -> None:
    r = _result(4, 2, 8, 6)
    del r["figures"]["exec_app"]  # an older tree without the Exec series
    runs = _runs(tmp_path, {"A": [r], "B": [_result(4, 2, 8, 6)]})
    s = ab.summarize(_args(["A", "B"]), runs)["series"]["start package mounted (Exec)"]
    assert s["A"]["value_median"] is None and s["B"]["vs_ref"]["paired"] == []
