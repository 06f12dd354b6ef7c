"""The client's native helper, compiled by setup.py when the package is installed.

``librocker-exec.so`` (rocker-exec.c) starts a program as an app in a rocker
without forking the caller (``rocker_exec``, see rocker_client/execapp.py), and
joins a rocker in one call from a forked child (``rocker_join``). It is
optional: where it is missing, an ``Exec`` app takes the fork path like any
other callable, and the forked child joins through ctypes calls of its own.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable
from functools import cache
from typing import Any

__all__ = ["JoinFailed", "Spec", "exec_library", "library", "prepare_join"]


def exec_library() -> str | None:
    """Path of librocker-exec.so; ``$ROCKER_EXEC_LIB`` overrides the installed one. None if absent."""
    path = os.environ.get("ROCKER_EXEC_LIB") or os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                             "librocker-exec.so")
    return path if os.path.isfile(path) else None


class Spec(ctypes.Structure):
    """struct rocker_exec."""

    _fields_ = [
        ("ns_fds", ctypes.c_int * 6),
        ("own_pid_ns", ctypes.c_int),
        ("report_fd", ctypes.c_int),
        ("last_cap", ctypes.c_int),
        ("cap_keep", ctypes.c_ulonglong),
        ("path", ctypes.c_char_p),
        ("argv", ctypes.POINTER(ctypes.c_char_p)),
        ("envp", ctypes.POINTER(ctypes.c_char_p)),
        ("stack", ctypes.c_void_p),
        ("stack_size", ctypes.c_size_t),
    ]


@cache
def library() -> Any:
    """The loaded library with its entry points typed, or None."""
    path = exec_library()
    if path is None:
        return None
    try:
        lib = ctypes.CDLL(path)
        lib.rocker_exec.argtypes = [ctypes.POINTER(Spec), ctypes.POINTER(ctypes.c_int)]
        lib.rocker_exec.restype = ctypes.c_int
        lib.rocker_join.argtypes = [ctypes.POINTER(Spec), ctypes.c_int, ctypes.POINTER(ctypes.c_char_p)]
        lib.rocker_join.restype = ctypes.c_int
    except (OSError, AttributeError):
        return None
    return lib


class JoinFailed(Exception):
    """A step of joining the rocker failed: which one, and the error."""

    def __init__(self, stage: str, err: OSError) -> None:
        self.stage, self.err = stage, err


def prepare_join(ns_fds: list[int], last_cap: int, cap_keep: int) -> Callable[[bool], None] | None:
    """A join for a forked child, built before the fork so that the child only makes the call:
    setgroups, setns (the PID namespace too if asked), uid/gid 0, the capabilities, no_new_privs.
    None without the library. The call raises JoinFailed naming the step."""
    lib = library()
    if lib is None:
        return None
    spec = Spec((ctypes.c_int * 6)(*ns_fds), -1, -1, last_cap, cap_keep, None, None, None, None, 0)
    stage = ctypes.c_char_p()
    fn, ref_spec, ref_stage = lib.rocker_join, ctypes.byref(spec), ctypes.byref(stage)

    def join(with_pid: bool) -> None:
        rc = fn(ref_spec, 1 if with_pid else 0, ref_stage)
        if rc < 0:
            raise JoinFailed((stage.value or b"join").decode(), OSError(-rc, os.strerror(-rc)))

    return join
