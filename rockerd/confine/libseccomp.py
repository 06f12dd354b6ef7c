"""A small ctypes layer over libseccomp.so.2: just what compiling a Policy to BPF needs.

Why ctypes and not a binding: libseccomp2 is on every Debian-like system (systemd, runc and
apt depend on it), while its Python binding (the Cython `seccomp` module) is not on PyPI and
exists only as a distribution package (python3-seccomp); a dozen typed entry points are less
than another build dependency. The C library does the architecture's syscall table, the
argument comparisons on 32/64-bit halves and the ABI checks, which are the parts easy to get wrong.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
from functools import cache
from typing import Any, Final

__all__ = ["ACT_ALLOW", "ACT_LOG", "Filter", "LibseccompMissing", "act_errno", "native_arch", "resolve"]

ACT_ALLOW: Final = 0x7FFF0000
ACT_LOG: Final = 0x7FFC0000
_ACT_ERRNO: Final = 0x00050000
_ATTR_ACT_BADARCH: Final = 2
_ATTR_CTL_NNP: Final = 3  # libseccomp would set no_new_privs itself on load; we only export
_CMP = {"!=": 1, "<": 2, "<=": 3, "==": 4, ">=": 5, ">": 6}
_CMP_MASKED_EQ: Final = 7


def act_errno(err: int) -> int:
    return _ACT_ERRNO | (err & 0xFFFF)


class LibseccompMissing(OSError):
    """libseccomp.so.2 cannot be loaded."""


class _ArgCmp(ctypes.Structure):
    """struct scmp_arg_cmp (seccomp.h)."""

    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int), ("datum_a", ctypes.c_uint64),
                ("datum_b", ctypes.c_uint64)]


@cache
def _lib() -> Any:
    name = ctypes.util.find_library("seccomp") or "libseccomp.so.2"
    try:
        lib = ctypes.CDLL(name, use_errno=True)
    except OSError as e:
        raise LibseccompMissing(errno.ENOENT, f"cannot load {name}: {e} (install libseccomp2)") from None
    lib.seccomp_init.argtypes, lib.seccomp_init.restype = [ctypes.c_uint32], ctypes.c_void_p
    lib.seccomp_release.argtypes, lib.seccomp_release.restype = [ctypes.c_void_p], None
    lib.seccomp_attr_set.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32]
    lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint,
                                           ctypes.POINTER(_ArgCmp)]
    lib.seccomp_export_bpf.argtypes = [ctypes.c_void_p, ctypes.c_int]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_arch_native.argtypes, lib.seccomp_arch_native.restype = [], ctypes.c_uint32
    for fn in (lib.seccomp_attr_set, lib.seccomp_rule_add_array, lib.seccomp_export_bpf,
               lib.seccomp_syscall_resolve_name):
        fn.restype = ctypes.c_int
    return lib


def native_arch() -> int:
    """The host's AUDIT_ARCH_* (libseccomp's SCMP_ARCH_* tokens are those values)."""
    return int(_lib().seccomp_arch_native())


def resolve(name: str) -> int:
    """The syscall's number on the host's architecture; < 0 if it has none here."""
    return int(_lib().seccomp_syscall_resolve_name(name.encode()))


def _check(rc: int, call: str, what: str) -> None:
    if rc < 0:
        raise OSError(-rc, f"{call}({what}): {os.strerror(-rc)}")


class Filter:
    """One libseccomp filter context for the host's architecture only (any other ABI: badarch)."""

    def __init__(self, default: int, badarch: int) -> None:
        self._lib = _lib()
        self._ctx = self._lib.seccomp_init(default)
        if not self._ctx:
            raise OSError(errno.EINVAL, f"seccomp_init({default:#x}) failed")
        _check(self._lib.seccomp_attr_set(self._ctx, _ATTR_ACT_BADARCH, badarch), "seccomp_attr_set", "badarch")
        _check(self._lib.seccomp_attr_set(self._ctx, _ATTR_CTL_NNP, 0), "seccomp_attr_set", "nnp")

    def add(self, action: int, nr: int, conds: list[tuple[int, str, int, int | None]], what: str) -> None:
        """conds: (arg, op, value, mask or None); all must hold."""
        arr = (_ArgCmp * max(1, len(conds)))()
        for i, (arg, op, value, mask) in enumerate(conds):
            arr[i] = (_ArgCmp(arg, _CMP_MASKED_EQ, mask, value) if mask is not None
                      else _ArgCmp(arg, _CMP[op], value, 0))
        _check(self._lib.seccomp_rule_add_array(self._ctx, action, nr, len(conds), arr), "seccomp_rule_add", what)

    def export_bpf(self, fd: int) -> None:
        _check(self._lib.seccomp_export_bpf(self._ctx, fd), "seccomp_export_bpf", f"fd {fd}")

    def close(self) -> None:
        if self._ctx:
            self._lib.seccomp_release(self._ctx)
            self._ctx = None

    def __enter__(self) -> Filter:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
