"""Issue 17: the app is confined whatever its uid: /proc/sys and friends read-only, /proc/kcore and
friends masked (docs/security.md, "Confinement")."""

from __future__ import annotations

import ctypes
import errno
import json
import os
import pwd
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from daemon import Daemon, start_daemon
from pkgbuild import HELLO_SCRIPT, build_pkg
from rockers import make_req, run_app

from rocker_client import Exec, RockerErr, enter_rocker

# Docker's readonlyPaths and maskedPaths, as rocker-guard.c applies them (written out: the test checks the guard).
KERNEL = tuple(int(x) for x in os.uname().release.split("-")[0].split(".")[:2])
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


SYSFS_ROOT_FILES = ("/sys/power/state", "/sys/kernel/mm/transparent_hugepage/enabled", "/sys/kernel/uevent_helper",
                    "/sys/fs/cgroup/cgroup.subtree_control", "/sys/fs/cgroup/cgroup.procs")


def _writable_sysfs() -> dict[str, object]:
    """Open a few root-owned sysfs files (also below /sys's submounts) for writing, and write nothing."""
    got = {}
    for path in SYSFS_ROOT_FILES:
        if not os.path.exists(path):
            continue
        try:
            os.close(os.open(path, os.O_WRONLY))
            got[path] = 0
        except OSError as e:
            got[path] = e.errno
    return got


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
def test_uid0_app_cannot_write_sysfs(base: Path, pkg: Path) -> None:
    """/sys is the host's sysfs: its root-owned files (and cgroup2's below it) are read-only in a rocker."""
    run = run_app(make_req(base, pkg, uid=0), _writable_sysfs)
    assert run.res.ok, run.res.detail
    assert "/sys/power/state" in run.report, run.report
    assert all(v == errno.EROFS for v in run.report.values()), run.report


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



# ---- the syscall filter (rockerd/confine/default.policy), from each launcher ----

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PROBE_SRC = HERE / "confine_probe.c"
E = errno
# What each probe of confine_probe.c must get under the default profile, as docs/security.md states it.
DENIED = {
    "keyctl": E.EPERM, "add_key": E.EPERM, "request_key": E.EPERM, "userfaultfd": E.EPERM,
    "perf_event_open": E.EPERM, "bpf": E.EPERM, "io_uring_setup": E.EPERM, "io_uring_enter": E.EPERM,
    "io_uring_register": E.EPERM, "kexec_load": E.EPERM, "kexec_file_load": E.EPERM,
    "open_by_handle_at": E.EPERM, "name_to_handle_at": E.EPERM, "personality_no_randomize": E.EPERM,
    "personality_read_implies_exec": E.EPERM, "personality_high_bits": E.EPERM, "personality_other": E.EPERM,
    "unshare_newuser": E.EPERM, "unshare_newnet": E.EPERM,
    "clone_newuser": E.EPERM, "clone3": E.ENOSYS, "setns": E.EPERM, "ioctl_tiocsti": E.EPERM,
    "ioctl_tiocsti_high_bits": E.EPERM, "ioctl_tioclinux": E.EPERM, "mount": E.EPERM, "fsopen": E.EPERM,
    "get_mempolicy": E.EPERM, "syslog": E.EPERM, "unknown_463": E.ENOSYS, "x32_getpid": E.ENOSYS,
    "int80_getpid": E.ENOSYS,
}
ALLOWED = {"getpid": 0, "ioctl_other": E.EBADF, "personality_linux32": 0, "personality_uname26": 0,
           "personality_linux32_uname26": 0, "personality_query": 0, "personality_back": 0}
needs_cc = pytest.mark.skipif(shutil.which("cc") is None or shutil.which("make") is None, reason="needs cc, make")


def _cc(*args: str | Path) -> None:
    proc = subprocess.run(["cc", "-Wall", "-Wextra", "-Werror", *map(str, args)], capture_output=True, text=True,
                          check=False)
    assert proc.returncode == 0, proc.stderr


