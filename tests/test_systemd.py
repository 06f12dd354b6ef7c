"""rockerd as a systemd service, proven under a real systemd.

- The unit files: `systemd-analyze verify`, and the directives the design depends on.
- The sd glue on the host: under `systemd-socket-activate` rockerd serves the passed socket and tells a
  NOTIFY_SOCKET of ours READY=1, STATUS=, WATCHDOG=1 and STOPPING=1; idle exit; journal fields.
- In the testbed (tests/testbed.sh: systemd as PID 1 of an nspawn container, booted once for the module)
  with the units installed unchanged except for a small test drop-in: socket activation, rockers built
  through the socket under the unit's hardening, STATUS=, the journal, stop/restart without killing
  rockers, SIGABRT and watchdog restarts, idle exit and reactivation.
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import os
import signal
import socket
import stat
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pkgbuild import HELLO_SCRIPT, build_pkg
from rockers import Run, live_app, run_app, wait_gone

from rocker_client import RockerRequest, request_new, wire
from rockerd import journal, sd
from rockerd.cgroups import CgroupTree, detect

CHECKOUT = Path(__file__).resolve().parents[1]
UNITS = CHECKOUT / "systemd"
TESTBED = CHECKOUT / "tests" / "testbed.sh"
RUNTIME_DIR = "/run/rocker"  # the socket's directory in the units; the testbed binds a host dir there
# >1 in an emulated VM (scripts/test-vm.sh): waits that include a rockerd start (~20 s there) scale with it;
# the watchdog's own timing (systemd's timers, real time) does not
SLOW = float(os.environ.get("ROCKER_TEST_TIME_SCALE", "1"))

# The test drop-in: the only change to the shipped units inside the testbed.
TEST_DROPIN = """\
[Unit]
# this module starts rockerd far more often than a real machine would
StartLimitIntervalSec=0
[Service]
# SIGUSR2 wedges the event loop (rockerd/main.py), for the watchdog test
Environment=ROCKERD_TEST_HOOKS=1
WatchdogSec=3s
RestartSec=100ms
# SIGABRT (ours and the watchdog's) would otherwise write a core of python into the container
LimitCORE=0
"""
HOLDER = "rocker-cgroups.service"  # the unit whose delegated cgroup holds the rockers' (docs/operations.md)
CAP_FILE = "/usr/lib/rocker-test-capfile"  # made in the container: a file with file capabilities
CAP_XATTR = struct.pack("<IIIII", 0x02000001, 1 << 13, 0, 0, 0)  # VFS_CAP_REVISION_2 | effective, CAP_NET_RAW


def wait_until(pred: Callable[[], Any], timeout: float, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


# --- the unit files ---------------------------------------------------------------------------------


def unit_directives(path: Path) -> dict[str, list[str]]:
    """section.Key -> values, in order (systemd allows repeats; configparser does not)."""
    out: dict[str, list[str]] = {}
    section = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        out.setdefault(f"{section}.{key.strip()}", []).append(value.strip())
    return out


def test_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    """Verified as shipped; a drop-in (as on a real machine: `systemctl edit`) points ExecStart at this checkout's
    rockerd, since /usr/local/bin/rockerd exists only where rocker is installed (docs/operations.md)."""
    dropin = tmp_path / "rockerd.service.d"
    dropin.mkdir()
    rockerd = Path(sys.executable).with_name("rockerd")
    assert rockerd.exists(), f"{rockerd}: the project is not installed in this python (scripts/setup.sh)"
    (dropin / "exec.conf").write_text(f"[Service]\nExecStart=\nExecStart={rockerd} --idle-exit 300\n")
    units = [str(UNITS / u) for u in ("rockerd.socket", "rockerd.service", HOLDER)]
    proc = subprocess.run(["systemd-analyze", "verify", *units],
                          env={**os.environ, "SYSTEMD_UNIT_PATH": f"{tmp_path}:"}, capture_output=True, text=True,
                          timeout=60)
    # verify exits 0 on unknown keys and unparsable values; it only says so: the output must be empty
    assert (proc.returncode, proc.stdout + proc.stderr) == (0, "")


def test_unit_directives() -> None:
    sock = unit_directives(UNITS / "rockerd.socket")
    assert sock["Socket.ListenStream"] == ["/run/rocker/rockerd.sock"]
    assert sock["Socket.SocketMode"] == ["0660"]
    assert sock["Socket.RemoveOnStop"] == ["yes"]
    assert "Socket.SocketGroup" in sock
    svc = unit_directives(UNITS / "rockerd.service")
    expected = {"Type": "notify", "NotifyAccess": "main", "Restart": "on-failure", "KillMode": "process",
                "NoNewPrivileges": "yes", "RestrictAddressFamilies": "AF_UNIX AF_NETLINK",
                "SystemCallArchitectures": "native", "DevicePolicy": "closed"}
    for key, value in expected.items():
        assert svc[f"Service.{key}"] == [value], key
    assert svc["Service.ExecStart"] == [
        f"/usr/local/bin/rockerd --idle-exit 300 --cgroup-parent /system.slice/{HOLDER}"]
    # rockerd's unit stays a leaf: the rockers' cgroups hang under a unit of their own that a restart leaves alone
    assert "Service.Delegate" not in svc and svc["Unit.Requires"] == ["rockerd.socket", HOLDER]
    holder = unit_directives(UNITS / HOLDER)
    assert (holder["Service.Delegate"], holder["Service.Type"]) == (["yes"], ["forking"])
    assert "Service.KillMode" not in holder  # control-group: stopping it ends every rocker
    assert "Service.WatchdogSec" in svc and "Service.CapabilityBoundingSet" in svc
    assert svc["Service.DeviceAllow"] == ["/dev/loop-control rw", "block-loop rw"]
    # each of these gives rockerd a private mount namespace, whose view every rocker would copy
    private_mounts = {"ProtectSystem", "ProtectHome", "PrivateTmp", "PrivateDevices", "ProtectKernelTunables",
                      "ProtectKernelModules", "ProtectKernelLogs", "ProtectControlGroups", "ProtectProc",
                      "ProcSubset", "ReadOnlyPaths", "ReadWritePaths", "InaccessiblePaths", "TemporaryFileSystem",
                      "BindPaths", "BindReadOnlyPaths", "PrivateMounts", "RootDirectory", "RootImage",
                      "MountAPIVFS", "ProtectHostname", "PrivateUsers", "PrivateNetwork", "RuntimeDirectory"}
    assert not private_mounts & {k.split(".", 1)[1] for k in svc}


def test_cgroup_parent_puts_rockers_under_the_holder_and_leaves_rockerd_alone(tmp_path: Path) -> None:
    """--cgroup-parent (v2, the shipped unit): rocker/ goes under rocker-cgroups.service's cgroup and rockerd is
    not moved, so its unit's cgroup stays a leaf systemd can restart it into. Without it rockerd moves itself to
    daemon/ beside rocker/. A cgroupfs stand-in: this host has no v2 controllers (the real thing is the testbed
    test below, in the 6.1 VM)."""
    root = tmp_path / "cg"
    unit, holder = root / "system.slice/rockerd.service", root / f"system.slice/{HOLDER}"
    for d in (root, unit, unit / "rocker", unit / "daemon", holder, holder / "rocker"):
        d.mkdir(parents=True, exist_ok=True)
        (d / "cgroup.subtree_control").write_text("")
    (root / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    (unit / "daemon/cgroup.procs").write_text("")
    mountinfo = f"30 1 0:26 / {root} rw,nosuid - cgroup2 cgroup2 rw\n"
    own = "0::/system.slice/rockerd.service\n"

    tree = CgroupTree(detect(mountinfo, own, parent=f"/system.slice/{HOLDER}"))
    tree.setup()
    assert tree.bases == {"": str(holder / "rocker")}
    enable = "+memory +pids +cpu"
    assert [(d / "cgroup.subtree_control").read_text() for d in (holder, holder / "rocker", unit)] == \
        [enable, enable, ""]
    assert (unit / "daemon/cgroup.procs").read_text() == "", "rockerd moved itself out of its unit's cgroup"
    assert "rockers in /system.slice/rocker-cgroups.service" in tree.hier.describe()

    tree = CgroupTree(detect(mountinfo, own))  # no parent: rockerd's own cgroup, itself in daemon/
    tree.setup()
    assert tree.bases == {"": str(unit / "rocker")}
    assert (unit / "daemon/cgroup.procs").read_text() == "0" and (unit / "cgroup.subtree_control").read_text() == enable


# --- the sd glue on the host ----------------------------------------------------------------------------


@dataclass
class Activated:
    proc: subprocess.Popen[bytes]
    socket: str
    notify: socket.socket
    log: Path

    def messages(self, until: str, timeout: float = 10) -> list[str]:
        """Notifications received until one containing `until` (inclusive)."""
        got: list[str] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.notify.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                got.append(self.notify.recv(4096).decode())
            except TimeoutError:
                break
            if until in got[-1]:
                return got
        raise AssertionError(f"no {until!r} within {timeout}s; got {got}\n{self.log.read_text()}")

    def collect(self, seconds: float) -> list[str]:
        """Everything received in the next `seconds`."""
        got: list[str] = []
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            self.notify.settimeout(left)
            try:
                got.append(self.notify.recv(4096).decode())
            except TimeoutError:
                break
        return got


@pytest.fixture
def activated(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Activated]:
    """rockerd under systemd-socket-activate, with a notify socket of ours and a 0.4 s watchdog."""
    args = getattr(request, "param", [])
    path, notify_path, log = str(tmp_path / "rockerd.sock"), str(tmp_path / "notify.sock"), tmp_path / "log"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
    notify.bind(notify_path)
    cmd = ["systemd-socket-activate", "-l", path, "-E", f"NOTIFY_SOCKET={notify_path}", "-E", "WATCHDOG_USEC=400000",
           "-E", f"PYTHONPATH={CHECKOUT}", sys.executable, "-m", "rockerd", "--state-dir", str(tmp_path / "state"),
           *args]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    try:
        assert wait_until(lambda: os.path.exists(path) or proc.poll() is not None, 15) and proc.poll() is None, \
            log.read_text()
        yield Activated(proc, path, notify, log)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        notify.close()


def test_socket_activated_rockerd_serves_and_notifies(activated: Activated) -> None:
    # systemd-socket-activate holds the socket and execs rockerd (same pid) only on the first connection
    assert Path(f"/proc/{activated.proc.pid}/comm").read_text().strip() != "python3"
    info, _ = wire.call(activated.socket, "org.varlink.service.GetInfo", {})
    assert info["product"] == "rockerd"
    assert wire.call(activated.socket, "io.rocker.Rocker.List", {})[0] == {"rockers": []}
    got = activated.messages(until="READY=1")
    assert got[-1].splitlines() == ["READY=1", "STATUS=0 rockers, 0 clients"]
    # the watchdog is pinged from the event loop at half of WATCHDOG_USEC (0.4 s): about 5 in a second
    pings = activated.collect(1.0)
    assert 3 <= pings.count("WATCHDOG=1") <= 7, pings
    activated.proc.send_signal(signal.SIGTERM)
    stopping = activated.messages(until="STOPPING=1")[-1].splitlines()
    assert stopping == ["STOPPING=1", "STATUS=stopping, 0 rockers left running"]
    assert activated.proc.wait(10) == 0
    assert "Traceback" not in activated.log.read_text()


@pytest.mark.parametrize("activated", [["--idle-exit", "0.5"]], indirect=True)
def test_idle_exit(activated: Activated) -> None:
    with wire.Connection(activated.socket) as conn:  # a connected client keeps it alive
        conn.call("org.varlink.service.GetInfo")
        assert activated.messages(until="STATUS=0 rockers, 1 client")
        time.sleep(1.0)
        assert activated.proc.poll() is None
        conn.call("org.varlink.service.GetInfo")
    t0 = time.monotonic()
    assert activated.messages(until="STOPPING=1")[-1].splitlines() == ["STOPPING=1", "STATUS=idle, exiting"]
    assert activated.proc.wait(10) == 0
    assert 0.3 < time.monotonic() - t0 < 2.0
    assert "no rockers and no clients for 0.5 s: exiting" in activated.log.read_text()


def test_no_idle_exit_unless_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    from rockerd.main import parse_args

    assert parse_args([]).idle_exit == 0
    monkeypatch.setattr(sd, "STATUS_TICK", 0.01)
    monkeypatch.setenv("NOTIFY_SOCKET", "/nonexistent/notify.sock")  # ticks run, notifications go nowhere
    idled: list[bool] = []

    async def run() -> str:
        life = sd.Lifecycle(lambda: (0, 0), lambda: idled.append(True), idle_exit=0)
        life.ready()
        await asyncio.sleep(0.3)
        life.close()
        return life.status

    assert asyncio.run(run()) == "0 rockers, 0 clients"
    assert not idled


def test_watchdog_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    assert sd.watchdog_interval() is None
    monkeypatch.setenv("WATCHDOG_USEC", "20000000")
    assert sd.watchdog_interval() == 10.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))  # meant for another process
    assert sd.watchdog_interval() is None
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert sd.watchdog_interval() == 10.0


def test_journal_handler_sends_event_fields(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sent: list[tuple[str, dict[str, Any]]] = []
    handler = journal.EventJournalHandler(sender_function=lambda msg, **f: sent.append((msg, f)),
                                          SYSLOG_IDENTIFIER="rockerd")
    logger = logging.getLogger("rockerd")
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.DEBUG)
    try:
        journal.event(journal.ENDED, "ended rk-x", guard_name="rk-x", guard_pid=42, app_id=7, uid=1000,
                      caller_uid=0, lifetime_sec=1.5, status=0)
        journal.event(journal.FAILED, "failed", logging.WARNING, guard_name="rk-y", step="attach", errno=28)
        logger.info("plain line")
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    (msg, ended), (_, failed), (_, plain) = sent
    assert msg == "ended rk-x"
    assert {k: v for k, v in ended.items() if k.startswith(("ROCKER_", "MESSAGE_ID", "OBJECT_"))} == {
        "ROCKER_EVENT": "ended", "MESSAGE_ID": journal.MESSAGE_IDS["ended"], "ROCKER_GUARD_NAME": "rk-x",
        "ROCKER_GUARD_PID": "42", "OBJECT_PID": "42", "ROCKER_APP_ID": "7", "ROCKER_UID": "1000",
        "ROCKER_CALLER_UID": "0", "ROCKER_LIFETIME_SEC": "1.5", "ROCKER_STATUS": "0"}
    assert ended["PRIORITY"] == "6" and ended["SYSLOG_IDENTIFIER"] == "rockerd"
    assert failed["ERRNO"] == "28" and failed["PRIORITY"] == "4" and "OBJECT_PID" not in failed
    assert "ROCKER_EVENT" not in plain and "MESSAGE_ID" not in plain
    assert all(k.isupper() for k in ended)  # nothing journald would drop
    assert len(set(journal.MESSAGE_IDS.values())) == len(journal.MESSAGE_IDS)
    assert all(len(m) == 32 and int(m, 16) for m in journal.MESSAGE_IDS.values())
    # JOURNAL_STREAM names stderr's device:inode when stderr is the journal
    f = open(tmp_path / "stderr", "w")  # noqa: SIM115
    try:
        st = os.fstat(f.fileno())
        monkeypatch.setattr(sys, "stderr", f)
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
        assert journal.stderr_is_journal()
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino + 1}")
        assert not journal.stderr_is_journal()
        monkeypatch.delenv("JOURNAL_STREAM")
        assert not journal.stderr_is_journal()
    finally:
        f.close()


# --- the testbed: a real systemd ---------------------------------------------------------------------------


@dataclass
class Bed:
    dir: Path
    env: dict[str, str]
    leader: int
    socket: str  # the units' /run/rocker/rockerd.sock, seen from the host

    @property
    def root(self) -> Path:
        return Path(f"/proc/{self.leader}/root")

    def sh(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([str(TESTBED), *args], env=self.env, capture_output=True, text=True,
                              timeout=timeout * SLOW)  # `systemctl restart` waits for rockerd's READY=1
        if check and proc.returncode != 0:
            raise AssertionError(f"testbed.sh {' '.join(args)}: exit {proc.returncode}\n{proc.stdout}{proc.stderr}")
        return proc

    def run(self, *cmd: str, check: bool = True) -> str:
        return self.sh("exec", *cmd, check=check).stdout.strip()

    def show(self, prop: str, unit: str = "rockerd.service") -> str:
        return self.run("systemctl", "show", "-P", prop, unit)

    def active(self, unit: str = "rockerd.service") -> str:
        return self.run("systemctl", "is-active", unit, check=False)

    def main_pid(self) -> int:
        return int(self.show("MainPID"))

    def journal(self, *matches: str) -> list[dict[str, Any]]:
        out = self.run("journalctl", "-u", "rockerd", "-o", "json", "--no-pager", *matches)
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def wait_journal(self, *matches: str, timeout: float = 5) -> list[dict[str, Any]]:
        """Entries for the matches, once there is at least one (a line can land just after a reply)."""
        entries = wait_until(lambda: self.journal(*matches), timeout * SLOW, 0.1)
        assert entries, f"nothing in the journal for {matches}:\n{self.run('journalctl', '-u', 'rockerd', '-n', '30')}"
        return entries

    def call(self, method: str, params: dict[str, Any] | None = None, timeout: float = 30 * SLOW) -> dict[str, Any]:
        with wire.Connection(self.socket, timeout=timeout) as conn:  # the default: socket activation starts rockerd
            reply, fds = conn.call(method, params or {})
        for fd in fds:
            os.close(fd)
        return reply

    def request(self, uid: int = 0, data: str = "data") -> RockerRequest:
        req = request_new()
        req.app_id, req.uid, req.gid = 7, uid, uid
        req.app_pkg_path = "/testbed/app.squashfs"
        req.app_exec_dir = "/testbed/rk/exec"
        req.app_data_dir = f"/testbed/rk/{data}"
        req.app_overlay_dirs = ["/usr"]
        return req

    def dropin(self, name: str, text: str | None) -> None:
        d = self.root / "etc/systemd/system/rockerd.service.d"
        if text is None:
            (d / name).unlink(missing_ok=True)
        else:
            d.mkdir(parents=True, exist_ok=True)
            (d / name).write_text(text)
        self.run("systemctl", "daemon-reload")

    def guards(self) -> dict[str, int]:
        """Guard name -> host pid of every guard in the container (any process descending from its init)."""
        found = {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                comm = Path(f"/proc/{entry}/comm").read_text().strip()
                if comm.startswith("rk-") and self._in_container(int(entry)):
                    found[comm] = int(entry)
            except (OSError, ValueError):
                continue
        return found

    def _in_container(self, pid: int) -> bool:
        for _ in range(64):
            if pid == self.leader:
                return True
            if pid <= 1:
                return False
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        return False


@pytest.fixture(scope="module")
def bed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bed]:
    d = tmp_path_factory.mktemp("testbed")
    (d / "share").mkdir()
    (d / "run").mkdir()
    build_pkg(d / "share", {"bin/hello": (HELLO_SCRIPT, 0o755)})
    bind_ro = {str(CHECKOUT)} | ({sys.prefix} if sys.prefix != sys.base_prefix else set())  # checkout + venv
    env = {**os.environ, "TESTBED_DIR": str(d), "TESTBED_NAME": f"rk{os.getpid()}", "TESTBED_LOOP": "1",
           "TESTBED_BIND_RO": " ".join(sorted(bind_ro)), "TESTBED_NSPAWN_ARGS": f"--bind={d}/run:{RUNTIME_DIR}"}
    bed = Bed(d, env, 0, str(d / "run" / "rockerd.sock"))
    try:
        bed.sh("up", timeout=120)
        bed.leader = int(bed.sh("leader").stdout)
        # rockerd where the unit expects it, as `pip install` / the docs put it
        exe = bed.root / "usr/local/bin/rockerd"
        exe.unlink(missing_ok=True)
        exe.symlink_to(Path(sys.executable).with_name("rockerd"))
        cap = bed.root / CAP_FILE.lstrip("/")
        cap.write_text("#!/bin/sh\n")
        os.setxattr(cap, "security.capability", CAP_XATTR)
        bed.sh("install-unit", *(str(UNITS / u) for u in ("rockerd.socket", "rockerd.service", HOLDER)))
        bed.dropin("50-test.conf", TEST_DROPIN)
        bed.run("systemctl", "start", "rockerd.socket")
        yield bed
    finally:
        down = bed.sh("down", check=False, timeout=120)
    # `down` always cleans up as far as it can; anything it could not (a process it had to SIGKILL, a cgroup
    # it could not remove) is a leak of this module
    assert down.returncode == 0 and "testbed:" not in down.stderr, down.stdout + down.stderr


@pytest.fixture
def tb(bed: Bed, monkeypatch: pytest.MonkeyPatch) -> Iterator[Bed]:
    """The module's testbed for one test: clients aim at its socket; no rocker outlives the test."""
    monkeypatch.setenv("ROCKER_SOCKET", bed.socket)
    assert bed.active("rockerd.socket") == "active"
    try:
        yield bed
    finally:
        for pid in bed.guards().values():  # ours: guards of the container's rockerd
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        assert wait_until(lambda: not bed.guards(), 10)


