"""Issue 17: the app is confined whatever its uid: /proc/sys and friends read-only, /proc/kcore and
friends masked (docs/security.md, "Confinement")."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
from rockers import make_req, run_app

# Docker's readonlyPaths and maskedPaths, as rocker-guard.c applies them (written out: the test checks the guard).
READONLY = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")
MASKED = ("/proc/acpi", "/proc/asound", "/proc/interrupts", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
          "/proc/sched_debug", "/proc/scsi", "/proc/timer_list", "/proc/timer_stats",
          "/sys/devices/virtual/powercap", "/sys/firmware")


def _writable_sysctls() -> dict[str, object]:
    """Try to open every /proc/sys file for writing (O_WRONLY without writing: opening is the check)."""
    opened, errors, tried = [], {}, 0
    for root, _dirs, files in os.walk("/proc/sys"):
        for name in files:
            path = os.path.join(root, name)
            tried += 1
            try:
                fd = os.open(path, os.O_WRONLY)
            except OSError as e:
                errors[e.errno] = errors.get(e.errno, 0) + 1
                continue
            os.close(fd)
            opened.append(path)
    try:
        with open("/proc/sysrq-trigger", "w") as f:
            f.write("")
        opened.append("/proc/sysrq-trigger")
    except OSError as e:
        errors[e.errno] = errors.get(e.errno, 0) + 1
    return {"tried": tried, "opened": opened, "errors": {str(k): v for k, v in errors.items()}}


def _masked_contents() -> dict[str, object]:
    seen = {}
    for path in MASKED:
        if not os.path.lexists(path):
            continue
        if os.path.isdir(path):
            seen[path] = sorted(os.listdir(path))
        else:
            with open(path, "rb") as f:
                seen[path] = f.read(64).decode("latin-1")
    return seen


@pytest.mark.usefixtures("rockerd")
def test_uid0_app_cannot_write_any_proc_sys_file(base: Path, pkg: Path) -> None:
    """A uid-0 rocker maps root to host root: a writable /proc/sys/kernel/core_pattern would be host root.
    Every /proc/sys file (and sysrq-trigger) must refuse an open for writing with EROFS."""
    run = run_app(make_req(base, pkg, uid=0), _writable_sysctls)
    assert run.res.ok, run.res.detail
    rep = run.report
    assert "probe_error" not in rep, rep
    assert rep["tried"] > 100, rep  # the walk saw the sysctls
    assert rep["opened"] == [], rep["opened"][:10]
    assert set(rep["errors"]) <= {str(errno.EROFS), str(errno.EACCES), str(errno.ENOENT)}, rep["errors"]
    assert rep["errors"].get(str(errno.EROFS), 0) > 0, rep["errors"]


@pytest.mark.usefixtures("rockerd")
def test_uid0_app_sees_masked_proc_files_empty(base: Path, pkg: Path) -> None:
    """/proc/kcore, /proc/keys, /proc/timer_list, ... read as empty (/dev/null), masked dirs list nothing."""
    host = {p for p in MASKED if os.path.lexists(p)}
    assert "/proc/keys" in host and "/proc/timer_list" in host
    run = run_app(make_req(base, pkg, uid=0), _masked_contents)
    assert run.res.ok, run.res.detail
    rep = run.report
    assert "probe_error" not in rep, rep
    assert set(rep) == host, rep
    assert all(v in ("", []) for v in rep.values()), rep
