"""The client's native helper, compiled by setup.py when the package is installed.

``librocker-exec.so`` (rocker-exec.c with rocker-join.c) starts a program as an app
in a rocker without forking the caller (``rocker_exec``, see rocker_client/execapp.py),
and joins a rocker in one call from a forked child (``rocker_join``). The join is
rocker-join.c's, the same code the C client (clients/c) runs. It is required: a
client without it cannot enter a rocker (NativeMissing says how to get it).
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable
from functools import cache

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs every start of the CLI (issue 21); annotations only
    from typing import Any

__all__ = ["JoinFailed", "NativeMissing", "Spec", "SyscallFilter", "app_cap_mask", "exec_library", "library",
           "prepare_join", "read_filter"]


class NativeMissing(OSError):
    """librocker-exec.so is not there or does not load: the package was not built."""


def exec_library() -> str:
    """Path of librocker-exec.so; ``$ROCKER_EXEC_LIB`` overrides the installed one."""
    return os.environ.get("ROCKER_EXEC_LIB") or os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                             "librocker-exec.so")


class Spec(ctypes.Structure):
    """struct rocker_exec (rocker-exec.c; tests/test_native_layout.py checks the layout)."""

    _fields_ = [
        ("ns_fds", ctypes.c_int * 6),
        ("own_pid_ns", ctypes.c_int),
        ("report_fd", ctypes.c_int),
        ("path", ctypes.c_char_p),
        ("argv", ctypes.POINTER(ctypes.c_char_p)),
        ("envp", ctypes.POINTER(ctypes.c_char_p)),
        ("stack", ctypes.c_void_p),
        ("stack_size", ctypes.c_size_t),
        ("cgroup_fds", ctypes.POINTER(ctypes.c_int)),
        ("n_cgroup_fds", ctypes.c_int),
        ("filter", ctypes.c_void_p),  # const struct sock_fprog *: the app's syscall filter, NULL for none
        ("cwd", ctypes.c_char_p),
    ]

    def set_cgroups(self, fds: list[int]) -> None:
        """The rocker's cgroup.procs fds (from the Create reply); the array lives as long as the spec."""
        self._cgroups = (ctypes.c_int * max(1, len(fds)))(*fds)
        self.cgroup_fds, self.n_cgroup_fds = self._cgroups, len(fds)


class _SockFprog(ctypes.Structure):
    """struct sock_fprog (linux/filter.h)."""

    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


_INSN = 8  # sizeof(struct sock_filter)
_MAX_INSNS = 4096  # BPF_MAXINSNS


class SyscallFilter:
    """The app's seccomp program, read from rockerd's memfd before any fork or clone, so that the
    joining process only hands the kernel a pointer (rocker-seccomp.h). Keeps its buffer alive."""

    def __init__(self, program: bytes) -> None:
        if not program or len(program) % _INSN or len(program) // _INSN > _MAX_INSNS:
            raise ValueError(f"a seccomp program of {len(program)} bytes is not 1..{_MAX_INSNS} instructions")
        self._buf = ctypes.create_string_buffer(program, len(program))
        self._prog = _SockFprog(len(program) // _INSN, ctypes.addressof(self._buf))

    @property
    def address(self) -> int:
        return ctypes.addressof(self._prog)


def read_filter(fd: int) -> SyscallFilter:
    """The program in rockerd's sealed memfd (pread: its offset is shared with every holder)."""
    size = os.fstat(fd).st_size
    chunks, got = [], 0
    while got < size:
        chunk = os.pread(fd, size - got, got)
        if not chunk:
            break
        chunks.append(chunk)
        got += len(chunk)
    return SyscallFilter(b"".join(chunks))


@cache
def library() -> Any:
    """The loaded library with its entry points typed; NativeMissing if it cannot be had."""
    path = exec_library()
    try:
        lib = ctypes.CDLL(path)
        lib.rocker_exec.argtypes = [ctypes.POINTER(Spec), ctypes.POINTER(ctypes.c_int)]
        lib.rocker_exec.restype = ctypes.c_int
        lib.rocker_join.argtypes = [ctypes.POINTER(Spec), ctypes.c_int, ctypes.POINTER(ctypes.c_char_p)]
        lib.rocker_join.restype = ctypes.c_int
        lib.rocker_app_cap_mask.argtypes = []
        lib.rocker_app_cap_mask.restype = ctypes.c_ulonglong
    except (OSError, AttributeError) as e:
        raise NativeMissing(f"cannot load {path}: {e}: rocker_client's native part was not built; reinstall "
                            "the package (`pip install` compiles it; it needs a C compiler)") from None
    return lib


def app_cap_mask() -> int:
    """The capabilities an app keeps in its rocker, as a bit mask (rocker-join.h)."""
    return int(library().rocker_app_cap_mask())


class JoinFailed(Exception):
    """A step of joining the rocker failed: which one, and the errno."""

    def __init__(self, step: str, err: int) -> None:
        super().__init__(step, err)
        self.step, self.errno = step, err


def prepare_join(ns_fds: list[int], cgroup_fds: list[int] | None = None,
                 syscall_filter: SyscallFilter | None = None) -> Callable[[bool], None]:
    """A join for a forked child, built before the fork so that the child only makes the call
    (rocker-join.h says what it does; `syscall_filter` is installed last). The call raises
    JoinFailed naming the step."""
    spec = Spec((ctypes.c_int * 6)(*ns_fds), -1, -1, None, None, None, None, 0,
                filter=syscall_filter.address if syscall_filter else None)
    spec.set_cgroups(cgroup_fds or [])
    step = ctypes.c_char_p()
    fn, ref_spec, ref_step = library().rocker_join, ctypes.byref(spec), ctypes.byref(step)

    def join(with_pid: bool) -> None:
        _keep = syscall_filter  # the program must outlive every call
        rc = fn(ref_spec, 1 if with_pid else 0, ref_step)
        if rc < 0:
            raise JoinFailed((step.value or b"join").decode(), -rc)

    return join
