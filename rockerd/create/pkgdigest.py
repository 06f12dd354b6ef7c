"""The package's sha256, checked on the fd rockerd mounts (the request's app_pkg_sha256).

Hashing reads the whole file, so it runs on the open thread (pkgopen.py), never on the
event loop, and its result is kept per file identity: (device, inode, size, mtime, ctime).
A write to the file changes mtime and ctime, and ctime cannot be set back from user space,
so a known package costs one fstat. As git does for its index ("racy git"), a file whose
ctime is younger than RACY_NS is hashed but not remembered: a write in the same clock tick
as the hash (timestamps are coarse: a jiffy) would keep the identity unchanged. What this
does not cover (a write after the check, while the package is mounted) is in docs/security.md.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections import OrderedDict

from .. import policy

CHUNK = 1 << 20
CACHE_MAX = 1024  # file identities remembered; the oldest goes first
RACY_NS = 1_000_000_000  # a ctime this close to the hash's start may not tell a later write apart

Identity = tuple[int, int, int, int, int]

_known: OrderedDict[Identity, str] = OrderedDict()
_lock = threading.Lock()


def identity(st: os.stat_result) -> Identity:
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


def sha256_of(fd: int) -> str:
    """The digest of the whole file, read with pread (the fd's offset stays where it is)."""
    h = hashlib.sha256()
    offset = 0
    while chunk := os.pread(fd, CHUNK, offset):
        h.update(chunk)
        offset += len(chunk)
    return h.hexdigest()


def verify(fd: int, path: str, want: str) -> None:
    """Refuse (policy.Denied) a package whose content is not `want`; a known identity costs an fstat."""
    key = identity(os.fstat(fd))
    with _lock:
        got = _known.get(key)
        if got is not None:
            _known.move_to_end(key)
    if got is None:
        started = time.time_ns()
        got = sha256_of(fd)
        # unchanged meanwhile, and old enough that a later write must show in mtime/ctime
        if identity(os.fstat(fd)) == key and key[4] < started - RACY_NS:
            with _lock:
                _known[key] = got
                while len(_known) > CACHE_MAX:
                    _known.popitem(last=False)
    if got != want:  # the refusal is logged with the caller's uid (service.py)
        raise policy.Denied(f"package {path} has sha256 {got}, not {want} (app_pkg_sha256): it is not the "
                            "package you meant, or it changed")


def forget() -> None:
    """Drop every remembered digest (tests)."""
    with _lock:
        _known.clear()
