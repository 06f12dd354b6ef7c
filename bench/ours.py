"""rocker's own figures, measured through the public client API against the benchmark's rockerd.

    measured_cycle  (a) start latency, (b) create latency, (c) teardown, one rocker at a time
    throughput      (d) whole cycles per second with `conc` launcher processes
    hold_phase      (e) memory with N idle rockers alive, (f) create latency with N alive

Times come from CLOCK_MONOTONIC, which every namespace shares: the app writes
its own timestamp, the benchmark compares it with the moment it called
enter_rocker().
"""

from __future__ import annotations

import json
import math
import os
import select
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rocker_client import Exec, RockerRequest, enter_rocker, request_new, wire

from . import proc
from .daemon import BenchDaemon

APP_IN_PKG = "bin/app"

# (start, end) monotonic ns of the last wire call this process made: enter_rocker's Create round trip
LAST_WIRE = [0, 0]


def install_wire_timer() -> None:
    """Time enter_rocker's one wire call (connect, send, daemon works, reply + fds received).

    enter.py looks up wire.call at call time, so wrapping the module attribute
    in this process measures exactly the call enter_rocker makes.
    """
    if getattr(wire.call, "_bench_timed", False):
        return
    orig = wire.call

    def timed(*args: Any, **kwargs: Any) -> Any:
        t0 = time.monotonic_ns()
        try:
            return orig(*args, **kwargs)
        finally:
            LAST_WIRE[0], LAST_WIRE[1] = t0, time.monotonic_ns()

    timed._bench_timed = True  # type: ignore[attr-defined]
    wire.call = timed  # type: ignore[assignment]


def ms(a_ns: int, b_ns: int) -> float:
    return round((b_ns - a_ns) / 1e6, 4)


@dataclass
class Setup:
    workdir: Path
    pkg: Path
    exec_dir: str
    overlays: list[str]
    uid: int
    gid: int
    daemon: BenchDaemon
    nsw: proc.NsWatch
    hold_pkg: Path | None = None  # a copy of pkg (another package to rockerd) for the idle rockers
    network: str | None = None  # the request's network mode (None: rockerd's default, none)
    seccomp: str | None = None  # the request's syscall filter profile (None: the default filter)
    errors: list[str] = field(default_factory=list)

    @property
    def app_path(self) -> str:
        return f"{self.exec_dir}/{APP_IN_PKG}"

    def data_dir(self, label: str) -> str:
        return str(self.workdir / "data" / label)

    def request(self, label: str, pkg: Path | None = None) -> RockerRequest:
        req = request_new()
        req.app_id, req.uid, req.gid = 1, self.uid, self.gid
        req.app_pkg_path = str(pkg or self.pkg)
        req.app_exec_dir = self.exec_dir
        req.app_data_dir = self.data_dir(label)
        req.app_overlay_dirs = list(self.overlays)
        req.network = self.network
        if self.seccomp is not None:
            req.seccomp = self.seccomp
        return req

    def error(self, where: str, what: str) -> None:
        if len(self.errors) < 50:
            self.errors.append(f"{where}: {what}")


def _read_lines(fd: int, count: int, timeout: float) -> list[bytes]:
    buf = b""
    deadline = time.monotonic() + timeout
    while buf.count(b"\n") < count:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            raise TimeoutError(f"app wrote {buf!r} within {timeout:g} s, expected {count} lines")
        chunk = os.read(fd, 256)
        if not chunk:
            raise EOFError(f"app closed its pipe after {buf!r}")
        buf += chunk
    return buf.split(b"\n")[:count]


def _poll_each(conds: list[Callable[[], bool]], timeout: float) -> list[float | None]:
    """When each condition first held (time.monotonic_ns()/1e6), polled together; None: not in time."""
    when: list[float | None] = [None] * len(conds)
    deadline = time.monotonic() + timeout
    while True:
        for i, cond in enumerate(conds):
            if when[i] is None and cond():
                when[i] = time.monotonic_ns() / 1e6
        if all(w is not None for w in when) or time.monotonic() > deadline:
            return when
        time.sleep(0.0005)


