"""The README's first command, `./scripts/demo.sh`, runs as it is written (on the venv as it is: no apt step).

It went red unnoticed when a root launcher's app became nobody by default (its app writes to /usr through the
overlay); this keeps the README's promise under test."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SLOW = float(os.environ.get("ROCKER_TEST_TIME_SCALE", "1"))


def test_the_readme_demo_runs_and_leaves_nothing() -> None:
    p = subprocess.run([str(ROOT / "scripts" / "demo.sh")], cwd=ROOT, capture_output=True, text=True,
                       timeout=180 * SLOW, env={**os.environ, "ROCKER_SKIP_SETUP": "1"})
    out = p.stdout + p.stderr
    assert p.returncode == 0, out
    assert "app: wrote /usr/share/rocker-demo-note.txt" in out, out
    assert "the host's /usr/share/rocker-demo-note.txt does not exist" in out, out
    assert "done: nothing left behind" in out, out
    assert not Path("/usr/share/rocker-demo-note.txt").exists()