def probe_writes() -> dict[str, Any]:
    """Runs as the app, uid 0 in its rocker: writes through the /usr overlay (copy-up with rockerd's credentials)."""
    out: dict[str, Any] = {}
    for name, act in (("create", lambda: Path("/usr/rocker-test-file").write_text("x")),
                      ("unlink", lambda: os.unlink("/usr/bin/true")),
                      ("chmod_fcaps", lambda: os.chmod(CAP_FILE, 0o700)),
                      ("hostname", socket.gethostname)):
        try:
            out[name] = act()
        except OSError as e:
            out[name] = f"{e.strerror} ({e.errno})"
    return out


def test_socket_activation_starts_rockerd_on_first_request(tb: Bed) -> None:
    tb.run("systemctl", "stop", "rockerd.service")
    assert (tb.active("rockerd.socket"), tb.active()) == ("active", "inactive")
    st = os.stat(tb.socket)
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o660 and (st.st_uid, st.st_gid) == (0, 0)
    t0 = time.monotonic()
    assert tb.call("org.varlink.service.GetInfo")["product"] == "rockerd"
    first_reply = time.monotonic() - t0
    assert tb.active() == "active" and first_reply < 10 * SLOW  # rockerd's start: ~20 s in the emulated VM
    # READY=1 came from the main process (Type=notify, NotifyAccess=main); no private mount namespace
    pid = tb.main_pid()
    assert tb.show("NotifyAccess") == "main" and tb.show("StatusText").endswith("0 clients")
    mnt = tb.run("readlink", "/proc/1/ns/mnt", f"/proc/{pid}/ns/mnt").split()
    assert mnt[0] == mnt[1], "rockerd runs in a mount namespace of its own: rockers would copy it"
    warnings = tb.journal("-p", "warning", f"_PID={pid}")
    assert not warnings, [e["MESSAGE"] for e in warnings]