def wait_forgotten(s: Setup, name: str) -> None:
    """Until rockerd has handled the end of rocker `name` (its state record is gone): only then
    is the next rocker of an otherwise unused package the first again."""
    record = Path(s.daemon.state_dir) / f"{name}.json"
    if proc.poll_until(lambda: not record.exists(), 10) is None:
        s.error("cycle", f"rockerd still records {name} 10 s after its guard went")


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass


# ---------------------------------------------------------------- (a) (b) (c): one rocker at a time

def measured_cycle(s: Setup, label: str = "cycle", loop_goes: bool = True) -> dict[str, Any] | None:
    """enter_rocker -> app stamps -> release app -> guard gone -> loop, mnt ns, net ns released.

    The app is the benchmark's callable; its first line takes a timestamp, then
    it execs the package's static binary, whose main() takes another and
    blocks on a pipe until released (so the guard sees it alive). rockerd
    shares one mount (and loop device) per package among live rockers:
    loop_goes=False when another rocker of the package stays alive.
    """
    st_r, st_w = os.pipe()
    hold_r, hold_w = os.pipe()
    app_path = s.app_path

    def app(_: object) -> None:
        t = time.monotonic_ns()  # the app's first line, inside the rocker
        os.write(st_w, b"%d\n" % t)
        os.dup2(st_w, 1)
        os.dup2(hold_r, 0)
        os.execv(app_path, ["app", "s", "w"])

    app_pid = 0
    try:
        t0 = time.monotonic_ns()
        res = enter_rocker(s.request(label), app)
        t_ret = time.monotonic_ns()
        w0, w1 = LAST_WIRE
        os.close(st_w)
        os.close(hold_r)
        st_w = hold_r = -1
        if not res.ok:
            s.error("cycle", f"{res.err_no.name}: {res.detail}")
            return None
        app_pid = res.app_pid
        guard = res.guard_pid
        pidfd = proc.open_pidfd(guard)
        handles = []
        if s.nsw.supported:
            for n in ("mnt", "net"):
                if n == "net" and s.network == "host":
                    continue  # the host's: it stays
                try:
                    handles.append(s.nsw.handle_of(f"/proc/{guard}/ns/{n}"))
                except OSError as e:
                    s.error("cycle", f"no handle on the guard's {n} ns: {e}")
        loop = proc.exec_loop_device(guard, s.exec_dir) if loop_goes else None
        first, main = (int(x) for x in _read_lines(st_r, 2, 10))
        os.close(hold_w)  # the app reads EOF and exits
        hold_w = -1
        os.waitpid(app_pid, 0)
        app_pid = 0
        t_exit = time.monotonic_ns()
        if pidfd is not None:
            if not proc.wait_pidfd(pidfd, 15):
                s.error("cycle", f"guard {guard} still alive 15 s after its app exited")
            os.close(pidfd)
        t_guard = time.monotonic_ns()
        pkg = str(s.pkg)

        def released() -> bool:
            if loop is not None and proc.loop_backing(loop) == pkg:
                return False
            return not any(s.nsw.alive(h) for h in handles)

        record = Path(s.daemon.state_dir) / f"{res.guard_pname}.json"
        t_rel, t_forgot = _poll_each([released, lambda: not record.exists()], 10)
        exit_ms = t_exit / 1e6
        return {
            "name": res.guard_pname,
            "start_first_line_ms": ms(t0, first),
            "start_exec_ms": ms(t0, main),
            "enter_return_ms": ms(t0, t_ret),
            "create_client_ms": ms(w0, w1),
            "client_before_wire_ms": ms(t0, w0),
            "reply_to_first_line_ms": ms(w1, first),
            "teardown_guard_ms": ms(t_exit, t_guard),
            "teardown_ms": round(t_rel - exit_ms, 4) if t_rel is not None else None,
            "teardown_forgot_ms": round(t_forgot - exit_ms, 4) if t_forgot is not None else None,
            "loop_seen": loop is not None,
            "ns_watched": len(handles),
        }
    finally:
        for fd in (st_r, st_w, hold_r, hold_w):
            if fd >= 0:
                os.close(fd)
        if app_pid:
            _reap(app_pid)


