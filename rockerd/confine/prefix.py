"""The BPF run before libseccomp's program: what libseccomp 2.5 cannot say in a default-allow filter.

Two things, both on the host's ABI only (another ABI goes straight on to libseccomp's badarch):
- `unknown-above NR ACTION`: a syscall numbered above NR (newer than the policy) gets ACTION;
- `ACTION SYSCALL argN&MASK notin V,...`: the syscall gets ACTION unless its argument is one of
  the values, else it is allowed. libseccomp 2.5.4 takes one comparison per argument in a rule and
  refuses an allow rule under an allow default, so it could only say this as a cover of the
  complement by masked comparisons: for personality's five values 60 rules, 150 instructions and
  ~20 us more per install (measured); here it is 3 + number of values instructions.

Jumps are relative, so libseccomp's program after this one runs unchanged.
"""

from __future__ import annotations

import struct
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

__all__ = ["NotIn", "build"]

_INSN: Final = struct.Struct("=HBBI")  # struct sock_filter
LD_W_ABS, ALU_AND_K, JA, JEQ_K, JGT_K, RET_K = 0x20, 0x54, 0x05, 0x15, 0x25, 0x06
_NR, _ARCH, _ARGS = 0, 4, 16  # offsets in struct seccomp_data
RET_ALLOW: Final = 0x7FFF0000


@dataclass(frozen=True)
class NotIn:
    """Syscall `nr` gets `action` unless (argument `arg` & mask) is one of `values` (low 32 bits)."""

    nr: int
    arg: int
    mask: int
    values: tuple[int, ...]
    action: int


def _arg_low(arg: int) -> int:
    """Offset of the low 32 bits of seccomp_data.args[arg] (a u64 in the host's byte order)."""
    return _ARGS + 8 * arg + (4 if sys.byteorder == "big" else 0)


Insn = tuple[int, "int | str", "int | str", "int | str"]  # code, jt, jf, k; a str is a label


def _assemble(items: Sequence[Insn | str]) -> bytes:
    """Classic BPF from instructions and labels (str items); jt/jf (and k of JA) may name a label."""
    at, n = {}, 0
    for item in items:
        if isinstance(item, str):
            at[item] = n
        else:
            n += 1
    out, pc = [], 0
    for item in items:
        if isinstance(item, str):
            continue
        code, jt, jf, k = (at[x] - pc - 1 if isinstance(x, str) else x for x in item)
        if not (0 <= jt <= 255 and 0 <= jf <= 255 and 0 <= k < 2**32):
            raise ValueError(f"BPF jump out of range at {pc}: {item}")
        out.append(_INSN.pack(code, jt, jf, k))
        pc += 1
    return b"".join(out)


def build(arch: int, above: tuple[int, int] | None, notin: Sequence[NotIn]) -> bytes:
    """The prefix (b"" if there is nothing to say). above: (NR, action) or None."""
    if above is None and not notin:
        return b""
    prog: list[Insn | str] = [(LD_W_ABS, 0, 0, _ARCH), (JEQ_K, 0, "end", arch), (LD_W_ABS, 0, 0, _NR)]
    if above is not None:
        prog += [(JGT_K, 0, 1, above[0]), (RET_K, 0, 0, above[1])]
    prog += [(JEQ_K, f"check{i}", 0, r.nr) for i, r in enumerate(notin)]
    prog.append((JA, 0, 0, "end"))
    for i, r in enumerate(notin):
        prog += [f"check{i}", (LD_W_ABS, 0, 0, _arg_low(r.arg))]
        if r.mask != 0xFFFFFFFF:
            prog.append((ALU_AND_K, 0, 0, r.mask))
        prog += [(JEQ_K, f"allow{i}", 0, v & r.mask) for v in r.values]
        prog += [(RET_K, 0, 0, r.action), f"allow{i}", (RET_K, 0, 0, RET_ALLOW)]
    prog.append("end")
    return _assemble(prog)
