"""The guard: PID 1 of every rocker's PID namespace.

The guard keeps a rocker alive while anything runs in it and ends it (by
exiting, which makes the kernel kill the namespace) once it is empty, once
nobody entered within the first-entry timeout, or after a forwarded SIGTERM.
See rocker-guard.c for the argv contract and exit codes.

Why C and not Python: there is one guard per idle rocker, so its memory is
the per-rocker floor. A forked Python guard costs about 1.8 MiB PSS even
after gc.freeze() (refcount writes dirty the inherited pages), a static C
one about 60 KiB: 48 KiB of its own plus its share of the binary's pages,
which all guards share. The binary is compiled by setup.py when the package is
installed (``pip install .`` or ``pip install -e .``) and lives next to this
file as ``rocker-guard``, with ``librocker-spawn.so``, which starts it in its
namespaces without forking the daemon's Python image (rocker-spawn.c says why).
"""

from __future__ import annotations

import os

__all__ = ["guard_binary", "spawn_library"]

_BUILD_HINT = "build it by reinstalling the package: pip install -e . (or pip install .) from the rocker checkout"


def guard_binary() -> str:
    """Path of the guard executable; ``$ROCKER_GUARD`` overrides the installed one.

    Raises FileNotFoundError when it is missing or not executable.
    """
    return _native("ROCKER_GUARD", "rocker-guard", "rocker guard binary")


def spawn_library() -> str:
    """Path of the spawner library; ``$ROCKER_SPAWN_LIB`` overrides the installed one."""
    return _native("ROCKER_SPAWN_LIB", "librocker-spawn.so", "guard spawner library")


def _native(env: str, name: str, what: str) -> str:
    override = os.environ.get(env)
    path = override or os.path.join(os.path.dirname(os.path.abspath(__file__)), name)
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        source = f"${env}" if override else "the installed package"
        raise FileNotFoundError(f"{what} {path!r} (from {source}) is missing or not executable; {_BUILD_HINT}")
    return path
