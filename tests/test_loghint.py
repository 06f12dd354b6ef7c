"""Error lines point at rockerd's log only where the reader can look, and at the right place."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from daemon import Daemon

from rocker_client.cli.loghint import log_hint

ROOT = Path(__file__).resolve().parent.parent


def test_root_is_told_where_rockerds_stderr_goes(rockerd: Daemon, base: Path, pkg: Path) -> None:
    """The test daemon is no systemd service; its stderr is a file: a build failure names that file."""
    assert log_hint(rockerd.socket) == f"see rockerd's stderr, {rockerd.log}"
    (base / "afile").write_text("")
    res = subprocess.run([sys.executable, "-m", "rocker_client.cli", "--socket", rockerd.socket, "run", "--pkg",
                          str(pkg), "--exec-dir", str(base / "afile"), "--data-dir", str(base / "data"), "--", "true"],
                         capture_output=True, text=True, timeout=60, check=False)
    assert res.returncode == 125
    assert res.stderr.startswith("rocker: rockerd could not build the rocker: ")
    assert res.stderr.endswith(f": see rockerd's stderr, {rockerd.log} for more\n"), res.stderr
    assert "journalctl" not in res.stderr


def test_no_hint_for_a_user_who_cannot_read_it(rockerd: Daemon) -> None:
    code = f"import sys; sys.path.insert(0, {str(ROOT)!r}); from rocker_client.cli.loghint import log_hint; " \
           f"print(repr(log_hint({rockerd.socket!r})))"
    res = subprocess.run(["/usr/bin/python3", "-I", "-c", code], user=1000, group=1000, extra_groups=[],
                         capture_output=True, text=True, timeout=30, check=False)
    assert res.stdout == "''\n", res