def test_rockers_through_the_socket_status_and_journal(tb: Bed) -> None:
    def while_alive(run_res: Any) -> None:
        listed = {r["guard_pname"]: r for r in tb.call("io.rocker.Rocker.List")["rockers"]}
        assert run_res.guard_pname in listed and listed[run_res.guard_pname]["guard_pid"] == run_res.guard_pid
        assert wait_until(lambda: tb.show("StatusText") == "1 rocker, 0 clients", 3), tb.show("StatusText")
        with wire.Connection(tb.socket) as conn:
            conn.call("org.varlink.service.GetInfo")
            assert wait_until(lambda: tb.show("StatusText") == "1 rocker, 1 client", 3), tb.show("StatusText")

    run: Run = run_app(tb.request(), probe_writes, while_alive)
    assert run.res.ok, run.res.detail
    name, guard_pid = run.res.guard_pname, run.res.guard_pid
    # the unit's capability bounding set and filters left the app's writes working (copy-up as rockerd)
    assert run.report == {"create": 1, "unlink": None, "chmod_fcaps": None, "hostname": name}, run.report
    upper = tb.dir / "share/rk/data/upper/usr"
    assert (upper / "rocker-test-file").read_text() == "x"
    whiteout = os.lstat(upper / "bin/true")
    assert stat.S_ISCHR(whiteout.st_mode) and whiteout.st_rdev == 0
    assert os.getxattr(upper / CAP_FILE.removeprefix("/usr/"), "security.capability") == CAP_XATTR

    ended = tb.wait_journal("ROCKER_EVENT=ended", f"ROCKER_GUARD_NAME={name}")[-1]
    created = tb.wait_journal("ROCKER_EVENT=created", f"ROCKER_GUARD_NAME={name}")[-1]
    for entry, kind in ((created, "created"), (ended, "ended")):
        assert entry["MESSAGE_ID"] == journal.MESSAGE_IDS[kind]
        assert entry["_SYSTEMD_UNIT"] == "rockerd.service" and entry["SYSLOG_IDENTIFIER"] == "rockerd"
        assert entry["ROCKER_GUARD_PID"] == entry["OBJECT_PID"] == str(guard_pid)
        assert (entry["ROCKER_APP_ID"], entry["ROCKER_UID"], entry["ROCKER_CALLER_UID"]) == ("7", "0", "0")
        assert entry["MESSAGE"].startswith(f"{kind} {name}")
    assert created["OBJECT_COMM"] == name  # journald looked the live guard up
    assert 0 < float(ended["ROCKER_LIFETIME_SEC"]) < 30
    assert wait_until(lambda: tb.show("StatusText") == "0 rockers, 0 clients", 3)

    # a rocker of another uid, ended by Kill: the uid/gid maps, its ns files and the signal need the unit's caps
    reply = tb.call("io.rocker.Rocker.Create", tb.request(uid=1000, data="data1000").to_params())
    tb.call("io.rocker.Rocker.Kill", {"guard_pname": reply["guard_pname"]})
    assert tb.wait_journal("ROCKER_EVENT=ended", f"ROCKER_GUARD_NAME={reply['guard_pname']}")[-1]["ROCKER_UID"] \
        == "1000"

    # refused and failed requests are events too, found the way docs/operations.md says
    bad = tb.request()
    bad.app_exec_dir = "relative/refused-by-test"
    with pytest.raises(wire.RemoteError, match="InvalidRequest"):
        tb.call("io.rocker.Rocker.Create", bad.to_params())
    refused = [e for e in tb.wait_journal("ROCKER_EVENT=refused") if "app_exec_dir" in e.get("ROCKER_REASON", "")]
    assert refused and refused[-1]["ROCKER_CALLER_UID"] == "0" and refused[-1]["PRIORITY"] == "4"
    assert refused[-1]["MESSAGE_ID"] == journal.MESSAGE_IDS["refused"]
    missing = tb.request()
    missing.app_pkg_path = "/testbed/missing-by-test.squashfs"
    with pytest.raises(wire.RemoteError, match="BuildFailed"):
        tb.call("io.rocker.Rocker.Create", missing.to_params())
    failed = tb.wait_journal("ROCKER_EVENT=failed")[-1]
    assert failed["ERRNO"] == "2" and failed["ROCKER_STEP"] and failed["MESSAGE_ID"] == journal.MESSAGE_IDS["failed"]


