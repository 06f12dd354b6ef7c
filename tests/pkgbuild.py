"""Build small squashfs app packages for tests, the same way a real package is shipped.

Use ``build_pkg`` directly, or register this module (``pytest_plugins = ["pkgbuild"]``) for the
``pkg`` fixture.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path, PurePosixPath

import pytest

__all__ = ["DATA_TXT", "HELLO_OUTPUT", "HELLO_SCRIPT", "build_pkg", "pkg"]

HELLO_OUTPUT = "hello from rocker"
HELLO_SCRIPT = f"#!/bin/sh\necho '{HELLO_OUTPUT}'\n".encode()
DATA_TXT = b"rocker test data\n"


def _parts(rel: str) -> tuple[str, ...]:
    """Refuse paths that would escape the staging dir or name it, so a typo cannot write elsewhere."""
    path = PurePosixPath(rel)
    if not rel or path.is_absolute() or any(p in ("", ".", "..") for p in rel.split("/")):
        raise ValueError(f"package path must be relative and normalised: {rel!r}")
    return path.parts


def build_pkg(dest_dir: Path, files: dict[str, tuple[bytes, int]], name: str = "app") -> Path:
    """Write `files` (relative path -> (content, mode)) into dest_dir/<name>.squashfs, owned by root.

    Parent directories are 0755 whatever the umask, so tests see the same modes everywhere.
    """
    if not name or "/" in name or name in (".", ".."):
        raise ValueError(f"bad package name {name!r}")
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    out = dest_dir / f"{name}.squashfs"
    with tempfile.TemporaryDirectory(prefix=f".{name}-root-", dir=dest_dir) as staging:
        root = Path(staging)
        root.chmod(0o755)  # becomes the mode of the package root (TemporaryDirectory makes it 0700)
        for rel, (content, mode) in files.items():
            parts = _parts(rel)
            parent = root
            for part in parts[:-1]:
                parent = parent / part
                if not parent.is_dir():
                    parent.mkdir()
                    parent.chmod(0o755)
            target = parent / parts[-1]
            target.write_bytes(content)
            os.chmod(target, mode)  # after writing: a 0o444 file would refuse the write otherwise
        proc = subprocess.run(
            ["mksquashfs", str(root), str(out), "-comp", "zstd", "-noappend", "-quiet", "-all-root"],
            capture_output=True, text=True, check=False,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"mksquashfs failed ({proc.returncode}): {proc.stderr.strip() or proc.stdout.strip()}")
    return out


@pytest.fixture
def pkg(tmp_path: Path) -> Path:
    """A package with an executable bin/hello and a plain share/data.txt."""
    return build_pkg(tmp_path, {"bin/hello": (HELLO_SCRIPT, 0o755), "share/data.txt": (DATA_TXT, 0o644)})