@pytest.fixture(scope="module")
def probes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The probe as a program (Exec, and inside the package), as a library (loaded by the callable) and
    linked with librocker_client (the C client), built from one source."""
    top = tmp_path_factory.mktemp("confine")
    top.chmod(0o755)
    out = {"exe": top / "confine_probe", "lib": top / "confine_probe.so", "c": top / "confine_probe_c"}
    _cc(PROBE_SRC, "-o", out["exe"])
    _cc("-shared", "-fPIC", "-DAS_LIBRARY", PROBE_SRC, "-o", out["lib"])
    build = top / "cbuild"
    proc = subprocess.run(["make", "-C", str(ROOT / "clients/c"), f"O={build}"], capture_output=True, text=True,
                          check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    _cc("-DVIA_C_CLIENT", f"-I{ROOT / 'clients/c'}", PROBE_SRC, f"-L{build}", "-lrocker_client",
        f"-Wl,-rpath,{build}", "-o", out["c"])
    return out


@pytest.fixture
def probe_pkg(tmp_path: Path, probes: dict[str, Path]) -> Path:
    return build_pkg(tmp_path, {"bin/confine_probe": (probes["exe"].read_bytes(), 0o755),
                                "bin/hello": (HELLO_SCRIPT, 0o755)})


def _parse(text: str) -> dict[str, object]:
    got: dict[str, object] = {}
    for line in text.splitlines():
        name, _, rest = line.partition(" ")
        got[name] = rest.split() if name == "status" else int(rest)
    return got


def _read_all(fd: int) -> str:
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    os.close(fd)
    return b"".join(chunks).decode()


def _via_callable(req: object, probes: dict[str, Path]) -> str:
    lib = ctypes.CDLL(str(probes["lib"]))  # loaded here: the app's fork has it mapped already
    r, w = os.pipe()

    def app(_: object) -> int:
        os.close(r)
        return int(lib.confine_probe(w))

    res = enter_rocker(req, app)  # type: ignore[arg-type]
    os.close(w)
    assert res.ok, res.detail
    text = _read_all(r)
    assert os.waitstatus_to_exitcode(os.waitpid(res.app_pid, 0)[1]) == 0
    return text


def _via_exec(req: object, probes: dict[str, Path]) -> str:
    r, w = os.pipe()
    os.set_inheritable(w, True)
    exe = f"{req.app_exec_dir}/bin/confine_probe"  # type: ignore[attr-defined]
    res = enter_rocker(req, Exec(exe, [exe, str(w)]))  # type: ignore[arg-type]
    os.close(w)
    assert res.ok, res.detail
    text = _read_all(r)
    assert os.waitstatus_to_exitcode(os.waitpid(res.app_pid, 0)[1]) == 0
    return text


def _c_client(req: object, probes: dict[str, Path], *extra: str) -> tuple[int, str, str]:
    """The probe through librocker_client (ROCKER_enter_rocker_opts, its seccomp the request's):
    its exit status, the probe's lines and its stderr (ROCKER_CLIENT_DEBUG's reasons)."""
    r, w = os.pipe()
    kv = [f"pkg={req.app_pkg_path}", f"exec={req.app_exec_dir}", f"data={req.app_data_dir}",  # type: ignore
          f"uid={req.uid}", f"gid={req.gid}", f"seccomp={req.seccomp}", *extra]  # type: ignore[attr-defined]
    proc = subprocess.Popen([str(probes["c"]), str(w), *kv], pass_fds=(w,), stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "ROCKER_CLIENT_DEBUG": "1"})
    os.close(w)
    text = _read_all(r)
    _, err = proc.communicate(timeout=60)
    return proc.returncode, text, err


def _via_c_client(req: object, probes: dict[str, Path]) -> str:
    status, text, err = _c_client(req, probes)
    assert status == 0, err
    return text


LAUNCHERS = {"callable": _via_callable, "exec": _via_exec, "c_client": _via_c_client}


@needs_cc
@pytest.mark.usefixtures("rockerd")
@pytest.mark.parametrize("launcher", list(LAUNCHERS))
@pytest.mark.parametrize("uid", [0, 1000])
def test_default_filter_denies_with_the_documented_errno(base: Path, probe_pkg: Path, probes: dict[str, Path],
                                                         launcher: str, uid: int) -> None:
    """Issue 17: every launcher installs the same filter before the app's first instruction: each denied
    syscall fails with its errno, the rest still work, /proc says the filter is loaded (Seccomp: 2,
    one filter), and it survives execve and holds in the app's children."""
    req = make_req(base, probe_pkg, uid=uid, gid=uid)
    got = _parse(LAUNCHERS[launcher](req, probes))
    wrong = {k: (got.get(k), v) for k, v in {**DENIED, **ALLOWED}.items() if got.get(k) != v}
    assert not wrong, f"(got, want): {wrong}"
    assert got["status"] == ["2", "1"], got
    assert got["fork_child_status"] == 2, got


