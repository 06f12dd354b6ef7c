"""Guard names: random, short enough for comm (15 chars), unique among live guards."""

from __future__ import annotations

import secrets
from collections.abc import Container

ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"
PREFIX = "rk-"
LENGTH = 8  # 36**8 ≈ 2.8e12: a collision among live guards is rare; it is still checked


def new_name(taken: Container[str]) -> str:
    while True:
        name = PREFIX + "".join(secrets.choice(ALPHABET) for _ in range(LENGTH))
        if name not in taken:
            return name
