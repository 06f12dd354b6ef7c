"""A tiny run of the benchmark (`python3 -m bench`): every figure is there and sane.

One round, a few cycles, concurrency 1 and 2 (Python launchers with a callable
app and with an Exec app, C launchers), 10 idle rockers, no anchors: a few seconds. The real benchmark never
runs in the test suite (see docs/benchmarks.md).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
SLOW = float(os.environ.get("ROCKER_TEST_TIME_SCALE", "1"))  # >1 in an emulated VM (scripts/test-vm.sh)

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="the benchmark runs a real rockerd: root only"),
    pytest.mark.skipif(not shutil.which("mksquashfs"), reason="mksquashfs missing"),
    pytest.mark.skipif(not (shutil.which("cc") or shutil.which("gcc")), reason="no C compiler"),
]

CYCLE_FIGURES = ("start_first_line_ms", "start_exec_ms", "enter_return_ms", "create_client_ms", "create_daemon_ms",
                 "teardown_guard_ms", "teardown_ms", "teardown_forgot_ms")


def _sane(s: Any, n: int) -> None:
    assert s is not None
    assert s["n"] >= n
    assert 0 < s["p50"] <= s["p99"] < 30_000, s


@pytest.fixture(scope="module")
def result(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    cmd = [sys.executable, "-m", "bench", "--rounds", "1", "--cycles", "3", "--tput-cycles", "4",
           "--concurrency", "1,2", "--live", "10", "--live-samples", "3", "--settle", "0.5", "--no-anchors",
           "--out", str(out)]
    env = {k: v for k, v in os.environ.items() if k != "ROCKER_SOCKET"}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=110 * SLOW,
                          check=False)
    assert proc.returncode == 0, f"bench failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    assert "| figure |" in proc.stdout  # the table
    return json.loads(out.read_text())


def test_cycle_figures(result: dict[str, Any]) -> None:
    fig = result["figures"]
    for key in CYCLE_FIGURES:
        _sane(fig[key], 3)
        _sane(fig["warm"][key], 3)  # the same with the package kept mounted by another rocker
    # the app's main() runs after the callable's first line; the daemon's part lies inside the round trip
    assert fig["start_exec_ms"]["p50"] >= fig["start_first_line_ms"]["p50"]
    assert fig["create_client_ms"]["p50"] >= fig["create_daemon_ms"]["p50"] - 0.1
    assert fig["teardown_ms"]["p50"] >= fig["teardown_guard_ms"]["p50"]


def test_throughput(result: dict[str, Any]) -> None:
    tp = result["figures"]["throughput"]
    assert set(tp) == {"1", "2"}
    for t in tp.values():
        assert t["errors"] == 0
        assert t["cycles_per_s"] > 0
        _sane(t["cycle_ms"], 4)
        _sane(t["create_daemon_ms"], 4)


@pytest.mark.parametrize("key", ["c_client", "exec_app"])
def test_other_launchers(result: dict[str, Any], key: str) -> None:
    """The same cycles launched by bench/launcher.c through clients/c, and by the Python launcher
    with an Exec app: each figure is there."""
    cc = result["figures"][key]
    assert set(cc["throughput"]) == {"1", "2"}
    for t in cc["throughput"].values():
        assert t["errors"] == 0
        assert t["cycles_per_s"] > 0
        _sane(t["cycle_ms"], 4)
        _sane(t["create_daemon_ms"], 4)  # matched by guard name in rockerd's log: the names came back
    for series in ("warm", "cold"):  # package kept mounted by another rocker; each the first rocker of it
        for key in ("start_exec_ms", "enter_return_ms", "create_daemon_ms", "teardown_guard_ms"):
            _sane(cc[series][key], 3)
        # the app's main() stamps after the daemon replied, so after its create
        assert cc[series]["start_exec_ms"]["p50"] > cc[series]["create_daemon_ms"]["p50"]


def test_memory_and_create_at_live(result: dict[str, Any]) -> None:
    fig = result["figures"]
    m = fig["memory"]["10"]
    assert m["live"] == 10 and m["guards_measured"] == 10
    assert 0 < m["guard_pss_kib_p50"] < 4096
    assert 0 < m["rockerd_rss_kib"] < 1024 * 1024
    assert fig["memory"]["0"]["rockerd_rss_kib"] > 0
    assert fig["release_all"]["live"] == 10 and fig["release_all"]["guards_left"] == 0
    for label in ("0", "10", "0_after", "0_pooled"):
        for key in ("create_daemon_ms", "create_client_ms", "start_exec_ms", "teardown_ms"):
            _sane(fig["create_at_live"][label][key], 3)
            _sane(fig["create_at_live_ref"][label][key], 3)  # an empty rockerd, alternating with ours


def test_report_and_cleanliness(result: dict[str, Any]) -> None:
    assert result["leftovers"] == []
    assert not any(result["errors"]["counts"].values()), result["errors"]
    assert result["anchors"] == {}
    assert len(result["targets"]) == 19
    by = {t["target"]: t for t in result["targets"]}
    assert by["(c) teardown p50 <= 100 ms"]["value"] == result["figures"]["teardown_ms"]["p50"]
    assert all(t["met"] is None for t in result["targets"] if t["target"].startswith("(a)"))  # no anchors
    assert not os.path.exists(result["workdir"])