def test_stopping_the_service_leaves_the_socket_listening(tb: Bed) -> None:
    tb.call("org.varlink.service.GetInfo")
    first = tb.main_pid()
    tb.run("systemctl", "stop", "rockerd.service")
    assert (tb.active(), tb.active("rockerd.socket")) == ("inactive", "active")
    assert stat.S_ISSOCK(os.stat(tb.socket).st_mode)
    assert tb.call("io.rocker.Rocker.List") == {"rockers": []}
    assert tb.active() == "active" and tb.main_pid() != first
    stops = tb.journal(f"_PID={first}", "MESSAGE=SIGTERM: stopping")
    assert stops, "rockerd did not log its SIGTERM"


def test_restart_leaves_running_rockers_running(tb: Bed) -> None:
    seen: dict[str, Any] = {}

    def while_alive(res: Any) -> None:
        old = tb.main_pid()
        host_pid = tb.guards()[res.guard_pname]
        tb.run("systemctl", "restart", "rockerd.service")
        seen["new"] = new = tb.main_pid()
        assert new not in (0, old) and tb.active() == "active"
        # (KillMode=control-group would SIGTERM the guard, which ends its rocker: the app first)
        assert wait_gone(res.app_pid, 0.5) is None, "the restart ended the rocker's app"
        assert tb.guards().get(res.guard_pname) == host_pid, "the restart ended the rocker's guard"
        listed = [r["guard_pname"] for r in tb.call("io.rocker.Rocker.List")["rockers"]]
        assert res.guard_pname in listed, "the restarted rockerd did not re-adopt the rocker"

    run = run_app(tb.request(), lambda: {"ok": True}, while_alive)
    assert run.res.ok and run.report == {"ok": True} and os.waitstatus_to_exitcode(run.status) == 0
    # the re-adopting rockerd saw it end
    ended = tb.wait_journal("ROCKER_EVENT=ended", f"ROCKER_GUARD_NAME={run.res.guard_pname}")[-1]
    assert ended["_PID"] == str(seen["new"])