@needs_cc
@pytest.mark.usefixtures("rockerd")
def test_unconfined_profile_installs_nothing(base: Path, probe_pkg: Path, probes: dict[str, Path]) -> None:
    """Root may lift the filter (seccomp=unconfined): no filter at all, and the probes get the kernel's
    own answers (this is also what the default profile's test must not see)."""
    req = make_req(base, probe_pkg)
    req.seccomp = "unconfined"
    got = _parse(_via_exec(req, probes))
    assert got["status"] == ["0", "0"], got
    assert got["clone3"] != E.ENOSYS, got
    # Syscall 463 (setxattrat) is Linux 6.13's: before it (Debian 12's 6.1) the kernel's own answer is ENOSYS.
    assert (got["unknown_463"] != E.ENOSYS) == (KERNEL >= (6, 13)), got


@needs_cc
@pytest.mark.usefixtures("rockerd")
def test_complain_profile_logs_instead_of_denying(base: Path, probe_pkg: Path, probes: dict[str, Path]) -> None:
    """complain: the filter is loaded, and what default denies gets the kernel's own answer."""
    req = make_req(base, probe_pkg)
    req.seccomp = "complain"
    got = _parse(_via_exec(req, probes))
    assert got["status"] == ["2", "1"], got
    assert got["clone3"] != E.ENOSYS and got["keyctl"] != E.EPERM and got["personality_no_randomize"] == 0, got


# ---- a corpus of real programs under the default filter ----

CORPUS = {
    "bash+coreutils": ["/bin/bash", "-c", "set -e; cd /tmp; d=$(mktemp -d); echo hi > $d/f; cp $d/f $d/g; "
                       "sort $d/g | wc -l | grep -qx 1; ls -l $d >/dev/null; stat $d/g >/dev/null; rm -r $d; "
                       "date >/dev/null; id -u >/dev/null; echo ok"],
    # threads: glibc's pthread_create tries clone3 first and falls back to clone on ENOSYS
    "python3+sqlite+threads": ["/usr/bin/python3", "-c",
                               "import sqlite3, threading, concurrent.futures as cf\n"
                               "db = sqlite3.connect(':memory:'); db.execute('create table t(x)')\n"
                               "db.executemany('insert into t values (?)', [(i,) for i in range(1000)])\n"
                               "assert db.execute('select sum(x) from t').fetchone()[0] == 499500\n"
                               "with cf.ThreadPoolExecutor(8) as ex: assert sum(ex.map(abs, range(-50, 50))) == 2500\n"
                               "import subprocess; assert subprocess.run(['true']).returncode == 0\n"
                               "print('ok')"],
}


@pytest.mark.usefixtures("rockerd")
@pytest.mark.parametrize("name", list(CORPUS))
def test_real_programs_work_under_the_default_filter(base: Path, pkg: Path, name: str) -> None:
    argv = CORPUS[name]
    if not os.path.exists(argv[0]):
        pytest.skip(f"{argv[0]} is not installed")
    status, out = _run(make_req(base, pkg, uid=1000, gid=1000), argv)
    assert status == 0, out
    assert out.strip().endswith("ok"), out


def _run(req: object, argv: list[str]) -> tuple[int, str]:
    """Run argv as the app (Exec); its exit status and its stdout and stderr together."""
    r, w = os.pipe()
    os.set_inheritable(w, True)
    res = enter_rocker(req, Exec("/bin/bash", ["bash", "-c", f'exec "$@" >&{w} 2>&1', "bash", *argv]))  # type: ignore
    os.close(w)
    assert res.ok, res.detail
    out = _read_all(r)
    return os.waitstatus_to_exitcode(os.waitpid(res.app_pid, 0)[1]), out


def test_a_user_may_not_lift_the_filter() -> None:
    """Only root may ask for unconfined or complain: the refusal names the field."""
    from rockerd import confine
    from rockerd.policy import Denied

    confine.check("unconfined", 0)
    confine.check("default", 1000)
    for profile in ("unconfined", "complain"):
        with pytest.raises(Denied, match=r"^seccomp: only root may ask for"):
            confine.check(profile, 1000)


