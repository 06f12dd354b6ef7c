"""The syscall policy as data: default.policy's lines read into rules (the format is in that file).

Parsing knows nothing of libseccomp, so a broken policy is refused with its line number before
anything is compiled, and the tests can read the same rules the filter is built from.
"""

from __future__ import annotations

import errno
import os
import re
from dataclasses import dataclass, field
from typing import Final

__all__ = ["DEFAULT_POLICY", "Cond", "Policy", "PolicyError", "Rule", "load", "parse"]

DEFAULT_POLICY: Final = os.path.join(os.path.dirname(os.path.abspath(__file__)), "default.policy")
OPS: Final = ("==", "!=", "<", "<=", ">", ">=")
NOTIN: Final = "notin"
ALLOW: Final = "allow"
_ARG = re.compile(r"arg([0-5])(?:&(0x[0-9a-fA-F]+|[0-9]+))?\Z")
_NAME = re.compile(r"[a-z_][a-z0-9_]*\Z")


class PolicyError(ValueError):
    """A line the policy format does not allow: which file, which line, why."""


@dataclass(frozen=True)
class Cond:
    """argN [& mask] OP value, on the syscall's argument N as a 64-bit number; or
    argN&mask notin values (op "notin", value unused): the argument is none of them."""

    arg: int
    op: str
    value: int
    mask: int | None = None
    values: tuple[int, ...] = ()


@dataclass(frozen=True)
class Rule:
    action: str  # "allow" or an errno name
    syscall: str
    conds: tuple[Cond, ...] = ()
    line: int = 0
    lifted_by: frozenset[str] = frozenset()  # profiles that leave this rule out ("!nested")


@dataclass(frozen=True)
class Policy:
    default: str = ALLOW
    badarch: str = "ENOSYS"
    unknown_above: int | None = None
    unknown_action: str = "ENOSYS"
    rules: tuple[Rule, ...] = field(default_factory=tuple)
    profiles: tuple[str, ...] = ()  # declared besides "default", in file order

    def rules_of(self, profile: str) -> tuple[Rule, ...]:
        """The rules of `default` or of a declared profile (default's less those it lifts)."""
        if profile != "default" and profile not in self.profiles:
            raise KeyError(f"no profile {profile!r} in the policy (declared: default {' '.join(self.profiles)})")
        return tuple(r for r in self.rules if profile not in r.lifted_by)


def _action(word: str, where: str) -> str:
    if word == ALLOW:
        return word
    if not word.startswith("E") or not isinstance(getattr(errno, word, None), int):
        raise PolicyError(f"{where}: {word!r} is neither 'allow' nor an errno name")
    return word


def _number(word: str, where: str) -> int:
    try:
        v = int(word, 0)
    except ValueError:
        raise PolicyError(f"{where}: {word!r} is not a number") from None
    if not 0 <= v < 2**64:
        raise PolicyError(f"{where}: {word} is out of the 64-bit range")
    return v


def _notin(arg: int, mask: int | None, values: str, nwords: int, where: str) -> Cond:
    """`argN&MASK notin V,V,...`: compiled by rockerd itself (prefix.py), so it stands alone in its
    rule and compares the low 32 bits (the int or unsigned int the kernel reads)."""
    if nwords != 3:
        raise PolicyError(f"{where}: a {NOTIN} condition must be the rule's only one")
    if mask is None or mask > 0xFFFFFFFF:
        raise PolicyError(f"{where}: {NOTIN} compares 32 bits: write argN&MASK with MASK at most 0xffffffff")
    vals = tuple(_number(v, where) for v in values.split(","))
    if any(v & ~mask for v in vals):
        raise PolicyError(f"{where}: a value has bits outside the mask {mask:#x}")
    return Cond(arg, NOTIN, 0, mask, vals)


def _conds(words: list[str], where: str) -> tuple[Cond, ...]:
    if len(words) % 3:
        raise PolicyError(f"{where}: a condition is 'argN OP VALUE' or 'argN&MASK == VALUE'")
    out = []
    for i in range(0, len(words), 3):
        arg, op, value = words[i:i + 3]
        m = _ARG.match(arg)
        if not m:
            raise PolicyError(f"{where}: {arg!r} is not arg0..arg5 (optionally &MASK)")
        if op not in OPS and op != NOTIN:
            raise PolicyError(f"{where}: {op!r} is not one of {' '.join(OPS)} {NOTIN}")
        mask = _number(m.group(2), where) if m.group(2) else None
        if op == NOTIN:
            out.append(_notin(int(m.group(1)), mask, value, len(words), where))
            continue
        if mask is not None and op != "==":
            raise PolicyError(f"{where}: a masked argument can only be compared with ==")
        out.append(Cond(int(m.group(1)), op, _number(value, where), mask))
    return tuple(out)


def parse(text: str, source: str = "<policy>") -> Policy:
    default, badarch, above, above_action = ALLOW, "ENOSYS", None, "ENOSYS"
    rules: list[Rule] = []
    profiles: list[str] = []
    for n, raw in enumerate(text.splitlines(), 1):
        words = raw.partition("#")[0].split()
        if not words:
            continue
        where = f"{source}:{n}"
        head = words[0]
        if head == "default" and len(words) == 2:
            default = _action(words[1], where)
        elif head == "badarch" and len(words) == 2:
            badarch = _action(words[1], where)
        elif head == "unknown-above" and len(words) == 3:
            above, above_action = _number(words[1], where), _action(words[2], where)
        elif head == "profile" and len(words) == 2 and _NAME.match(words[1]) and words[1] != "default":
            profiles.append(words[1])
        elif head in ("default", "badarch", "unknown-above", "profile"):
            raise PolicyError(f"{where}: wrong number of words for {head!r}")
        else:
            if len(words) < 2 or not _NAME.match(words[1]):
                raise PolicyError(f"{where}: expected 'ACTION SYSCALL [argN OP VALUE ...]'")
            tags = [w for w in words[2:] if w.startswith("!")]
            if words[len(words) - len(tags):] != tags:
                raise PolicyError(f"{where}: !PROFILE words come last")
            unknown = [t for t in tags if t[1:] not in profiles]
            if unknown:
                raise PolicyError(f"{where}: {unknown[0]}: no such profile declared above (profile NAME)")
            conds = _conds(words[2:len(words) - len(tags)], where)
            rules.append(Rule(_action(head, where), words[1], conds, n, frozenset(t[1:] for t in tags)))
    for r in rules:
        if any(c.op == NOTIN for c in r.conds) and sum(o.syscall == r.syscall for o in rules) > 1:
            raise PolicyError(f"{source}:{r.line}: a {NOTIN} rule must be the only rule for {r.syscall}")
    return Policy(default, badarch, above, above_action, tuple(rules), tuple(profiles))


def load(path: str = DEFAULT_POLICY) -> Policy:
    with open(path, encoding="utf-8") as f:
        return parse(f.read(), path)
