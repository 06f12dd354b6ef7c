"""rocker(1), rockerd(8) and the completions: generated from the CLI's own help, found where users look."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from rocker_client import cli

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = ROOT / ".venv" / "bin"


def _man(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PATH": f"{VENV_BIN}:/usr/bin:/bin", "MANWIDTH": "100", "MANPAGER": "cat", "PAGER": "cat"}
    env.pop("MANPATH", None)
    return subprocess.run(["man", *args], capture_output=True, text=True, env=env, timeout=60, check=False)


@pytest.mark.skipif(not (VENV_BIN / "rocker").exists(), reason="needs scripts/setup.sh's venv")
def test_man_finds_both_pages_after_the_setup() -> None:
    """With .venv/bin on PATH (docs/quickstart.md), `man rocker` and `man 8 rockerd` work."""
    assert _man("-w", "rocker").stdout.strip() == str(ROOT / ".venv/share/man/man1/rocker.1")
    page = _man("rocker").stdout
    for name, p in cli.PAGES.items():
        assert (name == "rocker" or f"rocker {name} - {p.summary}" in page), name
    for option in ("--pkg-sha256", "--env-file", "--clear-env", "--overlay", "--signal"):
        assert option in page, option
    assert "--socket-group" in _man("8", "rockerd").stdout


def _complete(line: str) -> list[str]:
    """What bash offers for `line` (the cursor at its end), from the generated completion."""
    words = line.split(" ")
    script = (f"source {ROOT / 'share/bash-completion/completions/rocker'}\n"
              f"COMP_WORDS=({' '.join(repr(w) for w in words)}); COMP_CWORD={len(words) - 1}\n"
              "_rocker; printf '%s\\n' \"${COMPREPLY[@]}\"")
    res = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=30, check=False,
                         env={"PATH": "/usr/bin:/bin"})
    return sorted(w for w in res.stdout.splitlines() if w)


def test_bash_completes_commands_and_options() -> None:
    assert _complete("rocker e") == ["exec"]
    assert set(_complete("rocker ")) >= set(cli.PAGES) - {"rocker"}
    assert _complete("rocker run --pkg-") == ["--pkg-sha256"]
    assert _complete("rocker --socket /x exec --cl") == ["--clear-env"]
    assert _complete("rocker kill -") == ["--help", "--signal", "--socket", "-h", "-s"]
