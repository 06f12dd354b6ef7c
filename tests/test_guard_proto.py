"""The guard protocol has one definition, rockerd/guard/rocker-guard-proto.h: the C sides
include it, rockerd reads it (rockerd/guard/proto.py), and this checks that what rockerd
reads is what the C compiler sees, that no side keeps a copy of its own, and that rockerd
never sends the guard more than the header says it takes."""

from __future__ import annotations

import errno
import os
import re
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from rocker_client.structs import MAX_OVERLAY_DIRS
from rockerd.create import spawn
from rockerd.create.steps import BuildError
from rockerd.guard import proto

ROOT = Path(__file__).resolve().parent.parent
GUARD = ROOT / "rockerd" / "guard"


@pytest.mark.skipif(shutil.which("cc") is None, reason="needs the C compiler setup.sh installs")
def test_rockerd_reads_every_value_the_compiler_sees(tmp_path: Path) -> None:
    macros = subprocess.run(["cc", "-dM", "-E", proto.HEADER], check=True, capture_output=True, text=True).stdout
    names = sorted({m for m in re.findall(r"^#define (ROCKER_GUARD_\w+)", macros, re.M)} - {"ROCKER_GUARD_PROTO_H"})
    read = proto.read_header()
    assert sorted(f"ROCKER_GUARD_{n}" for n in read) == names  # nothing skipped, nothing made up
    body = "".join(
        f'    printf("{n} %s\\n", {"ROCKER_GUARD_" + n});\n' if isinstance(v, bytes) and len(v) != 1 else
        f'    printf("{n} %d\\n", (int)({"ROCKER_GUARD_" + n}));\n' for n, v in read.items())
    src = tmp_path / "proto.c"
    src.write_text(f'#include <stdio.h>\n#include "{proto.HEADER}"\nint main(void) {{\n{body}    return 0;\n}}\n')
    subprocess.run(["cc", "-Wall", "-Werror", "-o", str(tmp_path / "proto"), str(src)], check=True)
    out = subprocess.run([str(tmp_path / "proto")], check=True, capture_output=True, text=True).stdout
    compiler = dict(line.split(" ", 1) for line in out.splitlines())
    for n, v in read.items():
        want = v if isinstance(v, int) else ord(v) if len(v) == 1 else v.decode()
        assert compiler[n] == str(want), n


def test_no_side_keeps_a_copy_of_the_protocol() -> None:
    """The literals the header replaced do not come back in the C or Python sides."""
    for name in ("rocker-guard.c", "rocker-spawn.c"):
        c = re.sub(r"/\*.*?\*/|//[^\n]*", "", (GUARD / name).read_text(), flags=re.S)  # code, not comments
        assert '#include "rocker-guard-proto.h"' in c, name
        for copy in ('"--setup"', "'R'", "'E'", '"R"', '"E%d', "#define STATUS_FD 3", "argc == 4"):
            assert copy not in c, f"{name} defines {copy} itself"
    py = (ROOT / "rockerd" / "create" / "spawn.py").read_text()
    for copy in ('"--setup"', 'b"R"', 'b"E"', "STATUS_FD = 3"):
        assert copy not in py, f"spawn.py defines {copy} itself"


def test_a_full_request_fits_the_guards_limits() -> None:
    assert MAX_OVERLAY_DIRS + 1 <= proto.MAX_MOUNTS  # each overlay dir at most one mount, plus the package


def test_more_mounts_than_the_guard_takes_are_refused_before_sending() -> None:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    fd = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
    try:
        with pytest.raises(BuildError) as info:
            spawn.send_mounts(ours, [(f"/m{i}", fd) for i in range(proto.MAX_MOUNTS + 1)])
        assert (info.value.step, info.value.errno) == (spawn.SEND_STEP, errno.E2BIG)
        with pytest.raises(BuildError) as info:
            spawn.send_mounts(ours, [("/" + "d" * (proto.TARGET_MAX - 1), fd)])
        assert info.value.errno == errno.ENAMETOOLONG
        theirs.setblocking(False)
        with pytest.raises(BlockingIOError):  # nothing reached the guard's end
            theirs.recv(1)
        spawn.send_mounts(ours, [(f"/m{i}", fd) for i in range(proto.MAX_MOUNTS)])  # the limit itself is fine
        assert theirs.recv(1 << 20).count(b"\0") == proto.MAX_MOUNTS - 1
    finally:
        os.close(fd)
        ours.close()
        theirs.close()
