"""Sizes as people write them (256M, 2G): for `rocker run --memory` and rockerd's limit options."""

from __future__ import annotations

import argparse

_SUFFIX = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
SIZE_MAX = 1 << 62


def parse_size(text: str) -> int:
    """256M -> 268435456: bytes with an optional binary suffix (K, M, G, T; "B" and "iB" allowed).
    argparse.ArgumentTypeError (a ValueError) names the text when it is not a size."""
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    num, suffix = (t[:-1], t[-1]) if t[-1:] in ("K", "M", "G", "T") else (t, "")
    try:
        value = int(float(num) * _SUFFIX[suffix])
    except (ValueError, KeyError, OverflowError):
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 256M, 2G)") from None
    if not 0 < value <= SIZE_MAX:
        raise argparse.ArgumentTypeError(f"out of range: {text!r}")
    return value