def test_the_policy_file_compiles_for_this_host() -> None:
    """Every rule names a syscall libseccomp knows, the program fits the kernel's limit, and the
    documented denials are all in the file (docs/security.md lists the same)."""
    from rockerd.confine import compile_profile
    from rockerd.confine.policy import load

    policy = load()
    prog = compile_profile(policy)
    assert 0 < len(prog) // 8 <= 4096
    named = {r.syscall for r in policy.rules}
    assert {"keyctl", "add_key", "request_key", "userfaultfd", "perf_event_open", "bpf", "io_uring_setup",
            "kexec_load", "kexec_file_load", "open_by_handle_at", "personality", "clone", "unshare", "clone3",
            "ioctl"} <= named
    assert policy.unknown_above is not None and policy.badarch == "ENOSYS"


@pytest.mark.usefixtures("rockerd")
def test_daemon_rejects_unknown_profiles(rockerd: Daemon, base: Path, pkg: Path) -> None:
    req = make_req(base, pkg)
    req.seccomp = "none"
    res = enter_rocker(req, lambda _: 0)
    assert res.err_no == RockerErr.param_invalid and res.cause is not None and res.cause.field == "seccomp", res


# ---- `rocker run`: no host root by accident ----

def _rocker_run(base: Path, pkg: Path, *opts: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "rocker_client.cli", "run", "--pkg", str(pkg), "--exec-dir", str(base / "exec"),
           "--data-dir", str(base / "data"), *opts, "--", "/bin/sh", "-c",
           "cat /proc/self/uid_map /proc/self/gid_map; grep '^Seccomp:' /proc/self/status"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False, cwd="/")


@pytest.mark.usefixtures("rockerd")
def test_rocker_run_as_root_runs_the_app_as_nobody(base: Path, pkg: Path) -> None:
    """Issue 17: root's `rocker run` without --uid gives the app nobody's uid and gid outside (uid 0
    inside maps to 65534), filtered; `--uid 0` is how root asks for root."""
    nobody = pwd.getpwnam("nobody")
    res = _rocker_run(base, pkg)
    assert res.returncode == 0, res.stderr
    lines = [line.split() for line in res.stdout.splitlines()]
    assert lines[0] == ["0", str(nobody.pw_uid), "1"] and lines[1] == ["0", str(nobody.pw_gid), "1"], res.stdout
    assert lines[2] == ["Seccomp:", "2"], res.stdout
    assert (base / "data").stat().st_uid == nobody.pw_uid

    res = _rocker_run(base, pkg, "--uid", "0", "--gid", "0", "--data-dir", str(base / "data0"), "--seccomp",
                      "unconfined")
    assert res.returncode == 0, res.stderr
    lines = [line.split() for line in res.stdout.splitlines()]
    assert lines[0] == ["0", "0", "1"] and lines[2] == ["Seccomp:", "0"], res.stdout


# ---- personality: exactly Docker's values (rockerd/confine/prefix.py compiles `notin`) ----

DOCKER_PERSONALITIES = (0, 0x8, 0x20000, 0x20008, 0xFFFFFFFF)


