"""`rocker pack`, and the local check of a package before rockerd is asked."""

from __future__ import annotations

import argparse
import os

from .common import EXIT_OK, Failure

PACK_COMPRESSORS = ("gzip", "zstd", "xz", "lz4", "lzo")
SQUASHFS_MAGIC = b"hsqs"


def cmd_pack(args: argparse.Namespace) -> int:
    """mksquashfs with the options a package needs; written to a temporary name, then renamed."""
    import shutil
    import subprocess

    src, out = args.dir, args.output
    if not os.path.isdir(src):
        raise Failure(f"{src} is not a directory: pass the directory of the app's files")
    mksquashfs = shutil.which("mksquashfs") or next(
        (p for p in ("/usr/sbin/mksquashfs", "/sbin/mksquashfs") if os.access(p, os.X_OK)), None)
    if mksquashfs is None:
        raise Failure("mksquashfs not found: install it (Debian: apt-get install squashfs-tools)")
    tmp = f"{out}.tmp{os.getpid()}"
    cmd = [mksquashfs, src, tmp, "-noappend", "-quiet", "-no-progress", "-comp", args.comp, "-all-root",
           "-no-xattrs", "-all-time", "0", "-mkfs-time", "0", "-reproducible"]
    try:
        p = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True, check=False)
        if p.returncode != 0:
            last = (p.stdout.strip().splitlines() or ["(no output)"])[-1]
            raise Failure(f"mksquashfs failed ({p.returncode}) packing {src}: {last}")
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return EXIT_OK


def check_package(pkg: str) -> None:
    """What can be told without rockerd: the package exists, is a file, is a squashfs image."""
    if os.path.isdir(pkg):
        raise Failure(f"package {pkg} is a directory: pack it into an image first, e.g. "
                      f"`rocker pack {pkg.rstrip('/')} -o {os.path.basename(pkg.rstrip('/')) or 'app'}.squashfs`")
    try:
        with open(pkg, "rb") as f:
            magic = f.read(4)
    except FileNotFoundError:
        raise Failure(f"package {pkg} not found: pass the path of a squashfs image to --pkg (make one with "
                      "`rocker pack DIR -o APP.squashfs`, see docs/quickstart.md)") from None
    except PermissionError:
        return  # rockerd opens it as us and says the same, with the reason
    except OSError as e:
        raise Failure(f"package {pkg}: {e.strerror}") from None
    if magic != SQUASHFS_MAGIC:
        raise Failure(f"package {pkg} is not a squashfs image: make one with `rocker pack DIR -o APP.squashfs`")

