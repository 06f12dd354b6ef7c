"""The session-wide leak check sees what it promises to see (a check that cannot fail hides leaks)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import leakcheck
import pytest


@pytest.mark.no_leakcheck  # the test makes the leak on purpose and removes it itself
def test_a_test_temp_dir_left_behind_is_a_leak() -> None:
    scanner = leakcheck.Scanner()
    try:
        before = scanner.snapshot()
        d = Path(tempfile.mkdtemp(prefix="rocker-test-", dir="/tmp"))
        try:
            (d / "hung").mkdir()
            leaks = leakcheck.leaks_between(scanner, before, grace=0)
            assert [str(r) for r in leaks] == [f"tempdir: {d}"]
        finally:
            (d / "hung").rmdir()
            d.rmdir()
        assert leakcheck.leaks_between(scanner, before, grace=0) == []
    finally:
        scanner.close()
