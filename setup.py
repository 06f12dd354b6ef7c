"""Build hook: compile the C guard (rockerd/guard/rocker-guard.c) during the package build.

All metadata lives in pyproject.toml. This file only adds:
- build_py compiles the guard into the built package (``pip install .``) or,
  in editable mode (``pip install -e .``), next to its source, where the
  editable install finds the package;
- a Distribution that says it has extension modules, so the wheel is tagged
  for this platform instead of ``py3-none-any``.

The guard is linked statically when possible (smallest memory per rocker),
dynamically otherwise; the build fails if it cannot be compiled at all.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys

from setuptools import Distribution, setup
from setuptools.command.build_py import build_py
from setuptools.errors import CompileError

HERE = os.path.dirname(os.path.abspath(__file__))
GUARD_DIR = os.path.join("rockerd", "guard")
GUARD_SRC = os.path.join(HERE, GUARD_DIR, "rocker-guard.c")
GUARD_BIN = "rocker-guard"

CFLAGS = ["-Os", "-Wall", "-Wextra", "-Werror", "-s",
          "-ffunction-sections", "-fdata-sections", "-Wl,--gc-sections"]


def compile_guard(out: str) -> None:
    """Compile the guard to `out` (atomically: a running guard may be using the old file)."""
    cc = shlex.split(os.environ.get("CC") or "cc")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    tmp = f"{out}.tmp{os.getpid()}"
    failures = []
    for link in (["-static"], []):
        cmd = [*cc, *CFLAGS, *link, "-o", tmp, GUARD_SRC]
        print("compiling the guard:", shlex.join(cmd), file=sys.stderr)
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        except OSError as e:
            raise CompileError(f"cannot run the C compiler {cc[0]!r} to build the rocker guard: {e}") from e
        if proc.returncode == 0:
            os.chmod(tmp, 0o755)
            os.replace(tmp, out)
            if link:
                print(f"built static guard {out}", file=sys.stderr)
            else:
                print(f"WARNING: static linking failed, built a dynamic guard {out}\n"
                      f"{failures[0]}", file=sys.stderr)
            return
        failures.append(f"$ {shlex.join(cmd)}\n{proc.stdout}{proc.stderr}")
    _unlink_if_exists(tmp)
    raise CompileError("cannot compile the rocker guard:\n" + "\n".join(failures))


def _unlink_if_exists(path: str) -> None:
    if os.path.exists(path):
        os.unlink(path)


class BuildPyWithGuard(build_py):
    """build_py that also compiles the guard as package data."""

    def _guard_target(self) -> str:
        if getattr(self, "editable_mode", False):
            return os.path.join(HERE, GUARD_DIR, GUARD_BIN)  # the editable install imports from here
        return os.path.join(self.build_lib, GUARD_DIR, GUARD_BIN)

    def run(self) -> None:
        super().run()  # first: it may copy a stale binary from the source tree, which we replace
        compile_guard(self._guard_target())

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        outputs = super().get_outputs(include_bytecode)
        target = self._guard_target()
        if not getattr(self, "editable_mode", False) and target not in outputs:
            outputs.append(target)
        return outputs


class PlatformDistribution(Distribution):
    """The package ships a native executable: the wheel must be platform-specific."""

    def has_ext_modules(self) -> bool:
        return True


setup(distclass=PlatformDistribution, cmdclass={"build_py": BuildPyWithGuard})
