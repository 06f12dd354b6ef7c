"""Syscall numbers of the calls Python's os module does not offer, per architecture.

x86_64 has its own table; aarch64 uses the kernel's generic one (include/uapi/asm-generic/unistd.h),
where the calls from pidfd_send_signal (424) on have the same numbers as on x86_64. Checked:
tests/test_syscall_numbers.py compares this machine's table with the C compiler's <sys/syscall.h>;
the aarch64 numbers were read from the kernel's generic table. Any other architecture is refused at
import, by name: 117, setresuid on x86_64, is ptrace on aarch64, so a wrong table is never a guess.
"""

from __future__ import annotations

import os

_COMMON = {"PIDFD_SEND_SIGNAL": 424, "OPEN_TREE": 428, "MOVE_MOUNT": 429, "FSOPEN": 430, "FSCONFIG": 431,
           "FSMOUNT": 432, "PIDFD_OPEN": 434, "CLOSE_RANGE": 436, "OPENAT2": 437}
TABLES: dict[str, dict[str, int]] = {
    "x86_64": {"CLONE": 56, "SETGROUPS": 116, "SETRESUID": 117, "SETNS": 308, "PIVOT_ROOT": 155,
               **_COMMON},
    "aarch64": {"CLONE": 220, "SETGROUPS": 159, "SETRESUID": 147, "SETNS": 268, "PIVOT_ROOT": 41,
                **_COMMON},
}
MACHINE = os.uname().machine  # platform.machine(), without importing platform (CLI start time)
try:
    _table = TABLES[MACHINE]
except KeyError:
    raise ImportError(f"rocker knows the syscall numbers of {', '.join(TABLES)}, not of {MACHINE!r}") from None

CLONE = _table["CLONE"]
SETGROUPS = _table["SETGROUPS"]
SETRESUID = _table["SETRESUID"]
SETNS = _table["SETNS"]
PIVOT_ROOT = _table["PIVOT_ROOT"]
PIDFD_SEND_SIGNAL = _table["PIDFD_SEND_SIGNAL"]
OPEN_TREE = _table["OPEN_TREE"]
MOVE_MOUNT = _table["MOVE_MOUNT"]
FSOPEN = _table["FSOPEN"]
FSCONFIG = _table["FSCONFIG"]
FSMOUNT = _table["FSMOUNT"]
PIDFD_OPEN = _table["PIDFD_OPEN"]
CLOSE_RANGE = _table["CLOSE_RANGE"]
OPENAT2 = _table["OPENAT2"]
