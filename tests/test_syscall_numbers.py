"""The syscall numbers rocker passes to syscall(2) are this machine's, as its C compiler knows them."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from rocker_sys import nr


@pytest.mark.skipif(shutil.which("cc") is None, reason="needs the C compiler setup.sh installs")
def test_numbers_match_the_c_headers(tmp_path: Path) -> None:
    names = sorted(nr.TABLES[nr.MACHINE])
    src = tmp_path / "nr.c"
    src.write_text("#include <stdio.h>\n#include <sys/syscall.h>\nint main(void) {\n" + "".join(
        f'    printf("{n} %ld\\n", (long)SYS_{n.lower()});\n' for n in names) + "    return 0;\n}\n")
    subprocess.run(["cc", "-o", str(tmp_path / "nr"), str(src)], check=True, capture_output=True)
    out = subprocess.run([str(tmp_path / "nr")], check=True, capture_output=True, text=True).stdout
    compiler = {k: int(v) for k, v in (line.split() for line in out.splitlines())}
    assert compiler == {n: getattr(nr, n) for n in names}


def test_both_tables_name_the_same_calls() -> None:
    assert set(nr.TABLES["x86_64"]) == set(nr.TABLES["aarch64"])
    assert nr.TABLES["aarch64"]["SETRESUID"] == 147 and nr.TABLES["x86_64"]["SETRESUID"] == 117