def test_sigabrt_gets_rockerd_restarted(tb: Bed) -> None:
    tb.call("org.varlink.service.GetInfo")
    old, restarts = tb.main_pid(), int(tb.show("NRestarts"))
    tb.run("systemctl", "kill", "--kill-whom=main", "--signal=SIGABRT", "rockerd.service")
    assert wait_until(lambda: tb.main_pid() not in (0, old) and tb.active() == "active", 10 * SLOW)
    assert int(tb.show("NRestarts")) == restarts + 1
    assert tb.call("io.rocker.Rocker.List") == {"rockers": []}


def test_watchdog_restarts_a_wedged_event_loop(tb: Bed) -> None:
    tb.call("org.varlink.service.GetInfo")
    old, restarts = tb.main_pid(), int(tb.show("NRestarts"))
    assert tb.show("WatchdogUSec") == "3s"
    # fed from the event loop every 1.5 s: systemd records each WATCHDOG=1
    ping = int(tb.show("WatchdogTimestampMonotonic"))
    assert wait_until(lambda: int(tb.show("WatchdogTimestampMonotonic")) > ping, 2.5, 0.1)
    tb.run("systemctl", "kill", "--kill-whom=main", "--signal=SIGUSR2", "rockerd.service")
    wedged = tb.wait_journal(f"_PID={old}",
                             "MESSAGE=test hook: SIGUSR2 blocks the event loop (the watchdog should end this)")[-1]
    with pytest.raises(wire.RecvFailed):  # wedged: the connection waits in the backlog, no answer comes
        tb.call("org.varlink.service.GetInfo", timeout=0.5)
    t0 = time.monotonic()
    assert wait_until(lambda: tb.main_pid() not in (0, old) and tb.active() == "active", 15 * SLOW)
    assert time.monotonic() - t0 < 8 * SLOW  # the watchdog's end, systemd's restart and rockerd's start
    assert int(tb.show("NRestarts")) == restarts + 1
    fired = tb.wait_journal("UNIT=rockerd.service", "MESSAGE=rockerd.service: Watchdog timeout (limit 3s)!")[-1]
    # systemd's timer, unscaled: the last ping came at most 1.5 s before the wedge, so the watchdog ends it
    # within 3 s of the wedge (journal timestamps: CLOCK_MONOTONIC, one kernel; 1 s for journald's stamping)
    after = (int(fired["__MONOTONIC_TIMESTAMP"]) - int(wedged["__MONOTONIC_TIMESTAMP"])) / 1e6
    assert 0 < after < 4, f"the watchdog fired {after:.2f} s after the wedge (WatchdogSec=3s)"
    assert tb.call("org.varlink.service.GetInfo")["product"] == "rockerd"


