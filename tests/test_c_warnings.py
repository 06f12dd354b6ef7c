"""One warning set for all of rocker's C: setup.py (guard, librocker-spawn, librocker-exec),
clients/c/Makefile and bench/ build with the same flags, and every C file in the tree
compiles cleanly with them (a new file too: the list is `git ls-files`)."""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from bench.cclient import WARN as BENCH_WARN

ROOT = Path(__file__).resolve().parent.parent


def setup_py_warn() -> list[str]:
    tree = ast.parse((ROOT / "setup.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "WARN" for t in node.targets):
            return list(ast.literal_eval(node.value))
    raise AssertionError("setup.py has no WARN")


def makefile_warn() -> list[str]:
    m = re.search(r"^WARN := (.*)$", (ROOT / "clients/c/Makefile").read_text(), re.M)
    assert m, "clients/c/Makefile has no WARN"
    return m.group(1).split()


def test_one_warning_set_everywhere() -> None:
    want = ["-std=gnu11", "-Wall", "-Wextra", "-Werror", "-Wshadow", "-Wmissing-prototypes", "-Wstrict-prototypes"]
    assert setup_py_warn() == makefile_warn() == BENCH_WARN == want


def c_files() -> list[str]:
    out = subprocess.run(["git", "ls-files", "*.c"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return out.split()


@pytest.mark.skipif(shutil.which("cc") is None or shutil.which("git") is None, reason="needs cc and git")
@pytest.mark.parametrize("src", c_files())
def test_every_c_file_compiles_with_the_warning_set(src: str) -> None:
    inc = [f"-I{ROOT / d}" for d in ("clients/c", "rocker_client/_native")]
    proc = subprocess.run(["cc", "-fsyntax-only", *setup_py_warn(), *inc, str(ROOT / src)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
