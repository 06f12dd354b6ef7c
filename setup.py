"""Build hook: compile the C parts in rockerd/guard/ during the package build.

- rocker-guard (rocker-guard.c): PID 1 of every rocker, a static executable;
- librocker-spawn.so (rocker-spawn.c): how rockerd starts it, loaded with ctypes;
- librocker-exec.so (rocker_client/_native/rocker-exec.c): how the client starts
  an app that is a program without forking its caller, loaded with ctypes;
- rocker (clients/cli/*.c on clients/c): the `rocker` command, `rocker run` in C, every
  other command by the Python CLI (the console script rocker-py), installed as a script.

All metadata lives in pyproject.toml. This file only adds:
- build_py compiles both into the built package (``pip install .``) or,
  in editable mode (``pip install -e .``), next to their sources, where the
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
SPAWN_SRC = os.path.join(HERE, GUARD_DIR, "rocker-spawn.c")
SPAWN_LIB = "librocker-spawn.so"
NATIVE_DIR = os.path.join("rocker_client", "_native")
EXEC_SRC = os.path.join(HERE, NATIVE_DIR, "rocker-exec.c")
JOIN_SRC = os.path.join(HERE, NATIVE_DIR, "rocker-join.c")  # the join, shared with clients/c
SECCOMP_SRC = os.path.join(HERE, NATIVE_DIR, "rocker-seccomp.c")  # its syscall filter, shared too
EXEC_LIB = "librocker-exec.so"
CLIENT_DIR = os.path.join(HERE, "clients", "c")
FRONT_DIR = os.path.join(HERE, "clients", "cli")
FRONT_SRCS = [*(os.path.join(FRONT_DIR, f) for f in ("main.c", "place.c", "job.c")),
              os.path.join(CLIENT_DIR, "rocker_client.c"), os.path.join(CLIENT_DIR, "rkjson.c"), JOIN_SRC, SECCOMP_SRC]
FRONT_BIN = "rocker"

# The one warning set of all rocker's C (clients/c/Makefile and bench/ use it too; tests/test_c_warnings.py)
WARN = ["-std=gnu11", "-Wall", "-Wextra", "-Werror", "-Wshadow", "-Wmissing-prototypes", "-Wstrict-prototypes"]
CFLAGS = ["-Os", *WARN, "-s", "-ffunction-sections", "-fdata-sections", "-Wl,--gc-sections"]
SO_FLAGS = ["-O2", *WARN, "-s", "-shared", "-fPIC"]


def _compile(what: str, variants: list[list[str]], out: str) -> None:
    """Try each compiler command line in turn; install the first result at `out` atomically
    (a running guard may be using the old file)."""
    cc = shlex.split(os.environ.get("CC") or "cc")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    tmp = f"{out}.tmp{os.getpid()}"
    failures = []
    for i, args in enumerate(variants):
        cmd = [*cc, *args, "-o", tmp]
        print(f"compiling the {what}:", shlex.join(cmd), file=sys.stderr)
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        except OSError as e:
            raise CompileError(f"cannot run the C compiler {cc[0]!r} to build the {what}: {e}") from e
        if proc.returncode == 0:
            os.chmod(tmp, 0o755)
            os.replace(tmp, out)
            if i:
                print(f"WARNING: built a fallback {what} {out}\n{failures[0]}", file=sys.stderr)
            return
        failures.append(f"$ {shlex.join(cmd)}\n{proc.stdout}{proc.stderr}")
    _unlink_if_exists(tmp)
    raise CompileError(f"cannot compile the {what}:\n" + "\n".join(failures))


def compile_guard(out: str) -> None:
    """Static when possible: every idle rocker pays for its guard's pages."""
    _compile("rocker guard", [[*CFLAGS, "-static", GUARD_SRC], [*CFLAGS, GUARD_SRC]], out)


def compile_spawn_lib(out: str) -> None:
    _compile("guard spawner library", [[*SO_FLAGS, SPAWN_SRC]], out)


def compile_exec_lib(out: str) -> None:
    _compile("client's exec library", [[*SO_FLAGS, EXEC_SRC, JOIN_SRC, SECCOMP_SRC]], out)


def compile_front(out: str) -> None:
    """The `rocker` command; the Python CLI it hands over to is rocker-py beside it, else this interpreter."""
    python = sys.executable.replace("\\", "\\\\").replace('"', '\\"')
    _compile("rocker command (C front)", [["-O2", *WARN, "-s", f"-I{CLIENT_DIR}", f"-I{FRONT_DIR}",
                                           f"-I{os.path.join(HERE, NATIVE_DIR)}", f'-DROCKER_PYTHON="{python}"',
                                           *FRONT_SRCS]], out)


def _unlink_if_exists(path: str) -> None:
    if os.path.exists(path):
        os.unlink(path)


class BuildPyWithGuard(build_py):
    """build_py that also compiles the guard, its spawner and the client's exec library as package data."""

    def _target(self, name: str, where: str = GUARD_DIR) -> str:
        if getattr(self, "editable_mode", False):
            return os.path.join(HERE, where, name)  # the editable install imports from here
        return os.path.join(self.build_lib, where, name)

    def _native(self) -> list[str]:
        return [self._target(GUARD_BIN), self._target(SPAWN_LIB), self._target(EXEC_LIB, NATIVE_DIR)]

    def run(self) -> None:
        super().run()  # first: it may copy stale binaries from the source tree, which we replace
        guard, spawn, exec_lib = self._native()
        compile_guard(guard)
        compile_spawn_lib(spawn)
        compile_exec_lib(exec_lib)

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        outputs = super().get_outputs(include_bytecode)
        if not getattr(self, "editable_mode", False):
            outputs += [t for t in self._native() if t not in outputs]
        return outputs


def build_front_command() -> type:
    """build_scripts for the `rocker` script, a program compiled here (distutils' would read it as text).
    setuptools has no build_scripts of its own: distutils' is setuptools' copy once setuptools is imported."""
    from distutils.command.build_scripts import build_scripts

    class BuildFront(build_scripts):
        def run(self) -> None:
            self.mkpath(self.build_dir)
            compile_front(os.path.join(self.build_dir, FRONT_BIN))

        def get_outputs(self) -> list[str]:
            return [os.path.join(self.build_dir, FRONT_BIN)]

    return BuildFront


class PlatformDistribution(Distribution):
    """The package ships native code: the wheel must be platform-specific."""

    def has_ext_modules(self) -> bool:
        return True


# rocker(1), rockerd(8) and the completions (scripts/manpages.py) go to the environment's prefix:
# man(1) looks in PREFIX/share/man for programs in PREFIX/bin that are on PATH.
SHARE_FILES = [("share/man/man1", ["share/man/man1/rocker.1"]), ("share/man/man8", ["share/man/man8/rockerd.8"]),
               ("share/bash-completion/completions", ["share/bash-completion/completions/rocker"]),
               ("share/zsh/site-functions", ["share/zsh/site-functions/_rocker"])]

# scripts: what BuildFront makes (the source named only makes setuptools run it, and ship the source)
setup(distclass=PlatformDistribution, cmdclass={"build_py": BuildPyWithGuard, "build_scripts": build_front_command()},
      scripts=[os.path.join("clients", "cli", "main.c")], data_files=SHARE_FILES)
