"""Every ctypes mirror of a C struct has the C compiler's layout: size and each field's offset.

A ctypes Structure is a second declaration of a struct the C side owns (a kernel uapi
struct, or one of rocker's own C libraries). A field added, reordered or resized on one
side only would pass garbage at run time, silently. So this test compiles a small program
per struct against the real declaration (the kernel's headers, or rocker's C source
itself) and compares what the compiler says with what ctypes computes.
"""

from __future__ import annotations

import ctypes
import inspect
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from bench.proc import _FileHandle
from rocker_client._native import Spec as ExecSpec
from rocker_client._native import _SockFprog as SockFprog
from rocker_sys.fs import _OpenHow
from rocker_sys.loop import _LoopConfig, _LoopInfo64
from rockerd.confine.libseccomp import _ArgCmp as ArgCmp
from rockerd.create.spawn import _Job as SpawnJob
from rockerd.create.spawn import _Spec as SpawnSpec

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Mirror:
    py: type[ctypes.Structure]
    c_type: str  # as the C program spells it
    prelude: str  # what declares it
    names: dict[str, str] = field(default_factory=dict)  # ctypes field -> C field, where they differ
    sized: bool = True  # False: the C struct ends in a flexible array the mirror gives a fixed size
    link: tuple[str, ...] = ()  # other C sources the prelude's code needs to link


MIRRORS = [
    Mirror(SpawnSpec, "struct rocker_spawn", f'#include "{ROOT}/rockerd/guard/rocker-spawn.c"'),
    Mirror(SpawnJob, "struct rocker_spawn_job", f'#include "{ROOT}/rockerd/guard/rocker-spawn.c"', {"spec": "s"}),
    Mirror(ExecSpec, "struct rocker_exec", f'#include "{ROOT}/rocker_client/_native/rocker-exec.c"',
           link=(f"{ROOT}/rocker_client/_native/rocker-join.c", f"{ROOT}/rocker_client/_native/rocker-seccomp.c")),
    Mirror(SockFprog, "struct sock_fprog", "#include <linux/filter.h>"),
    Mirror(ArgCmp, "struct scmp_arg_cmp", "#include <seccomp.h>"),
    Mirror(_OpenHow, "struct open_how", "#include <linux/openat2.h>"),
    Mirror(_LoopInfo64, "struct loop_info64", "#include <linux/loop.h>"),
    Mirror(_LoopConfig, "struct loop_config", "#include <linux/loop.h>", {"reserved": "__reserved"}),
    Mirror(_FileHandle, "struct file_handle", "#define _GNU_SOURCE\n#include <fcntl.h>", sized=False),
]


def c_layout(m: Mirror, tmp: Path) -> dict[str, int]:
    """{"sizeof": n, field: offset, ...} as the C compiler lays the struct out."""
    fields = [f[0] for f in m.py._fields_]
    lines = [f'    printf("sizeof %zu\\n", sizeof({m.c_type}));'] + [
        f'    printf("{f} %zu\\n", offsetof({m.c_type}, {m.names.get(f, f)}));' for f in fields]
    src = tmp / "layout.c"
    src.write_text(f"{m.prelude}\n#include <stddef.h>\n#include <stdio.h>\nint main(void) {{\n"
                   + "\n".join(lines) + "\n    return 0;\n}\n")
    exe = tmp / "layout"
    proc = subprocess.run(["cc", "-w", f"-I{ROOT}/rocker_client/_native", "-o", str(exe), str(src), *m.link],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    out = subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout
    return {k: int(v) for k, v in (line.split() for line in out.splitlines())}


def py_layout(m: Mirror) -> dict[str, int]:
    return {"sizeof": ctypes.sizeof(m.py), **{f[0]: getattr(m.py, f[0]).offset for f in m.py._fields_}}


@pytest.mark.skipif(shutil.which("cc") is None, reason="needs the C compiler setup.sh installs")
@pytest.mark.parametrize("m", MIRRORS, ids=[m.c_type.split()[-1] for m in MIRRORS])
def test_ctypes_mirror_matches_the_c_struct(m: Mirror, tmp_path: Path) -> None:
    want, got = c_layout(m, tmp_path), py_layout(m)
    if not m.sized:
        assert got["sizeof"] >= want["sizeof"], "the mirror is smaller than the C struct's fixed part"
        want.pop("sizeof"), got.pop("sizeof")
    assert got == want, f"{m.py.__qualname__} vs {m.c_type}"


def test_every_ctypes_structure_of_rocker_is_checked() -> None:
    """A new mirror joins MIRRORS, or this fails: the list is every Structure in rocker's own code."""
    found = set()
    for top in ("rockerd", "rocker_client", "rocker_sys", "bench"):
        for path in (ROOT / top).rglob("*.py"):
            for line in path.read_text().splitlines():
                if line.startswith("class ") and "(ctypes.Structure)" in line:
                    found.add((str(path.relative_to(ROOT)), line.split()[1].split("(")[0]))
    checked = {(str(Path(inspect.getsourcefile(m.py) or "").relative_to(ROOT)), m.py.__name__) for m in MIRRORS}
    assert found <= checked, f"ctypes mirrors of C structs not in MIRRORS: {sorted(found - checked)}"
