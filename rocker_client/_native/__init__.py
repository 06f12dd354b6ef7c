"""The client's native helper, compiled by setup.py when the package is installed.

``librocker-exec.so`` (rocker-exec.c) starts a program as an app in a rocker
without forking the caller (see rocker_client/execapp.py). It is optional: where
it is missing, an ``Exec`` app takes the fork path like any other callable.
"""

from __future__ import annotations

import os

__all__ = ["exec_library"]


def exec_library() -> str | None:
    """Path of librocker-exec.so; ``$ROCKER_EXEC_LIB`` overrides the installed one. None if absent."""
    path = os.environ.get("ROCKER_EXEC_LIB") or os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                             "librocker-exec.so")
    return path if os.path.isfile(path) else None
