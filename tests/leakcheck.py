"""Pytest plugin: turn the run red when tests leave host state behind.

Rockers are built from mounts, loop devices, namespaces and guard processes that must all go away
with the rocker; a test that leaves one behind hides a real bug (and poisons the tests after it).
So the plugin snapshots that host state at session start and compares at session end, and also
around every test so the failure names the test that leaked.

Register it with ``pytest_plugins = ["leakcheck"]`` in tests/conftest.py.

Caveat: mounts, loop devices, /run/netns and guard processes are global; another test run on the
same host at the same time can show up here (rk- processes under another pytest are ignored).
"""

from __future__ import annotations

import errno
import os
import re
import socket
import sys
import time
from collections import Counter
from collections.abc import Generator, Iterable, Iterator
from dataclasses import dataclass, field

import pytest

__all__ = [
    "BUILTIN_IGNORE",
    "DEFAULT_GRACE",
    "GUARD_PREFIX",
    "Resource",
    "Scanner",
    "leaks_between",
    "snapshot_now",
]

GUARD_PREFIX = "rk-"
DEFAULT_GRACE = 3.0
_POLL_INTERVAL = 0.05
_OWN_NAMESPACES = ("mnt", "net", "pid", "user", "uts", "ipc")
_OCTAL_ESCAPE = re.compile(r"\\([0-7]{3})")
# `ip netns add` (and pyroute2) bind-mount /run/netns onto itself once and never undo it: host setup, no leak
BUILTIN_IGNORE = (re.compile(r"^mount: /run/netns \(type (?!nsfs)"),)


@dataclass(frozen=True, order=True)
class Resource:
    """One piece of host state; equality is by (kind, key) so snapshots compare as sets."""

    kind: str  # "mount" | "loop" | "netns" | "process" | "namespace" | "cgroup" | "tempdir" | network kinds
    key: tuple[str | int, ...]
    detail: str = field(compare=False)

    def __str__(self) -> str:
        return f"{self.kind}: {self.detail}"