@dataclass
class Holder:
    """One idle rocker kept alive (its app blocks on a pipe) until release()."""

    app_pid: int
    guard_pid: int
    pidfd: int | None
    hold_w: int

    def release(self) -> None:
        if self.hold_w >= 0:
            os.close(self.hold_w)
            self.hold_w = -1
        if self.app_pid:
            _reap(self.app_pid)
            self.app_pid = 0
        if self.pidfd is not None:
            proc.wait_pidfd(self.pidfd, 15)
            os.close(self.pidfd)
            self.pidfd = None


def hold_one(s: Setup, label: str) -> Holder | None:
    hold_r, hold_w = os.pipe()
    app_path = s.app_path

    def app(_: object) -> None:
        os.dup2(hold_r, 0)
        os.execv(app_path, ["app", "w"])

    try:
        res = enter_rocker(s.request(label), app)
    finally:
        os.close(hold_r)
    if not res.ok:
        os.close(hold_w)
        s.error("hold one", f"{res.err_no.name}: {res.detail}")
        return None
    return Holder(res.app_pid, res.guard_pid, proc.open_pidfd(res.guard_pid), hold_w)


# ---------------------------------------------------------------- (d): whole cycles, `conc` launchers

def true_cycle(s: Setup, req: RockerRequest, app: Callable[[object], None]) -> dict[str, Any]:
    """One whole cycle: enter_rocker, the app execs a static `true`, waitpid, guard gone."""
    t0 = time.monotonic_ns()
    res = enter_rocker(req, app)
    t_ret = time.monotonic_ns()
    w0, w1 = LAST_WIRE
    if not res.ok:
        return {"error": f"{res.err_no.name}: {res.detail}"}
    pidfd = proc.open_pidfd(res.guard_pid)
    os.waitpid(res.app_pid, 0)
    t_exit = time.monotonic_ns()
    gone = True
    if pidfd is not None:
        gone = proc.wait_pidfd(pidfd, 15)
        os.close(pidfd)
    t_end = time.monotonic_ns()
    out: dict[str, Any] = {"name": res.guard_pname, "create_client_ms": ms(w0, w1), "enter_return_ms": ms(t0, t_ret),
                           "cycle_ms": ms(t0, t_end), "guard_after_exit_ms": ms(t_exit, t_end), "end_ns": t_end}
    if not gone:
        out["error"] = f"guard {res.guard_pid} alive 15 s after its app exited"
    return out


def _true_app(app_path: str) -> Callable[[object], None]:
    def app(_: object) -> None:
        os.execv(app_path, ["app"])

    return app


def _worker(s: Setup, k: int, n: int, ready_w: int, go_r: int, out_path: str, exec_app: bool) -> None:
    code = 1
    try:
        req = s.request(f"x{k}" if exec_app else f"w{k}")
        app = Exec(s.app_path, ["app"]) if exec_app else _true_app(s.app_path)
        os.write(ready_w, b"r")
        os.close(ready_w)
        os.read(go_r, 1)  # EOF: go
        rows = [true_cycle(s, req, app) for _ in range(n)]
        with open(out_path, "w") as f:
            json.dump(rows, f)
        code = 0
    except BaseException as e:
        try:
            with open(out_path, "w") as f:
                json.dump([{"error": f"worker {k}: {e!r}"}], f)
        except BaseException:
            pass
    finally:
        os._exit(code)


