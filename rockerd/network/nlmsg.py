"""Walking the netlink messages of one recv (rtnl.py and nft.py read replies the same way)."""

from __future__ import annotations

import struct
from collections.abc import Iterator

_HEADER = struct.Struct("=LHHLL")  # nlmsghdr: length, type, flags, seq, pid
_ERRNO = struct.Struct("i")  # nlmsgerr's error, right after the header


def messages(buf: bytes) -> Iterator[tuple[int, int, int, int]]:
    """(type, seq, offset, length) of each message in `buf`; a length below a header's still
    moves on (a malformed reply cannot loop us)."""
    off = 0
    while off + _HEADER.size <= len(buf):
        length, kind, _, seq, _ = _HEADER.unpack_from(buf, off)
        yield kind, seq, off, length
        off += max((length + 3) & ~3, _HEADER.size)


def error_of(buf: bytes, off: int) -> int:
    """The (negative) errno of the NLMSG_ERROR message at `off`; 0 is an ack."""
    return _ERRNO.unpack_from(buf, off + _HEADER.size)[0]