def _unescape(field_: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as \\ooo."""
    return _OCTAL_ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), field_)


def _read_text(path: str) -> str | None:
    try:
        with open(path, "rb") as f:
            return f.read().decode(errors="surrogateescape")
    except OSError:  # gone (process exited, loop detached) between listing and reading
        return None


def _loop_backing(dev: str) -> str | None:
    name = os.path.basename(dev)
    text = _read_text(f"/sys/block/{name}/loop/backing_file")
    return text.rstrip("\n") if text is not None else None


def parse_mountinfo(text: str) -> Iterator[Resource]:
    """Mounts keyed by (mount point, fstype, source, nth identical): stacked repeats still count."""
    seen: Counter[tuple[str, str, str]] = Counter()
    for line in text.splitlines():
        fields = line.split(" ")
        try:
            sep = fields.index("-", 6)
            mount_point = _unescape(fields[4])
            fstype, source, superopts = fields[sep + 1], _unescape(fields[sep + 2]), fields[sep + 3]
        except (ValueError, IndexError):
            continue
        triple = (mount_point, fstype, source)
        nth = seen[triple]
        seen[triple] += 1
        detail = f"{mount_point} (type {fstype}, source {source}"
        if source.startswith("/dev/loop"):
            detail += f", loop backed by {_loop_backing(source) or '?'}"
        if fstype == "overlay":
            detail += f", {superopts[:300]}"
        yield Resource("mount", (mount_point, fstype, source, nth), detail + ")")


def loop_devices() -> Iterator[Resource]:
    """Attached loop devices: sysfs has loop/backing_file only while one is bound."""
    try:
        names = sorted(n for n in os.listdir("/sys/block") if n.startswith("loop"))
    except OSError:
        return
    for name in names:
        backing = _loop_backing(name)
        if backing is None:
            continue
        autoclear = (_read_text(f"/sys/block/{name}/loop/autoclear") or "?").strip()
        yield Resource("loop", (name, backing), f"/dev/{name} backed by {backing} (autoclear={autoclear})")


def temp_dirs(tmp: str = "/tmp", prefix: str = "rocker-test-") -> Iterator[Resource]:
    """The tests' own temp dirs (tests/rockers.py `base`): a fixture whose cleanup failed leaves one."""
    try:
        names = sorted(n for n in os.listdir(tmp) if n.startswith(prefix))
    except OSError:
        return
    for name in names:
        yield Resource("tempdir", (name,), f"{tmp}/{name}")


def named_netns(run_dir: str = "/run/netns") -> Iterator[Resource]:
    try:
        names = sorted(os.listdir(run_dir))
    except OSError:
        return
    for name in names:
        yield Resource("netns", (name,), f"{run_dir}/{name}")


@dataclass(frozen=True)
class _Proc:
    pid: int
    comm: str
    state: str
    ppid: int
    start: int


def _read_proc(pid: int) -> _Proc | None:
    text = _read_text(f"/proc/{pid}/stat")
    if not text:
        return None
    # comm may hold spaces and parentheses: it runs from the first "(" to the last ")"
    comm = text[text.index("(") + 1: text.rindex(")")]
    rest = text[text.rindex(")") + 2:].split()
    return _Proc(pid, comm, rest[0], int(rest[1]), int(rest[19]))


def _all_procs() -> dict[int, _Proc]:
    procs: dict[int, _Proc] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (p := _read_proc(int(entry))) is not None:
            procs[p.pid] = p
    return procs


def _cmdline(pid: int) -> str:
    raw = _read_text(f"/proc/{pid}/cmdline") or ""
    return raw.replace("\0", " ").strip()


def _is_pytest(pid: int) -> bool:
    cmd = _cmdline(pid)
    return "pytest" in cmd or "py.test" in cmd


def processes(root_pid: int, procs: dict[int, _Proc] | None = None) -> Iterator[Resource]:
    """Descendants of root_pid (zombies included) and guard-named processes not under another pytest."""
    procs = _all_procs() if procs is None else procs
    children: dict[int, list[int]] = {}
    for p in procs.values():
        children.setdefault(p.ppid, []).append(p.pid)
    ours: set[int] = set()
    todo = list(children.get(root_pid, []))
    while todo:
        pid = todo.pop()
        if pid not in ours:
            ours.add(pid)
            todo.extend(children.get(pid, []))
    for p in procs.values():
        if p.pid == root_pid:
            continue
        guard = p.comm.startswith(GUARD_PREFIX)
        if p.pid in ours:
            why = "zombie child of pytest, never waited for" if p.state == "Z" and p.ppid == root_pid else (
                "descendant of pytest")
        elif guard and not _under_foreign_pytest(p, procs, root_pid):
            why = "guard-named process"
        else:
            continue
        cmd = _cmdline(p.pid)[:200] or "-"
        detail = f"pid {p.pid} [{p.comm}] state {p.state} ppid {p.ppid}, {why}: {cmd}"
        yield Resource("process", (p.pid, p.start), detail)


def _under_foreign_pytest(p: _Proc, procs: dict[int, _Proc], root_pid: int) -> bool:
    """A guard spawned by somebody else's concurrent test run is not our leak."""
    pid, hops = p.ppid, 0
    while pid > 1 and hops < 64:
        if pid == root_pid:
            return False
        if _is_pytest(pid):
            return True
        parent = procs.get(pid)
        pid, hops = (parent.ppid if parent else 0), hops + 1
    return False


def _cgroup_roots(mountinfo: str) -> Iterator[str]:
    for line in mountinfo.splitlines():
        left, _, right = line.partition(" - ")
        parts = left.split()
        if right.split()[:1] in (["cgroup"], ["cgroup2"]) and len(parts) > 4 and parts[3] == "/":
            yield _unescape(parts[4])


def rocker_cgroups(mountinfo: str, depth: int = 6) -> Iterator[Resource]:
    """Rockers' cgroups (…/rocker/rk-*, docs/operations.md) in every cgroup hierarchy, and rockerd's spare
    ones (sp-*): rockerd removes each when its rocker ends, its spares when it stops."""
    for root in dict.fromkeys(_cgroup_roots(mountinfo)):
        stack = [(root, 0)]
        while stack:
            path, level = stack.pop()
            try:
                entries = [e for e in os.scandir(path) if e.is_dir(follow_symlinks=False)]
            except OSError:
                continue
            for e in entries:
                if e.name.startswith("rk-") and os.path.basename(path) == "rocker":
                    yield Resource("cgroup", (e.path,), f"cgroup {e.path}")
                elif e.name.startswith("sp-") and os.path.basename(path) == "rocker":  # by owner: refills rename
                    owner = e.name.rpartition("-")[0]
                    yield Resource("cgroup", (os.path.join(path, owner),), f"spare cgroups {path}/{owner}-*")
                elif level < depth:
                    stack.append((e.path, level + 1))


def own_namespaces(pid: int) -> Iterator[Resource]:
    """pytest itself must stay in the host namespaces; an in-process unshare/setns leaks into every later test."""
    for ns in _OWN_NAMESPACES:
        try:
            target = os.readlink(f"/proc/{pid}/ns/{ns}")
        except OSError:
            continue
        yield Resource("namespace", (ns, target), f"pytest (pid {pid}) is in {target}")


def network() -> Iterator[Resource]:
    """Links (bridges, veths), their IPv4 addresses and nftables tables of the host's netns: what a
    rocker on a bridge (or a test's "outside") adds, and must take away again."""
    from pyroute2 import IPRoute

    from rockerd.network.nft import Nft

    with IPRoute() as ipr:
        names = {link["index"]: link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}
        for name in names.values():
            yield Resource("link", (name,), f"network interface {name}")
        for a in ipr.get_addr(family=socket.AF_INET):
            where = names.get(a["index"], a["index"])
            yield Resource("address", (str(where), a.get_attr("IFA_ADDRESS")),
                           f"address {a.get_attr('IFA_ADDRESS')}/{a['prefixlen']} on {where}")
    try:
        nft = Nft()
    except OSError as e:  # no nf_tables in this kernel (e.g. the 6.1 VM without the module): no table to leak
        if e.errno != errno.EPROTONOSUPPORT:
            raise
        return
    with nft:
        for fam, table in nft.tables():
            yield Resource("nft", (str(fam), table), f"nftables table {table} (family {fam})")


class Scanner:
    """Takes snapshots of host state as seen from the namespaces pytest started in."""

    def __init__(self, root_pid: int | None = None) -> None:
        self.root_pid = os.getpid() if root_pid is None else root_pid
        # this fd stays bound to the starting mount namespace even if pytest itself unshares later
        self._mountinfo = os.open(f"/proc/{self.root_pid}/mountinfo", os.O_RDONLY | os.O_CLOEXEC)

    def close(self) -> None:
        if self._mountinfo >= 0:
            os.close(self._mountinfo)
            self._mountinfo = -1

    def _mount_text(self) -> str:
        os.lseek(self._mountinfo, 0, os.SEEK_SET)
        chunks = []
        while chunk := os.read(self._mountinfo, 1 << 16):
            chunks.append(chunk)
        return b"".join(chunks).decode(errors="surrogateescape")

    def snapshot(self) -> frozenset[Resource]:
        mountinfo = self._mount_text()
        found: list[Iterable[Resource]] = [
            parse_mountinfo(mountinfo),
            rocker_cgroups(mountinfo),
            loop_devices(),
            temp_dirs(),
            named_netns(),
            processes(self.root_pid),
            own_namespaces(self.root_pid),
            network(),
        ]
        return frozenset(r for group in found for r in group)


def leaks_between(
    scanner: Scanner,
    before: frozenset[Resource],
    grace: float = DEFAULT_GRACE,
    ignore: Iterable[re.Pattern[str]] = (),
) -> list[Resource]:
    """What is new since `before`, after giving asynchronous teardown (guards, autoclear) `grace` seconds."""
    patterns = [*BUILTIN_IGNORE, *ignore]
    deadline = time.monotonic() + grace
    while True:
        new = sorted(r for r in scanner.snapshot() - before if not any(p.search(str(r)) for p in patterns))
        if not new or time.monotonic() >= deadline:
            return new
        time.sleep(_POLL_INTERVAL)


@dataclass
class _State:
    scanner: Scanner
    grace: float
    per_test: bool
    ignore: list[re.Pattern[str]]
    baseline: frozenset[Resource] = frozenset()
    culprit: dict[Resource, str] = field(default_factory=dict)
    per_test_leaks: list[tuple[str, list[Resource]]] = field(default_factory=list)
    session_leaks: list[Resource] = field(default_factory=list)

    def leaks(self, before: frozenset[Resource]) -> list[Resource]:
        return leaks_between(self.scanner, before, self.grace, self.ignore)


_STATE = pytest.StashKey[_State]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("leakcheck", "host resource leak check")
    group.addoption("--no-leakcheck", action="store_true", default=False,
                    help="do not check for leaked mounts, loop devices, netns and processes")
    parser.addini("leakcheck_grace", "seconds to wait for leaked resources to go away (default 3)",
                  default=str(DEFAULT_GRACE))
    parser.addini("leakcheck_per_test", "also check around every test and fail it at teardown (default true)",
                  type="bool", default=True)
    parser.addini("leakcheck_ignore", "regexes; a leak whose description matches one is not reported",
                  type="linelist", default=[])


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "no_leakcheck: skip the per-test leak check (the session check still runs)")
    if config.getoption("no_leakcheck", False) or _STATE in config.stash:
        return
    state = _State(
        scanner=Scanner(),
        grace=float(config.getini("leakcheck_grace")),
        per_test=bool(config.getini("leakcheck_per_test")),
        ignore=[re.compile(p) for p in config.getini("leakcheck_ignore")],
    )
    state.baseline = state.scanner.snapshot()  # in case the plugin arrives after sessionstart
    config.stash[_STATE] = state


