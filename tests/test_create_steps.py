"""The build of a rocker is one list of steps (rockerd/create/__init__.py STEPS) with one cleanup
path (steps.run_steps): whatever step fails or is cancelled, everything done is undone, in reverse,
and the error names that step.

The kernel tests build real rockers in this process (a real guard, loop device, overlays) and make
each step in turn fail or be cancelled right after it did its work, the hardest point for an undo;
the session's leak check sees mounts, loop devices and guards, these tests see fds, dirs, children.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import os
import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from rocker_sys import ns
from rockerd import create, kernel
from rockerd.create import dirsteps, handoff, pkgopen, spawn, stage
from rockerd.create.steps import BuildError, Step, run_steps
from rockerd.guard import guard_binary
from rockerd.network import netns as net
from rockerd.request import parse_request

# --- the runner alone ------------------------------------------------------------------------------------


class Recorded(Step[list[str]]):
    """Appends what it does to the context; fails (or is cancelled) in execute if told to."""

    def __init__(self, name: str, fail: BaseException | None = None, awaits: bool = False) -> None:
        self.name, self.fail, self.awaits = name, fail, awaits

    def describe(self) -> str:
        return self.name

    def execute(self, ctx: list[str]):  # type: ignore[override]
        if self.awaits:
            return self._later(ctx)
        ctx.append(f"do {self.name}")
        if self.fail is not None:
            raise self.fail
        return None

    async def _later(self, ctx: list[str]) -> None:
        await asyncio.sleep(0)
        ctx.append(f"do {self.name}")
        if self.fail is not None:
            raise self.fail

    def undo(self, ctx: list[str]):  # type: ignore[override]
        if self.awaits:
            return self._undo_later(ctx)
        ctx.append(f"undo {self.name}")
        return None

    async def _undo_later(self, ctx: list[str]) -> None:
        await asyncio.sleep(0)
        ctx.append(f"undo {self.name}")


def test_failure_releases_then_undoes_in_reverse_and_names_the_step() -> None:
    log: list[str] = []
    steps = [Recorded("a"), Recorded("b", awaits=True), Recorded("c", OSError(errno.ENOSPC, "full"))]
    with pytest.raises(BuildError) as info:
        asyncio.run(run_steps(steps, log, release=lambda: log.append("release")))
    assert (info.value.step, info.value.errno) == ("c", errno.ENOSPC)
    assert log == ["do a", "do b", "do c", "release", "undo c", "undo b", "undo a"]


def test_cancellation_undoes_everything_and_stays_a_cancellation() -> None:
    async def main(log: list[str]) -> None:
        task = asyncio.ensure_future(run_steps([Recorded("a"), Recorded("slow", awaits=True),
                                                Recorded("never")], log))
        await asyncio.sleep(0)  # task runs up to slow's sleep
        task.cancel()
        await task

    log: list[str] = []
    with pytest.raises(asyncio.CancelledError):
        asyncio.run(main(log))
    assert log == ["do a", "undo slow", "undo a"]


def test_a_refusal_keeps_its_type_and_a_failing_undo_stops_no_other() -> None:
    class Refused(Exception):
        passthrough = True

    class BadUndo(Recorded):
        def undo(self, ctx: list[str]) -> None:  # type: ignore[override]
            raise RuntimeError("undo broke")

    log: list[str] = []
    with pytest.raises(Refused):
        asyncio.run(run_steps([Recorded("a"), BadUndo("b"), Recorded("c", Refused())], log))
    assert log == ["do a", "do b", "do c", "undo c", "undo a"]


def test_plain_steps_never_yield_to_the_loop() -> None:
    """A build's host steps run back to back on the loop: another task cannot run in between."""
    async def main() -> list[str]:
        log: list[str] = []
        other = asyncio.get_running_loop().call_soon(log.append, "other")
        await run_steps([Recorded("a"), Recorded("b"), Recorded("c")], log)
        other.cancel()
        return log

    assert asyncio.run(main()) == ["do a", "do b", "do c"]


# --- real builds, failing after each step ----------------------------------------------------------------


