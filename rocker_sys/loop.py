"""Loop devices: attach a file read-only with autoclear in one ioctl."""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os

from .libc import SyscallError

LOOP_CTL_GET_FREE = 0x4C82
LOOP_CONFIGURE = 0x4C0A
LO_FLAGS_READ_ONLY = 1
LO_FLAGS_AUTOCLEAR = 4
_LO_NAME_SIZE = 64
_LO_KEY_SIZE = 32


class _LoopInfo64(ctypes.Structure):
    _fields_ = [
        ("lo_device", ctypes.c_uint64), ("lo_inode", ctypes.c_uint64), ("lo_rdevice", ctypes.c_uint64),
        ("lo_offset", ctypes.c_uint64), ("lo_sizelimit", ctypes.c_uint64), ("lo_number", ctypes.c_uint32),
        ("lo_encrypt_type", ctypes.c_uint32), ("lo_encrypt_key_size", ctypes.c_uint32),
        ("lo_flags", ctypes.c_uint32), ("lo_file_name", ctypes.c_uint8 * _LO_NAME_SIZE),
        ("lo_crypt_name", ctypes.c_uint8 * _LO_NAME_SIZE), ("lo_encrypt_key", ctypes.c_uint8 * _LO_KEY_SIZE),
        ("lo_init", ctypes.c_uint64 * 2),
    ]


class _LoopConfig(ctypes.Structure):
    _fields_ = [("fd", ctypes.c_uint32), ("block_size", ctypes.c_uint32), ("info", _LoopInfo64),
                ("reserved", ctypes.c_uint64 * 8)]


def attach_readonly(backing_fd: int, what: str) -> tuple[int, str]:
    """Attach `backing_fd` to a free loop device; return (loop fd, device path).

    The device frees itself when its last user (the mount) goes. Another
    process may grab the same free device between GET_FREE and CONFIGURE, so
    EBUSY means: ask again.
    """
    ctl = os.open("/dev/loop-control", os.O_RDWR | os.O_CLOEXEC)
    try:
        for _ in range(64):
            try:
                n = fcntl.ioctl(ctl, LOOP_CTL_GET_FREE)
            except OSError as e:
                raise SyscallError(e.errno or errno.EIO, "ioctl(LOOP_CTL_GET_FREE)", what) from None
            dev = f"/dev/loop{n}"
            lfd = os.open(dev, os.O_RDWR | os.O_CLOEXEC)
            cfg = _LoopConfig(fd=backing_fd)
            cfg.info.lo_flags = LO_FLAGS_READ_ONLY | LO_FLAGS_AUTOCLEAR
            try:
                fcntl.ioctl(lfd, LOOP_CONFIGURE, cfg)
            except OSError as e:
                os.close(lfd)
                if e.errno == errno.EBUSY:
                    continue
                raise SyscallError(e.errno or errno.EIO, "ioctl(LOOP_CONFIGURE)", f"{dev} <- {what}") from None
            return lfd, dev
        raise SyscallError(errno.EBUSY, "ioctl(LOOP_CONFIGURE)", what)
    finally:
        os.close(ctl)