def pytest_unconfigure(config: pytest.Config) -> None:
    state = config.stash.get(_STATE, None)
    if state is not None:
        state.scanner.close()


def pytest_sessionstart(session: pytest.Session) -> None:
    state = session.config.stash.get(_STATE, None)
    if state is not None:
        state.baseline = state.scanner.snapshot()


@pytest.fixture(autouse=True)
def _leakcheck_per_test(request: pytest.FixtureRequest) -> Iterator[None]:
    """Autouse and function-scoped, so it wraps every function fixture but not wider-scoped ones."""
    state = request.config.stash.get(_STATE, None)
    if state is None or not state.per_test or request.node.get_closest_marker("no_leakcheck"):
        yield
        return
    before = state.scanner.snapshot()
    yield
    leaks = state.leaks(before)
    if not leaks:
        return
    nodeid = request.node.nodeid
    state.per_test_leaks.append((nodeid, leaks))
    for r in leaks:
        state.culprit.setdefault(r, nodeid)
    lines = "\n".join(f"  {r}" for r in leaks)
    pytest.fail(f"leakcheck: this test left {len(leaks)} resource(s) behind "
                f"(still there {state.grace:g} s after teardown):\n{lines}", pytrace=False)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> Generator[None, object, object]:
    """Outermost wrapper: all fixtures are torn down by now, and the terminal summary has not run yet."""
    state = session.config.stash.get(_STATE, None)
    if state is not None:
        state.session_leaks = state.leaks(state.baseline)
        if state.session_leaks:
            if session.exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED):
                session.exitstatus = pytest.ExitCode.TESTS_FAILED
            if not session.shouldfail:  # the terminal reporter prints this in red above the final line
                session.shouldfail = (f"leakcheck: the session leaked {len(state.session_leaks)} resource(s), "
                                      "see the leakcheck section")
    result = yield
    if state is not None and state.session_leaks and session.config.pluginmanager.get_plugin(
            "terminalreporter") is None:
        print(_session_report(state), file=sys.stderr)
    return result


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    state = terminalreporter.config.stash.get(_STATE, None)
    if state is None or not state.session_leaks:
        return
    terminalreporter.write_sep("=", f"leakcheck: {len(state.session_leaks)} resource(s) leaked", red=True)
    for line in _session_report(state).splitlines():
        terminalreporter.write_line(line, red=True)


def _session_report(state: _State) -> str:
    lines = []
    for r in state.session_leaks:
        who = state.culprit.get(r)
        lines.append(f"{r}  [{'leaked by ' + who if who else 'not attributed to a single test'}]")
    return "\n".join(lines)


def snapshot_now(root_pid: int | None = None) -> frozenset[Resource]:
    """A one-off snapshot, for debugging a test by hand."""
    scanner = Scanner(root_pid)
    try:
        return scanner.snapshot()
    finally:
        scanner.close()


if __name__ == "__main__":  # python3 tests/leakcheck.py: show what the plugin would watch
    for res in sorted(snapshot_now()):
        print(res)
