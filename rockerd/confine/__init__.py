"""The app's syscall filter: default.policy compiled once, at rockerd's start, into sealed memfds.

Each profile is a classic-BPF seccomp program for the host's architecture in a memfd sealed
against any change; the Create reply sends its fd beside the namespace fds, and every launcher
(rocker-join.c, in the Python and the C client alike) installs those bytes in the app as the
last step of its join. One compiler, one program: the clients cannot drift apart.

Profiles: `default` (default.policy), `nested` (default less its CLONE_NEWUSER rules: the app may
make user namespaces), `complain` (default's rules, each denial turned into SECCOMP_RET_LOG: allowed,
and logged by the kernel/audit), `unconfined` (no filter, no fd).
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
from . import libseccomp, prefix
from .policy import ALLOW, DEFAULT_POLICY, NOTIN, Policy, load

__all__ = ["NESTED", "PROFILES", "UNCONFINED", "Filters", "check", "compile_profile", "users_may_make_user_namespaces"]

log = logging.getLogger("rockerd")

UNCONFINED: Final = "unconfined"
NESTED: Final = "nested"
PROFILES: Final = ("default", NESTED, "complain", UNCONFINED)  # request.py's seccomp values, in this order
ROOT_ONLY: Final = frozenset({UNCONFINED, "complain"})  # both let every syscall through
# Sysctls that keep a host's users from making user namespaces (absent: no such restriction):
# Debian's and Ubuntu's kernels, Ubuntu's AppArmor (23.10 on), and the limit every kernel has.
USERNS_SYSCTLS: Final = (("kernel/unprivileged_userns_clone", lambda v: v != 0),
                         ("kernel/apparmor_restrict_unprivileged_userns", lambda v: v == 0),
                         ("user/max_user_namespaces", lambda v: v > 0))

_BPF_INSN: Final = struct.Struct("=HBBI")  # struct sock_filter
_RET_ERRNO: Final = 0x00050000
_SEALS: Final = fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE


def _action(word: str, complain: bool) -> int:
    if word == ALLOW:
        return libseccomp.ACT_ALLOW
    return libseccomp.ACT_LOG if complain else libseccomp.act_errno(getattr(errno, word))


def compile_profile(policy: Policy, complain: bool = False, profile: str = "default") -> bytes:
    """The profile's rules as a BPF program (struct sock_filter[]) for the host's architecture."""
    notin: list[prefix.NotIn] = []
    with libseccomp.Filter(_action(policy.default, complain), _action(policy.badarch, complain)) as f:
        for rule in policy.rules_of(profile):
            nr = libseccomp.resolve(rule.syscall)
            if nr < 0:  # not on this architecture (vm86, create_module, ...)
                continue
            if rule.conds and rule.conds[0].op == NOTIN:  # policy.py: then it is the rule's only condition
                c = rule.conds[0]
                notin.append(prefix.NotIn(nr, c.arg, c.mask or 0xFFFFFFFF, c.values, _action(rule.action, complain)))
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
    above = None if policy.unknown_above is None else (policy.unknown_above, _action(policy.unknown_action, complain))
    prog = prefix.build(libseccomp.native_arch(), above, notin) + prog
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
        progs = {name: compile_profile(policy, profile=name) for name in ("default", *policy.profiles)}
        progs["complain"] = compile_profile(policy, complain=True)
        if set(progs) | {UNCONFINED} != set(PROFILES):
            raise ValueError(f"{path}: profiles {sorted(progs)}, but requests name {PROFILES}")
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


def users_may_make_user_namespaces(sysctl_dir: str = "/proc/sys") -> bool:
    """Whether this host lets an unprivileged user create a user namespace of its own. Then the
    nested profile gives an app nothing its caller could not have with `unshare -U`."""
    for name, allows in USERNS_SYSCTLS:
        try:
            with open(os.path.join(sysctl_dir, name), "rb") as f:
                value = int(f.read())
        except FileNotFoundError:
            continue
        if not allows(value):
            return False
    return True


def check(profile: str, caller_uid: int, sysctl_dir: str = "/proc/sys") -> None:
    """policy.Denied naming the field if this caller may not have this profile: only root may lift the
    filter; nested user namespaces only root, or anyone where the host lets users make them."""
    if caller_uid == 0:
        return
    if profile in ROOT_ONLY:
        raise Denied(f"seccomp: only root may ask for {profile!r} (it lets every syscall through)")
    if profile == NESTED and not users_may_make_user_namespaces(sysctl_dir):
        raise Denied(f"seccomp: only root may ask for {profile!r} here: this host keeps its users from "
                     "making user namespaces (kernel.unprivileged_userns_clone, "
                     "kernel.apparmor_restrict_unprivileged_userns or user.max_user_namespaces)")