def release_together(ready_r: int, go_w: int, n: int) -> int:
    """Wait for n launchers' ready bytes, then close go_w (their EOF: go); the start time (ns)."""
    got = 0
    while got < n:
        chunk = os.read(ready_r, n)
        if not chunk:
            break
        got += len(chunk)
    t0 = time.monotonic_ns()
    os.close(go_w)
    return t0


def throughput(s: Setup, conc: int, total: int, exec_app: bool = False) -> dict[str, Any]:
    """`conc` launcher processes, each doing cycles back to back; cycles/s = done / wall time.

    exec_app: the app is an `Exec` of the static binary (no fork of the launcher) instead of a
    callable that execs it."""
    per = max(1, math.ceil(total / conc))
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()
    pids: list[int] = []
    outs = [str(s.workdir / f"tput-c{conc}-w{k}.json") for k in range(conc)]
    try:
        for k in range(conc):
            pid = os.fork()
            if pid == 0:
                os.close(ready_r)
                os.close(go_w)
                _worker(s, k, per, ready_w, go_r, outs[k], exec_app)
            pids.append(pid)
        os.close(ready_w)
        ready_w = -1
        t0 = release_together(ready_r, go_w, conc)
        go_w = -1
        for pid in pids:
            os.waitpid(pid, 0)
        pids.clear()
        rows: list[dict[str, Any]] = []
        for path in outs:
            try:
                with open(path) as f:
                    rows += json.load(f)
                os.unlink(path)
            except (OSError, ValueError) as e:
                rows.append({"error": f"no worker output {path}: {e}"})
    finally:
        for fd in (ready_r, ready_w, go_r, go_w):
            if fd >= 0:
                os.close(fd)
        for pid in pids:
            _reap(pid)
    good = [r for r in rows if "error" not in r]
    for r in rows:
        if "error" in r:
            s.error(f"throughput c={conc}", r["error"])
    wall = (max(r["end_ns"] for r in good) - t0) / 1e9 if good else 0.0
    return {"conc": conc, "cycles": len(good), "errors": len(rows) - len(good), "wall_s": round(wall, 4),
            "cycles_per_s": round(len(good) / wall, 2) if wall > 0 else 0.0, "rows": good}


def exec_start_cycles(s: Setup, n: int, cold: bool = False) -> list[dict[str, Any]]:
    """n cycles one at a time, back to back: enter_rocker() with an `Exec` app -> its main().

    cold: each the first rocker of its package (nothing holds it, and each cycle waits until
    rockerd has handled the last one's end, so the package is mounted afresh)."""
    rows = []
    for _ in range(n):
        r, w = os.pipe()
        os.set_inheritable(w, True)  # the program writes its stamp here ($STAMP_FD)
        try:
            t0 = time.monotonic_ns()
            res = enter_rocker(s.request("xstart"), Exec(s.app_path, ["app", "s"], {"STAMP_FD": str(w)}))
            t_ret = time.monotonic_ns()
        finally:
            os.close(w)
        try:
            if not res.ok:
                s.error("Exec start", f"{res.err_no.name}: {res.detail}")
                continue
            pidfd = proc.open_pidfd(res.guard_pid)
            try:
                lines = _read_lines(r, 1, 10)
            except (TimeoutError, EOFError):
                lines = []
            os.waitpid(res.app_pid, 0)
            t_exit = time.monotonic_ns()
            if pidfd is not None:
                proc.wait_pidfd(pidfd, 15)
                os.close(pidfd)
            t_end = time.monotonic_ns()
            if cold:
                wait_forgotten(s, res.guard_pname)
        finally:
            os.close(r)
        if not lines:
            s.error("Exec start", f"{res.guard_pname}: the app wrote no timestamp")
            continue
        rows.append({"name": res.guard_pname, "start_exec_ms": ms(t0, int(lines[0])),
                     "enter_return_ms": ms(t0, t_ret), "teardown_guard_ms": ms(t_exit, t_end)})
    return rows