def test_idle_exit_and_reactivation(tb: Bed) -> None:
    exec_start = unit_directives(UNITS / "rockerd.service")["Service.ExecStart"][0]
    assert "--idle-exit 300" in exec_start
    idle = exec_start.replace("--idle-exit 300", "--idle-exit 1")
    tb.dropin("60-idle.conf", f"[Service]\nExecStart=\nExecStart={idle}\n")
    try:
        tb.run("systemctl", "restart", "rockerd.service")
        pids: list[int] = []

        def while_alive(res: Any) -> None:  # a live rocker keeps rockerd from idling out
            pids.append(tb.main_pid())
            time.sleep(2.5)
            pids.append(tb.main_pid())
            assert tb.active() == "active"

        run = run_app(tb.request(), lambda: {}, while_alive)
        assert run.res.ok and pids[0] == pids[1], pids
        first = pids[0]
        t0 = time.monotonic()
        assert wait_until(lambda: tb.active() == "inactive", 10)
        assert time.monotonic() - t0 < 4
        assert tb.show("Result") == "success" and tb.active("rockerd.socket") == "active"
        assert tb.journal(f"_PID={first}", "MESSAGE=no rockers and no clients for 1 s: exiting (socket activation "
                          "starts rockerd again on the next connection)")
        assert tb.call("io.rocker.Rocker.List") == {"rockers": []}
        assert tb.active() == "active" and tb.main_pid() != first
    finally:
        tb.dropin("60-idle.conf", None)
        tb.run("systemctl", "restart", "rockerd.service")