@pytest.fixture
def world(base: Path, pkg: Path) -> Iterator[dict]:
    """A request for a root caller (dirs are made for it) and the daemon's per-process state."""
    host = base / "host"
    for d in ("a/x", "a/y", "b"):
        (host / d).mkdir(parents=True)
    req = parse_request({"app_id": 7, "uid": 1000, "gid": 1000, "app_pkg_path": str(pkg),
                         "app_exec_dir": str(base / "run/exec"), "app_data_dir": str(base / "run/data"),
                         "app_overlay_dirs": [str(host / "a/x"), str(host / "a/y"), str(host / "b")]})
    had_netns = net._own_netns.cache_info().currsize
    # what rockerd opens once at start, before the fd count (the stager's namespace fd: where the kernel has no
    # tree clones, DataShares starts it with the daemon)
    kernel.current(), spawn.load(), net.load(), stage.sharing()
    guard_fd = os.open(guard_binary(), os.O_PATH | os.O_CLOEXEC)
    fds = set(os.listdir("/proc/self/fd"))
    yield {"req": req, "guard_fd": guard_fd, "fds": fds, "run": base / "run",
           "children": children()}  # a session's rockerd fixture may be one
    os.close(guard_fd)
    if not had_netns:  # a forked app of a later test in this process would inherit it
        os.close(net._own_netns())
        net._own_netns.cache_clear()
    # no thread of ours may outlive the test
    for mod, attr in ((handoff, "_spawner"), (pkgopen, "_pool"), (dirsteps, "_pool")):
        pool = getattr(mod, attr)
        if pool is not None:
            pool.shutdown(wait=True)
            setattr(mod, attr, None)


def build(w: dict, packages: create.PackageCache, slots: create.WorkSlots) -> create.Built:
    return asyncio.run(create.build_rocker(w["req"], "rk-steps-test", caller=None, packages=packages, slots=slots,
                                           guard_fd=w["guard_fd"]))


def assert_nothing_left(w: dict, packages: create.PackageCache, slots: create.WorkSlots) -> None:
    assert len(packages) == 0, "a package mount is still held"
    assert not slots._busy, "a work slot is still taken"
    assert children() == w["children"], "a guard of the build is not reaped"
    left = unsettled_fds(w["fds"])
    assert not left, f"an fd of the build is still open: {left}"
    assert not (w["run"] / "exec").exists() and not (w["run"] / "data").exists(), "a dir made for the build is left"


def unsettled_fds(expected: set[str], within: float = 2.0) -> dict[str, str]:
    """What differs from `expected` in this process's fds once a deadline passed (fd -> what it is; empty as soon
    as they match): an abandoned package open (pkgopen.abandon) closes its fd when its thread returns, which may
    be just after the build ended."""
    deadline = time.monotonic() + within
    while (now := set(os.listdir("/proc/self/fd"))) != expected:
        if time.monotonic() > deadline:
            return {fd: _fd_target(fd) for fd in sorted(now - expected)} | {fd: "closed" for fd in expected - now}
        time.sleep(0.01)
    return {}


def _fd_target(fd: str) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError as e:
        return f"? ({e.strerror})"


def children() -> dict[int, str]:
    """This process's children (of any thread): pid -> what /proc says it is."""
    found: dict[int, str] = {}
    for tid in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{tid}/children") as f:
            for pid in f.read().split():
                try:
                    with open(f"/proc/{pid}/stat") as st:
                        found[int(pid)] = st.read().split(")")[0] + ")"
                except OSError:
                    found[int(pid)] = "?"
    return found


class Then(Step[handoff.BuildContext]):
    """`inner`, then a failure or a real cancellation of the build's task."""

    def __init__(self, inner: Step[handoff.BuildContext], how: str) -> None:
        self.inner, self.how = inner, how

    def describe(self) -> str:
        return self.inner.describe()

    async def execute(self, ctx: handoff.BuildContext) -> None:
        pending = self.inner.execute(ctx)
        if pending is not None:
            await pending
        if self.how == "fail":
            raise OSError(errno.EIO, "injected")
        asyncio.current_task().cancel()  # type: ignore[union-attr]
        await asyncio.sleep(0)

    def undo(self, ctx: handoff.BuildContext):  # type: ignore[no-untyped-def]
        return self.inner.undo(ctx)


@pytest.mark.parametrize("how", ["fail", "cancel"])
@pytest.mark.parametrize("at", range(len(create.STEPS)), ids=[type(s).__name__ for s in create.STEPS])
def test_failure_or_cancellation_after_any_step_leaves_nothing(world: dict, monkeypatch: pytest.MonkeyPatch,
                                                               at: int, how: str) -> None:
    packages, slots = create.PackageCache(warm_budget=0), create.WorkSlots()
    steps = list(create.STEPS)
    steps[at] = Then(steps[at], how)
    monkeypatch.setattr(create, "STEPS", tuple(steps))
    if how == "fail":
        with pytest.raises(BuildError) as info:
            build(world, packages, slots)
        assert (info.value.step, info.value.errno) == (create.STEPS[at].describe(), errno.EIO), info.value
    else:
        with pytest.raises(asyncio.CancelledError):
            build(world, packages, slots)
    assert_nothing_left(world, packages, slots)


