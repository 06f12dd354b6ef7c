"""Print one `RESULT file ... time=Ns` line per test file from a pytest JUnit XML report.

scripts/test-vm.sh --grouped runs many files in one pytest (in the emulated VM pytest's own start
costs ~40 s a file) and still gives the per-file table of docs/testing.md from this summary.
"""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ET
from collections import defaultdict


def per_file(report: str) -> dict[str, dict[str, float]]:
    """{file: {passed, failed, skipped, time}}, files in the order pytest ran them."""
    out: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for case in ET.parse(report).getroot().iter("testcase"):
        parts = (case.get("classname") or "?").split(".")  # tests.test_x[.TestClass]
        f = case.get("file") or "/".join(parts[:2]) + ".py"
        row = out[f]
        row["time"] += float(case.get("time") or 0)
        kinds = {child.tag for child in case}
        if kinds & {"failure", "error"}:
            row["failed"] += 1
        elif "skipped" in kinds:
            row["skipped"] += 1
        else:
            row["passed"] += 1
    return out


def main(report: str) -> int:
    worst = 0
    for f, row in per_file(report).items():
        rc = 1 if row["failed"] else 0
        worst = max(worst, rc)
        counts = ", ".join(f"{int(row[k])} {k}" for k in ("passed", "failed", "skipped") if row[k])
        print(f"RESULT {f} rc={rc} time={row['time']:.0f}s {counts}")
    return worst


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