PIDS_MAX = 12  # the rocker's in the test below: its guard, its app and at most 10 children


def fork_until_refused() -> dict[str, Any]:
    """As the app: fork children (which wait) until the kernel says no: the rocker's pids.max at work."""
    r, w = os.pipe()
    kids, err = [], 0
    for _ in range(3 * PIDS_MAX):
        try:
            pid = os.fork()
        except OSError as e:
            err = e.errno or -1
            break
        if pid == 0:
            os.close(w)
            os.read(r, 1)
            os._exit(0)
        kids.append(pid)
    os.close(w)
    for pid in kids:
        os.waitpid(pid, 0)
    os.close(r)
    return {"forked": len(kids), "errno": err, "cgroup": Path("/proc/self/cgroup").read_text()}


def test_rockers_cgroups_live_under_their_unit_and_survive_a_restart(tb: Bed) -> None:
    """Item 5 of issue 19 (docs/operations.md, "Under systemd"): each rocker's cgroup is
    rocker-cgroups.service/rocker/rk-... with its limits, which hold, shown by `systemctl status` and
    `systemd-cgtop`; rockerd is a leaf of its own unit, so systemd 252 (no DelegateSubgroup=) can restart it
    with rockers alive, keeping rocker and cgroup (re-adopted); stopping rockerd leaves them; stopping
    rocker-cgroups.service ends them."""
    row = next(p for p in tb.call("io.rocker.Rocker.Kernel")["paths"] if p["feature"] == "cgroups")
    if not row["path"].startswith("cgroup v2"):
        pytest.skip(f"the testbed's systemd has no cgroup v2 controllers to delegate on this host: {row['path']}")
    holder, unit = tb.show("ControlGroup", HOLDER), tb.show("ControlGroup")
    assert holder == f"/system.slice/{HOLDER}" and tb.active(HOLDER) == "active", (holder, tb.active(HOLDER))
    req = tb.request()
    req.pids_max, req.memory_max = PIDS_MAX, 64 << 20
    t0 = time.monotonic()
    with live_app(req, fork_until_refused) as run:
        assert run.res.ok, run.res.detail
        name, app = run.res.guard_pname, run.res.app_pid
        cg = f"/sys/fs/cgroup{holder}/rocker/{name}"
        # the app is in the rocker's cgroup, under the holder unit, and its limit holds
        assert Path(f"/proc/{app}/cgroup").read_text().strip().endswith(f"{holder}/rocker/{name}")
        assert run.report["cgroup"] == "0::/\n" and run.report["errno"] == errno.EAGAIN, run.report
        assert 0 < run.report["forked"] <= PIDS_MAX - 2, run.report
        assert (tb.run("cat", f"{cg}/pids.max"), tb.run("cat", f"{cg}/memory.max")) == (str(PIDS_MAX), str(64 << 20))
        # seen the systemd way
        status = tb.run("systemctl", "status", "--no-pager", "-l", HOLDER, check=False)
        assert "─rocker" in status and f"─{name}" in status, status
        cgtop = tb.run("env", "COLUMNS=500", "systemd-cgtop", "-b", "-n", "1", "--depth=8")  # paths unshortened
        assert f"{holder.lstrip('/')}/rocker/{name}" in cgtop, cgtop
        # rockerd itself: a leaf of its own unit (a v2 cgroup holding processes hands no controllers down)
        assert tb.run("cat", f"/proc/{tb.main_pid()}/cgroup") == f"0::{unit}"
        assert tb.run("cat", f"/sys/fs/cgroup{unit}/cgroup.subtree_control") == ""
        guard = tb.guards()[name]

        def kept(why: str) -> None:
            assert tb.guards().get(name) == guard and wait_gone(app, 0) is None, f"{why} ended the rocker"
            assert tb.run("cat", f"{cg}/pids.max") == str(PIDS_MAX), f"{why} lost the rocker's cgroup"
            assert Path(f"/proc/{app}/cgroup").read_text().strip().endswith(f"{holder}/rocker/{name}")

        old = tb.main_pid()
        t1 = time.monotonic()
        tb.run("systemctl", "restart", "rockerd.service")
        restart = time.monotonic() - t1
        assert tb.active() == "active" and tb.main_pid() not in (0, old), (tb.active(), tb.run(
            "journalctl", "-n", "20", "--no-pager", "-u", "rockerd.service"))
        kept("systemctl restart rockerd")
        listed = {r["guard_pname"]: r for r in tb.call("io.rocker.Rocker.List")["rockers"]}
        assert listed[name]["limits"]["pids_max"] == PIDS_MAX, "the restarted rockerd did not re-adopt the cgroup"

        # docs/operations.md: stopping rockerd leaves the rockers running; the next connection re-adopts them
        tb.run("systemctl", "stop", "rockerd.service")
        assert (tb.active(), tb.active(HOLDER)) == ("inactive", "active")
        kept("systemctl stop rockerd")
        assert name in [r["guard_pname"] for r in tb.call("io.rocker.Rocker.List")["rockers"]]

        # stopping the rockers' unit ends them (and rockerd, which Requires= it)
        tb.run("systemctl", "stop", HOLDER)
        assert wait_gone(app, 10) is not None, "stopping rocker-cgroups.service left the app running"
        # reap it as a launcher would: the guard's exit (PID 1 of the rocker's namespace) waits until every
        # process of the namespace is reaped, the app too (the 6.1 VM run before this line saw the guard stay)
        assert os.WIFSIGNALED(os.waitpid(app, 0)[1])
        if not wait_until(lambda: name not in tb.guards(), 10):
            left = tb.guards().get(name)
            stat_line = Path(f"/proc/{left}/stat").read_text() if left else ""
            raise AssertionError(f"the guard outlived `systemctl stop {HOLDER}`: {stat_line}\n"
                                 + tb.run("systemctl", "status", "--no-pager", "-l", HOLDER, check=False)
                                 + tb.run("journalctl", "-n", "30", "--no-pager", check=False))
        assert (tb.active(), tb.active(HOLDER)) == ("inactive", "inactive")
        assert tb.sh("exec", "test", "-d", cg, check=False).returncode != 0, cg
    # the next connection starts both again
    assert tb.call("io.rocker.Rocker.List") == {"rockers": []}
    assert (tb.active(), tb.active(HOLDER)) == ("active", "active")
    print(f"cgroup proof: restart with a live rocker {restart:.2f} s, whole test {time.monotonic() - t0:.1f} s")
