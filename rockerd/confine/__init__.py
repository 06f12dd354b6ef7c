"""The app's syscall filter: default.policy compiled once, at rockerd's start, into sealed memfds.

Each profile is a classic-BPF seccomp program for the host's architecture in a memfd sealed
against any change; the Create reply sends its fd beside the namespace fds, and every launcher
(rocker-join.c, in the Python and the C client alike) installs those bytes in the app as the
last step of its join. One compiler, one program: the clients cannot drift apart.

Profiles: `default` (default.policy), `complain` (the same rules, each denial turned into
SECCOMP_RET_LOG: allowed, and logged by the kernel/audit), `unconfined` (no filter, no fd).
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import struct
import time
from dataclasses import dataclass
from typing import Final

from ..policy import Denied
from . import libseccomp
from .policy import ALLOW, DEFAULT_POLICY, Policy, load

__all__ = ["PROFILES", "UNCONFINED", "Filters", "check", "compile_profile"]

log = logging.getLogger("rockerd")

UNCONFINED: Final = "unconfined"
PROFILES: Final = ("default", "complain", UNCONFINED)
ROOT_ONLY: Final = frozenset({UNCONFINED, "complain"})  # both let every syscall through

_BPF_INSN: Final = struct.Struct("=HBBI")  # struct sock_filter
_RET_ERRNO: Final = 0x00050000
_SEALS: Final = fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE


def _action(word: str, complain: bool) -> int:
    if word == ALLOW:
        return libseccomp.ACT_ALLOW
    return libseccomp.ACT_LOG if complain else libseccomp.act_errno(getattr(errno, word))


def _unknown_prefix(arch: int, above: int, action: int) -> bytes:
    """BPF run before libseccomp's program: on the host's ABI, a syscall numbered above `above`
    (newer than the policy) gets `action`. Jumps are relative, so the program after it is unchanged."""
    ld_w_abs, jeq_k, jgt_k, ret_k = 0x20, 0x15, 0x25, 0x06
    return b"".join(_BPF_INSN.pack(*i) for i in (
        (ld_w_abs, 0, 0, 4),      # seccomp_data.arch
        (jeq_k, 0, 3, arch),      # another ABI: straight to libseccomp's program (its badarch)
        (ld_w_abs, 0, 0, 0),      # seccomp_data.nr
        (jgt_k, 0, 1, above),
        (ret_k, 0, 0, action),
    ))


def compile_profile(policy: Policy, complain: bool = False) -> bytes:
    """The policy as a BPF program (struct sock_filter[]) for the host's architecture."""
    with libseccomp.Filter(_action(policy.default, complain), _action(policy.badarch, complain)) as f:
        for rule in policy.rules:
            nr = libseccomp.resolve(rule.syscall)
            if nr < 0:  # not on this architecture (vm86, create_module, ...)
                continue
            conds = [(c.arg, c.op, c.value, c.mask) for c in rule.conds]
            f.add(_action(rule.action, complain), nr, conds, f"{rule.syscall} (line {rule.line})")
        tmp = os.memfd_create("rocker-seccomp-export", os.MFD_CLOEXEC)
        try:
            f.export_bpf(tmp)
            size = os.fstat(tmp).st_size
            prog = os.pread(tmp, size, 0)
        finally:
            os.close(tmp)
    if policy.unknown_above is not None:
        prog = _unknown_prefix(libseccomp.native_arch(), policy.unknown_above,
                               _action(policy.unknown_action, complain)) + prog
    if not prog or len(prog) % _BPF_INSN.size or len(prog) // _BPF_INSN.size > 4096:
        raise OSError(errno.E2BIG, f"seccomp program of {len(prog)} bytes: not 1..4096 instructions")
    return prog


def _sealed_memfd(name: str, data: bytes) -> int:
    fd = os.memfd_create(f"rocker-seccomp-{name}", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        os.write(fd, data)
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _SEALS)
    except BaseException:
        os.close(fd)
        raise
    return fd


@dataclass
class Filters:
    """Each profile's sealed memfd (None: no filter), built once per daemon."""

    fds: dict[str, int | None]
    sizes: dict[str, int]

    @classmethod
    def build(cls, path: str = DEFAULT_POLICY) -> Filters:
        t0 = time.perf_counter()
        policy = load(path)
        progs = {"default": compile_profile(policy), "complain": compile_profile(policy, complain=True)}
        fds: dict[str, int | None] = {name: _sealed_memfd(name, prog) for name, prog in progs.items()}
        fds[UNCONFINED] = None
        sizes = {name: len(prog) // _BPF_INSN.size for name, prog in progs.items()}
        log.info("seccomp profiles compiled from %s in %.1f ms: %s", path, (time.perf_counter() - t0) * 1000,
                 ", ".join(f"{n} {s} instructions" for n, s in sizes.items()))
        return cls(fds, sizes)

    def reply_part(self, profile: str, fds: list[int]) -> dict[str, int]:
        """Add the profile's program to a Create reply's fds (a dup: a reply's fds are closed once
        sent) and say where it is: {"seccomp": index}, or {} for the unconfined profile."""
        fd = self.fds[profile]
        if fd is None:
            return {}
        fds.append(fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 0))
        return {"seccomp": len(fds) - 1}


def check(profile: str, caller_uid: int) -> None:
    """policy.Denied naming the field if this caller may not have this profile: only root may lift the filter."""
    if profile in ROOT_ONLY and caller_uid != 0:
        raise Denied(f"seccomp: only root may ask for {profile!r} (it lets every syscall through)")
