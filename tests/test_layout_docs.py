"""README's Layout section matches the tree: every top-level folder and file, every package, and
every module of the daemon, the client and the kernel layer is named there (a new module is
described where a newcomer looks first)."""

from __future__ import annotations

import subprocess
from pathlib import Path, PurePosixPath

import pytest

ROOT = Path(__file__).resolve().parent.parent


def layout_section() -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index("## Layout\n")
    return text[start:text.index("\n## ", start + 1)]


@pytest.mark.skipif(not (ROOT / ".git").exists(), reason="needs the git checkout")
def test_readme_layout_names_every_folder_and_module() -> None:
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    layout = layout_section()
    missing = []
    for f in files:
        p = PurePosixPath(f)
        top = p.parts[0]
        if f == "README.md" or (top.startswith(".") and top != ".ci"):
            continue  # the README itself; .gitignore, .clang-format: tool settings
        if top not in layout:
            missing.append(top)
        if len(p.parts) >= 3 and p.parts[0] in ("rockerd", "rocker_client") and f"{p.parts[1]}/" not in layout:
            missing.append(f"{p.parts[0]}/{p.parts[1]}/")
        if p.suffix == ".py" and p.parts[0] in ("rockerd", "rocker_client", "rocker_sys") and len(p.parts) <= 3 \
                and p.name not in ("__init__.py", "__main__.py") and p.parent.name != "cli" \
                and p.stem not in layout:
            missing.append(f)
    assert not sorted(set(missing)), f"not in README's Layout: {sorted(set(missing))}"
