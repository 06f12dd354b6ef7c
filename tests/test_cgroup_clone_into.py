"""cgroup v2: a root caller's Exec app is born in the rocker's cgroup (clone3 CLONE_INTO_CGROUP on the
dir of the reply's cgroup.procs fd, rocker-exec.c), so it never writes cgroup.procs, whose move waits
for an RCU grace period after an idle moment (docs/operations.md, "The cost of a move").

On the hybrid test host rockerd uses v1; the mechanics are checked on its controller-less cgroup2 at
/sys/fs/cgroup/unified: the launcher is handed a cgroup.procs fd opened read-only, so the app could not
have written itself in (EBADF): it is there from its clone. In the 6.1 VM (pure v2) the same, under
rockerd's own cgroup2."""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

import pytest
from rockers import make_req

from rocker_client import Exec, enter, enter_rocker


def cgroup2_mount() -> str | None:
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        if right.split()[:1] == ["cgroup2"] and left.split()[3] == "/":
            return left.split()[4]
    return None


MOUNT = cgroup2_mount()
pytestmark = [pytest.mark.skipif(MOUNT is None, reason="no cgroup2 mounted here"),
              pytest.mark.usefixtures("rockerd")]
PYTHON = "/usr/bin/python3"


@pytest.fixture
def cgroup() -> Any:
    """A cgroup2 of this test's own beside the others (v2 puts processes in leaves only)."""
    path = os.path.join(MOUNT or "/", f"rocker-test-clone-{uuid.uuid4().hex[:8]}")
    os.mkdir(path)
    yield path
    os.rmdir(path)  # the app has been reaped: empty


def test_a_root_callers_exec_app_is_born_in_the_cgroup(base: Path, pkg: Path, cgroup: str,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    procs = os.open(f"{cgroup}/cgroup.procs", os.O_RDONLY | os.O_CLOEXEC)  # "0" written to it: EBADF
    real = enter._start_inside

    def into_ours(ns_fds: list[int], app: Any, app_args: Any, cgroup_fds: list[int] | None = None,
                  syscall_filter: Any = None) -> Any:
        return real(ns_fds, app, app_args, [procs], syscall_filter)

    monkeypatch.setattr(enter, "_start_inside", into_ours)
    r, w = os.pipe()
    os.set_inheritable(w, True)
    code = f"import os; os.write({w}, open('/proc/self/cgroup').read().encode())"
    try:
        res = enter_rocker(make_req(base, pkg), Exec(PYTHON, [PYTHON, "-c", code]))
    finally:
        os.close(w)
        os.close(procs)
    with os.fdopen(r) as f:
        seen = f.read()
    assert res.ok, res.detail  # a write of "0" to the read-only fd would have failed the join
    assert os.waitpid(res.app_pid, 0)[1] == 0
    assert "0::/" + os.path.basename(cgroup) in seen.splitlines(), seen