def _in_filtered_child(prog: bytes, calls: list[tuple[int, ...]]) -> list[int]:
    """Fork; the child sets no_new_privs, installs prog and makes each call (syscall nr, args...);
    the errno of each (0: it succeeded), read back from a pipe."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            buf = ctypes.create_string_buffer(prog)
            fprog = struct.pack("HxxxxxxP", len(prog) // 8, ctypes.addressof(buf))
            assert libc.prctl(38, 1, 0, 0, 0) == 0  # PR_SET_NO_NEW_PRIVS
            assert libc.syscall(317, 1, 0, ctypes.c_char_p(fprog)) == 0  # seccomp(SET_MODE_FILTER)
            out = []
            for nr, *args in calls:
                rc = libc.syscall(ctypes.c_long(nr), *(ctypes.c_ulong(a) for a in args))
                out.append(ctypes.get_errno() if rc < 0 else 0)
            os.write(w, json.dumps(out).encode())
        finally:
            os._exit(0)
    os.close(w)
    got = json.loads(_read_all(r))
    os.waitpid(pid, 0)
    return got


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="syscall numbers of x86_64")
def test_personality_allows_exactly_dockers_values() -> None:
    """Each of Docker's five values passes; every single flag or persona bit, and any value whose
    low 32 bits (what the kernel reads) are not one of them, gets EPERM."""
    from rockerd.confine import compile_profile
    from rockerd.confine.policy import load

    values = sorted({*DOCKER_PERSONALITIES, *(1 << b for b in range(32)), 0x0040008, 0x100040000, 0x100000000,
                     0xFFFFFFFE, 0x7FFFFFFF})
    got = _in_filtered_child(compile_profile(load()), [(135, v) for v in values])  # 135: personality
    want = [0 if v & 0xFFFFFFFF in DOCKER_PERSONALITIES else E.EPERM for v in values]
    wrong = {hex(v): (g, w) for v, g, w in zip(values, got, want, strict=True) if g != w}
    assert not wrong, f"value: (got, want) {wrong}"


def test_notin_is_checked_where_it_is_read() -> None:
    """notin compares 32 bits and stands alone: anything else is refused with its line."""
    from rockerd.confine.policy import PolicyError, parse

    for text, msg in (("EPERM personality arg0 notin 0,8", "compares 32 bits"),
                      ("EPERM personality arg0&0x1ffffffff notin 0,8", "compares 32 bits"),
                      ("EPERM personality arg0&0xff notin 0,0x100", "outside the mask"),
                      ("EPERM personality arg0&0xff notin 0,8 arg1 == 1", "only one"),
                      ("EPERM personality arg0&0xff notin 0,8\nEPERM personality arg1 == 2", "only rule")):
        with pytest.raises(PolicyError, match=msg):
            parse(text)
    rule = parse("EPERM personality arg0&0xffffffff notin 0,0x8").rules[0]
    assert rule.conds[0].values == (0, 8)


# ---- more of the corpus: dpkg -i of a local .deb, an io_uring program that falls back ----

DEB_POSTINST = (b"#!/bin/sh\nset -e\nmkdir -p /var/lib/rocker-test-deb\n"
                b"echo configured > /var/lib/rocker-test-deb/postinst\n")


def _build_deb(top: Path) -> bytes:
    """A tiny .deb (a file in /usr/share, a postinst writing below /var) built with dpkg-deb."""
    root = top / "deb"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN/control").write_text("Package: rocker-test-deb\nVersion: 1.0\nArchitecture: all\n"
                                         "Maintainer: rocker tests <tests@rocker.invalid>\n"
                                         "Description: a package dpkg installs inside a rocker\n")
    (root / "DEBIAN/postinst").write_bytes(DEB_POSTINST)
    (root / "DEBIAN/postinst").chmod(0o755)
    (root / "usr/share/rocker-test-deb").mkdir(parents=True)
    (root / "usr/share/rocker-test-deb/hello.txt").write_text("hello from a deb\n")
    proc = subprocess.run(["dpkg-deb", "--root-owner-group", "--build", str(root), str(top / "t.deb")],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    return (top / "t.deb").read_bytes()


@pytest.mark.skipif(shutil.which("dpkg-deb") is None or shutil.which("dpkg") is None, reason="needs dpkg")
@pytest.mark.usefixtures("rockerd")
def test_dpkg_installs_a_local_deb_under_the_default_filter(base: Path, tmp_path: Path) -> None:
    """Issue 17's corpus: `dpkg -i` (its lock, database, unpack, chown, fsync, rename, postinst) works
    under the default filter in a uid-0 rocker with /usr /etc /var overlaid, and the host's dpkg
    database and /usr never see the package."""
    pkg = build_pkg(tmp_path, {"t.deb": (_build_deb(tmp_path), 0o644)})
    req = make_req(base, pkg, uid=0, gid=0, overlays=("/usr", "/etc", "/var"))
    script = (f"set -e; export PATH=/usr/sbin:/usr/bin:/sbin:/bin; dpkg -i {req.app_exec_dir}/t.deb; "
              "dpkg -s rocker-test-deb | grep -qx 'Status: install ok installed'; "
              "cat /usr/share/rocker-test-deb/hello.txt /var/lib/rocker-test-deb/postinst; "
              "grep '^Seccomp:' /proc/self/status; echo ok")
    status, out = _run(req, ["/bin/sh", "-c", script])
    assert status == 0, out
    assert "hello from a deb\nconfigured\nSeccomp:\t2\nok\n" in out, out
    assert not os.path.exists("/usr/share/rocker-test-deb") and not os.path.exists("/var/lib/rocker-test-deb")
    with open("/var/lib/dpkg/status", encoding="utf-8") as f:
        assert "rocker-test-deb" not in f.read()
    written = [p for p in (base / "data").rglob("status") if p.parent.name == "dpkg"]
    assert written and "Package: rocker-test-deb" in written[0].read_text(), written


@pytest.fixture(scope="module")
def uring_exe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("uring") / "confine_uring"
    _cc(HERE / "confine_uring.c", "-o", out)
    return out


@needs_cc
@pytest.mark.usefixtures("rockerd")
@pytest.mark.parametrize("profile", ["default", "unconfined"])
def test_an_io_uring_program_falls_back_to_read(base: Path, tmp_path: Path, uring_exe: Path, profile: str) -> None:
    """Issue 17's corpus: a program that reads through io_uring gets EPERM from io_uring_setup under
    the default filter, falls back to read(2) and works; unconfined, the same program really uses
    io_uring (so the first half is the filter's doing, not the kernel's)."""
    disabled = Path("/proc/sys/kernel/io_uring_disabled")  # since 6.6; absent: enabled
    if profile == "unconfined" and disabled.exists() and disabled.read_text().strip() != "0":
        pytest.skip("io_uring is disabled on this host (kernel.io_uring_disabled)")
    text = b"read by a rocker app\n" * 10
    pkg = build_pkg(tmp_path, {"bin/confine_uring": (uring_exe.read_bytes(), 0o755), "data.txt": (text, 0o644)})
    req = make_req(base, pkg, uid=1000, gid=1000)
    req.seccomp = profile
    status, out = _run(req, [f"{req.app_exec_dir}/bin/confine_uring", f"{req.app_exec_dir}/data.txt"])
    assert status == 0, out
    head = "io_uring_setup 1\nvia read\n" if profile == "default" else "io_uring_setup 0\nvia uring\n"
    assert out == head + text.decode(), out


# ---- nested user namespaces by choice: the `nested` profile ----

@needs_cc
@pytest.mark.usefixtures("rockerd")
def test_nested_profile_allows_user_namespaces_and_nothing_else(base: Path, probe_pkg: Path,
                                                                 probes: dict[str, Path]) -> None:
    """`nested`: clone(CLONE_NEWUSER) works; a namespace without a user namespace in the same call is
    still refused by the filter, and every other denial of default holds."""
    req = make_req(base, probe_pkg, uid=1000, gid=1000)
    req.seccomp = "nested"
    got = _parse(_via_exec(req, probes))
    assert got["status"] == ["2", "1"], got
    assert got["clone_newuser"] == 0 and got["unshare_newuser"] == E.EINVAL, got  # the kernel's own answers
    lifted = {"clone_newuser", "unshare_newuser"}
    wrong = {k: (got.get(k), v) for k, v in {**DENIED, **ALLOWED}.items() if k not in lifted and got.get(k) != v}
    assert not wrong, f"(got, want): {wrong}"


NESTED_SH = ("unshare -U true; echo user=$?; unshare -Ur id -u; unshare -Urn sh -c 'echo usernet=$?'; "
             "unshare -Urm --propagation unchanged true; echo usermnt=$?; "
             "unshare -Urm true 2>/dev/null; echo mount=$?; unshare -n true 2>/dev/null; echo net=$?")


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs util-linux's unshare")
@pytest.mark.usefixtures("rockerd")
@pytest.mark.parametrize("profile", ["default", "nested"])
def test_unshare_U_is_refused_by_default_and_works_when_nested(base: Path, pkg: Path, profile: str) -> None:
    """A real `unshare -U` in a uid-1000 rocker: refused by default (EPERM), made under `nested`,
    also with other namespaces in the same call; a network namespace alone stays refused, and so
    does mount(2) (unshare -m's propagation change) in the new namespaces."""
    req = make_req(base, pkg, uid=1000, gid=1000)
    req.seccomp = profile
    status, out = _run(req, ["/bin/sh", "-c", NESTED_SH])
    assert status == 0, out
    lines = [line for line in out.splitlines() if not line.startswith("unshare:")]
    if profile == "default":
        assert lines == ["user=1", "usermnt=1", "mount=1", "net=1"], out
        assert "Operation not permitted" in out, out
    else:
        assert lines == ["user=0", "0", "usernet=0", "usermnt=0", "mount=1", "net=1"], out


def test_nested_is_for_anyone_where_users_may_make_user_namespaces(tmp_path: Path) -> None:
    """A non-root caller may ask for `nested` when the host lets its users make user namespaces (it
    gives the app nothing `unshare -U` would not give the caller); where a sysctl forbids it, only root."""
    from rockerd import confine
    from rockerd.policy import Denied

    sysctl = tmp_path / "sys"
    (sysctl / "kernel").mkdir(parents=True)
    (sysctl / "user").mkdir()
    (sysctl / "user/max_user_namespaces").write_text("1000\n")
    confine.check("nested", 1000, str(sysctl))
    for name, value in (("user/max_user_namespaces", "0"), ("kernel/unprivileged_userns_clone", "0"),
                        ("kernel/apparmor_restrict_unprivileged_userns", "1")):
        (sysctl / name).write_text(value + "\n")
        with pytest.raises(Denied, match=r"^seccomp: only root may ask for 'nested' here"):
            confine.check("nested", 1000, str(sysctl))
        confine.check("nested", 0, str(sysctl))
        (sysctl / name).unlink()
    (sysctl / "user/max_user_namespaces").write_text("1000\n")
    confine.check("nested", 1000, str(sysctl))


# ---- the C client picks a profile: RockerOptions.seccomp (ROCKER_enter_rocker_opts) ----

@needs_cc
@pytest.mark.usefixtures("rockerd")
@pytest.mark.parametrize("profile", ["unconfined", "nested", "complain"])
def test_c_client_picks_the_profile(base: Path, probe_pkg: Path, probes: dict[str, Path], profile: str) -> None:
    """Through the C client as through the Python one: the profile named in RockerOptions is the
    one the app gets (the test of the default profile above runs the same client with "default")."""
    req = make_req(base, probe_pkg)
    req.seccomp = profile
    got = _parse(_via_c_client(req, probes))
    if profile == "unconfined":
        assert got["status"] == ["0", "0"] and got["clone3"] != E.ENOSYS, got
    elif profile == "nested":
        assert got["status"] == ["2", "1"] and got["clone_newuser"] == 0 and got["keyctl"] == E.EPERM, got
    else:
        assert got["status"] == ["2", "1"] and got["keyctl"] != E.EPERM and got["clone3"] != E.ENOSYS, got


@needs_cc
@pytest.mark.usefixtures("rockerd")
def test_c_client_options_refused_by_size_or_name(base: Path, probe_pkg: Path, probes: dict[str, Path]) -> None:
    """RockerOptions.size: too small, or larger with a field this library does not know set, is
    ROCKER_ERR_param_invalid before any call; larger with zeroes works (a caller built against a
    later lib.h). A profile rockerd does not know is refused by rockerd, naming the field."""
    req = make_req(base, probe_pkg)
    bad = f"enter_rocker: {int(RockerErr.param_invalid)}"
    for extra, ok in ((("optsize=4",), False), (("optsize=24", "newer=1"), False), (("optsize=24",), True)):
        status, text, err = _c_client(req, probes, *extra)
        assert (status == 0) == ok, (extra, err)
        assert ok or (bad in err and "opts: a size or a field" in err and not text), (extra, err)
    req.seccomp = "none"
    status, text, err = _c_client(req, probes)
    assert status == 1 and bad in err and "seccomp" in err, err


@pytest.mark.skipif(not os.path.exists("/usr/bin/python3"), reason="needs Debian's /usr/bin/python3")
def test_a_user_gets_nested_where_the_host_lets_users_make_user_namespaces(base: Path, pkg: Path) -> None:
    """Through rockerd's socket, a uid-1000 caller asking for `nested` gets its rocker (this host lets
    users make user namespaces) and, for `unconfined`, the refusal."""
    from test_nonroot import UID, prepare_user_base, run_as

    from rockerd import confine

    if not confine.users_may_make_user_namespaces():
        pytest.skip("this host keeps its users from making user namespaces")
    prepare_user_base(base, pkg)
    d = start_daemon(base / "d", "--socket-mode", "0666")
    try:
        out = run_as((base, d), UID, UID, {"seccomp": "nested"})
        assert out["RES"]["err_no"] == RockerErr.success, out
        assert out["APP"]["uid"] == 0, out
        refused = run_as((base, d), UID, UID, {"seccomp": "unconfined"})["RES"]
        assert refused["err_no"] == RockerErr.param_invalid and "only root" in refused["detail"], refused
    finally:
        d.stop()