def test_a_build_that_succeeds_holds_only_what_it_returns(world: dict) -> None:
    packages, slots = create.PackageCache(warm_budget=0), create.WorkSlots()
    built = build(world, packages, slots)
    try:
        assert set(built.ns_fds) == set(create.NS_NAMES)
        assert len(packages) == 1
        (shared,) = packages._mounts.values()
        held = {built.pidfd, *built.ns_fds.values(), shared.mfd, *([shared.lfd] if shared.lfd is not None else [])}
        assert set(os.listdir("/proc/self/fd")) == world["fds"] | set(map(str, held))
        assert os.waitid(os.P_PIDFD, built.pidfd, os.WEXITED | os.WNOHANG) is None, "the guard is not running"
    finally:
        _release(built, world, packages, slots)


def _release(built: create.Built, world: dict, packages: create.PackageCache, slots: create.WorkSlots) -> None:
    """What a built rocker holds: its ns fds, its guard (reaped), its package mount and its work slot."""
    for fd in built.ns_fds.values():
        os.close(fd)
    spawn.reap(spawn.Spawned(built.pid, built.pidfd))
    packages.release(built.pkg_key)
    slots.give_back(world["req"].app_data_dir, built.work_slot)


def lo_flags(netns_fd: int) -> int:
    """lo's interface flags in that netns, asked from a thread that steps in (setns is per thread)."""
    got: list[int] = []

    def ask() -> None:
        ns.setns(netns_fd, ns.CLONE_NEWNET, "net")  # this thread ends in there: nothing else runs on it
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            ifr = fcntl.ioctl(s, SIOCGIFFLAGS, struct.pack("16sH14x", b"lo", 0))
        got.append(struct.unpack_from("H", ifr, 16)[0])

    t = threading.Thread(target=ask)
    t.start()
    t.join()
    return got[0]


SIOCGIFFLAGS, IFF_UP = 0x8913, 0x1


def test_the_guard_starts_on_no_python_thread_and_brings_lo_up(world: dict) -> None:
    """The clone runs on a thread of the C library's own (spawn.Starting), not on a Python worker
    thread, whose turns on the GIL with the dir steps' thread held the build up; the guard's child
    brought lo up from inside its network namespace, with no thread of ours stepping in."""
    packages, slots = create.PackageCache(warm_budget=0), create.WorkSlots()
    before = {t.ident for t in threading.enumerate()}
    built = build(world, packages, slots)
    try:
        started = [t.name for t in threading.enumerate() if t.ident not in before]
        assert not [n for n in started if n.startswith("rockerd-spawn")], f"Python threads started: {started}"
        assert lo_flags(built.ns_fds["net"]) & IFF_UP, "lo is down in the rocker"
    finally:
        _release(built, world, packages, slots)


def test_a_clone_the_kernel_refuses_fails_the_build_at_start_guard(world: dict,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The C thread's failure comes back through its eventfd as the build's error, with the errno:
    CLONE_THREAD without CLONE_SIGHAND is a clone the kernel refuses (EINVAL)."""
    packages, slots = create.PackageCache(warm_budget=0), create.WorkSlots()
    monkeypatch.setattr(ns, "ROCKER_NS", ns.ROCKER_NS | 0x00010000)  # CLONE_THREAD
    with pytest.raises(BuildError) as info:
        build(world, packages, slots)
    assert (info.value.step, info.value.errno) == ("start guard", errno.EINVAL), info.value
    assert "clone" in info.value.reason
    assert_nothing_left(world, packages, slots)


class SlowOnItsThread(Step[handoff.BuildContext]):
    """A last dir step that takes a while, as a slow lookup would (on the dir steps' thread)."""

    def describe(self) -> str:
        return "slow dir step"

    def execute(self, ctx: handoff.BuildContext) -> None:
        time.sleep(0.3)


def test_cancelled_while_the_dir_steps_run_leaves_nothing(world: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    """The build is cancelled while its dir steps run on their thread (dirsteps.done_within): the
    build ends at once, and what the thread made is undone when it returns."""
    packages, slots = create.PackageCache(warm_budget=0), create.WorkSlots()
    (host_dirs,) = [s for s in create.STEPS if isinstance(s, dirsteps.HostDirs)]
    monkeypatch.setattr(host_dirs, "steps", [*host_dirs.steps, SlowOnItsThread()])

    async def main() -> float:
        task = asyncio.create_task(create.build_rocker(world["req"], "rk-steps-test", caller=None, packages=packages,
                                                       slots=slots, guard_fd=world["guard_fd"]))
        await asyncio.sleep(0.1)
        t0 = time.monotonic()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return time.monotonic() - t0

    assert asyncio.run(main()) < 0.15, "the cancelled build waited for its dir steps' thread"
    assert dirsteps._pool is not None
    dirsteps._pool.shutdown(wait=True)  # the thread returns and undoes its work
    dirsteps._pool = None
    assert_nothing_left(world, packages, slots)