# ---------------------------------------------------------------- (e) (f): N idle rockers alive

def _in_child(fn: Callable[[], dict[str, Any] | None]) -> Callable[[], dict[str, Any] | None]:
    """Run fn in a forked child now; the returned function waits for it and gives its result."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(r)
            os.write(w, json.dumps(fn()).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(w)

    def result() -> dict[str, Any] | None:
        chunks = []
        try:
            while chunk := os.read(r, 1 << 16):
                chunks.append(chunk)
        finally:
            os.close(r)
            _reap(pid)
        try:
            return json.loads(b"".join(chunks))
        except ValueError:
            return None

    return result


@dataclass
class Held:
    app_pid: int
    guard_pid: int
    pidfd: int | None


def hold_phase(s: Setup, levels: list[int], samples: int, settle: float,
               at_level: Callable[[int], dict[str, Any]] | None = None,
               log: Callable[[str], None] = print, ref: BenchDaemon | None = None) -> dict[str, Any]:
    """Build up to each level of idle rockers (apps blocked on one shared pipe), measure, release all.

    With `ref` (a second rockerd with no rockers), every create sample alternates
    between our daemon and the empty one: the same kernel and the same noise,
    so their ratio is what rockerd's own bookkeeping of N rockers costs.
    """
    hold_r, hold_w = os.pipe()
    app_path = s.app_path

    def hold_app(_: object) -> None:
        os.dup2(hold_r, 0)
        os.execv(app_path, ["app", "w"])

    held: list[Held] = []
    out: dict[str, Any] = {"levels": {}, "create_at_live": {}, "create_at_live_ref": {}}

    def on_ref() -> dict[str, Any] | None:
        assert ref is not None
        main_socket = os.environ.get("ROCKER_SOCKET", "")
        os.environ["ROCKER_SOCKET"] = ref.socket
        try:
            return measured_cycle(s, "live-ref")
        finally:
            os.environ["ROCKER_SOCKET"] = main_socket

    def create_samples(label: str) -> None:
        """Measured cycles of the main package (the idle rockers hold the copy): same cold path at every level."""
        measured_cycle(s, "live")  # warm-up: the data dir exists after the first one
        if ref is not None:
            on_ref()
        rows, ref_rows = [], []
        for _ in range(samples):
            rows.append(measured_cycle(s, "live"))
            if ref is not None:
                ref_rows.append(on_ref())
        out["create_at_live"][label] = [r for r in rows if r is not None]
        out["create_at_live_ref"][label] = [r for r in ref_rows if r is not None]

    try:
        d = s.daemon
        netns0 = proc.slab_active("net_namespace")
        create_samples("0")
        mi0 = proc.meminfo()
        out["levels"]["0"] = {"live": 0, "rockerd_rss_kib": d.rss_kib(), "rockerd_pss_kib": d.pss_kib(),
                              "rockerd_fds": d.fd_count()}
        for level in levels:
            t_build = time.monotonic()
            while len(held) < level:
                res = enter_rocker(s.request(f"h{len(held)}", s.hold_pkg), hold_app)
                if not res.ok:
                    s.error(f"holding rocker #{len(held)}", f"{res.err_no.name}: {res.detail}")
                    break
                held.append(Held(res.app_pid, res.guard_pid, proc.open_pidfd(res.guard_pid)))
                if len(held) % 100 == 0:
                    log(f"   {len(held)} rockers live")
            build_s = time.monotonic() - t_build
            time.sleep(settle)  # let the guards back off to their idle rhythm
            cpu0 = sum(proc.cpu_seconds(h.guard_pid) for h in held), proc.cpu_seconds(d.pid), time.monotonic()
            time.sleep(settle)  # idle CPU: what the guards and rockerd burn while nothing happens
            cpu1 = sum(proc.cpu_seconds(h.guard_pid) for h in held), proc.cpu_seconds(d.pid), time.monotonic()
            pss = [proc.rollup(h.guard_pid) for h in held]
            pss = [p for p in pss if p]
            mi1 = proc.meminfo()
            n = len(held)
            row: dict[str, Any] = {
                "live": n, "build_s": round(build_s, 2),
                "guard_pss_kib_p50": statistics.median(p["Pss"] for p in pss) if pss else None,
                "guard_pss_kib_mean": round(statistics.fmean(p["Pss"] for p in pss), 1) if pss else None,
                "guard_rss_kib_p50": statistics.median(p["Rss"] for p in pss) if pss else None,
                "guard_private_dirty_kib_p50": statistics.median(p.get("Private_Dirty", 0) for p in pss)
                if pss else None,
                "guards_measured": len(pss),
                "guards_idle_cpu_pct": round(100 * (cpu1[0] - cpu0[0]) / (cpu1[2] - cpu0[2]), 2),
                "rockerd_idle_cpu_pct": round(100 * (cpu1[1] - cpu0[1]) / (cpu1[2] - cpu0[2]), 2),
                "rockerd_rss_kib": d.rss_kib(), "rockerd_pss_kib": d.pss_kib(), "rockerd_fds": d.fd_count(),
                "kernel_memavailable_drop_kib_per_rocker": round((mi0["MemAvailable"] - mi1["MemAvailable"]) / n, 1)
                if n else None,
                "kernel_slab_kib_per_rocker": round((mi1["Slab"] - mi0["Slab"]) / n, 1) if n else None,
            }
            if at_level is not None:
                row.update(at_level(level))
            out["levels"][str(level)] = row
            log(f"   {n} live: guard PSS p50 {row['guard_pss_kib_p50']} KiB, rockerd RSS "
                f"{row['rockerd_rss_kib'] / 1024:.1f} MiB")
            create_samples(str(level))
        # release them all at once
        t0 = time.monotonic_ns()
        os.close(hold_w)
        hold_w = -1
        for h in held:
            _reap(h.app_pid)
        t_apps = time.monotonic_ns()
        # meanwhile, in a child: one rocker asked for while rockerd handles all those ends
        during = _in_child(lambda: measured_cycle(s, "live", loop_goes=False))
        fds = [h.pidfd for h in held if h.pidfd is not None]
        t_guards, alive = proc.wait_all_pidfds(fds, 30)
        for fd in fds:
            os.close(fd)
        for h in held:
            h.pidfd = None
        during_row = during()
        prefix = str(s.workdir) + "/"
        t_loops = proc.poll_until(lambda: not proc.loops_backed_by(prefix), 60, step=0.005)
        # the kernel frees network namespaces later, in batches (cleanup_net); wait for that before
        # measuring at 0 live again (other users' namespaces come and go: allow some slack)
        t_netns = None
        if netns0 is not None:
            t_netns = proc.poll_until(lambda: (proc.slab_active("net_namespace") or 0) <= netns0 + 50, 20,
                                      step=0.01)
        out["release_all"] = {"live": len(held), "apps_reaped_ms": ms(t0, t_apps),
                              "guards_gone_ms": round(t_guards - t0 / 1e6, 1) if t_guards is not None else None,
                              "loops_free_ms": round(t_loops - t0 / 1e6, 1) if t_loops is not None else None,
                              "guards_left": alive,
                              "netns_freed_ms": round(t_netns - t0 / 1e6, 1) if t_netns is not None else None,
                              "create_right_after_ms": during_row["create_client_ms"] if during_row else None,
                              "start_right_after_ms": during_row["start_exec_ms"] if during_row else None}
        held.clear()
        create_samples("0_after")
    finally:
        if hold_w >= 0:
            os.close(hold_w)
        os.close(hold_r)
        for h in held:
            _reap(h.app_pid)
            if h.pidfd is not None:
                proc.wait_pidfd(h.pidfd, 30)
                os.close(h.pidfd)
    return out
