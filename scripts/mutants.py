#!/usr/bin/env python3
"""Mutation run: seed each bug of scripts/mutants.toml, run the tests that should catch it, restore.

Each mutant is one small edit (an exact snippet of a file and its replacement) that breaks one
promise of docs/security.md or docs/architecture.md. For each, in a private copy of the tree (the
checkout itself is never edited):

    check the snippet occurs exactly once (else stop: the code drifted, update the mutant)
    apply it; rebuild the C part it is in, if it is a .c file (setup.py's compile step)
    run its tests (pytest node ids) under the shared test lock, with a timeout
    restore the file (always, also on Ctrl-C), check its hash, rebuild again if C

and prints which were killed (a test failed) and which survived. A mutant marked `equivalent`
(with the reason) is run too, but counts on neither side; one that gets killed is reported, so the
mark can go. Exit status: 0 if every mutant not marked equivalent was killed, 1 if any survived,
2 on a broken mutant list or tree (a snippet not found, a test id pytest does not know).

    .venv/bin/python scripts/mutants.py              # every mutant (see docs/testing.md)
    .venv/bin/python scripts/mutants.py --check      # only: does every snippet still match once?
    .venv/bin/python scripts/mutants.py --only ID... # some of them
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import fnmatch
import hashlib
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_LIST = ROOT / "scripts" / "mutants.toml"
DEFAULT_LOCK = "/tmp/rocker-tests.lock"
SKIP_DIRS = {".git", ".venv", "__pycache__", ".hypothesis", ".pytest_cache", ".ruff_cache", "rocker.egg-info"}

# pytest's exit codes: 0 all passed, 1 some failed; anything else is not a verdict on the mutant
PYTEST_PASSED, PYTEST_FAILED = 0, 1


class CompileError(Exception):
    """A C mutant that does not build (the run goes on; the mutant needs fixing)."""


class MutantError(Exception):
    """The mutant list does not fit the tree: stop, do not score."""


@dataclass(frozen=True)
class Mutant:
    id: str
    file: str
    original: str
    replacement: str
    promise: str
    tests: tuple[str, ...]
    equivalent: str = ""  # why no test can tell it apart (then it is not scored)


@dataclass
class Outcome:
    mutant: Mutant
    verdict: str  # killed, survived, timeout (counts as killed), error
    seconds: float
    detail: str = ""
    waited: float = 0.0  # for the test lock: other runs' time


def load(path: Path) -> list[Mutant]:
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise MutantError(f"{path}: {e}") from None
    known = {"id", "file", "original", "replacement", "promise", "tests", "equivalent"}
    out: list[Mutant] = []
    for i, raw in enumerate(data.get("mutant", [])):
        where = f"{path}: mutant #{i + 1} ({raw.get('id', '?')})"
        if set(raw) - known:
            raise MutantError(f"{where}: unknown keys {sorted(set(raw) - known)}")
        missing = {"id", "file", "original", "replacement", "promise", "tests"} - set(raw)
        if missing:
            raise MutantError(f"{where}: missing {sorted(missing)}")
        if raw["original"] == raw["replacement"]:
            raise MutantError(f"{where}: the replacement is the original")
        if not raw["tests"]:
            raise MutantError(f"{where}: no tests to run")
        out.append(Mutant(raw["id"], raw["file"], raw["original"], raw["replacement"], raw["promise"],
                          tuple(raw["tests"]), raw.get("equivalent", "")))
    ids = [m.id for m in out]
    dup = {i for i in ids if ids.count(i) > 1}
    if dup:
        raise MutantError(f"{path}: duplicate ids {sorted(dup)}")
    return out


def check_snippet(tree: Path, m: Mutant) -> str:
    """The file's text; raises MutantError unless the snippet occurs exactly once."""
    path = tree / m.file
    try:
        text = path.read_text()
    except OSError as e:
        raise MutantError(f"mutant {m.id}: cannot read {m.file}: {e.strerror}") from None
    n = text.count(m.original)
    if n != 1:
        raise MutantError(f"mutant {m.id}: its snippet occurs {n} times in {m.file}, not once "
                          f"(the code changed: update the mutant):\n{m.original}")
    return text


def copy_tree(src: Path, dst: Path) -> None:
    """The files of the checkout (tracked and untracked, not ignored), with their modes."""
    try:
        names = subprocess.run(["git", "-C", str(src), "ls-files", "-z", "--cached", "--others",
                                "--exclude-standard"], capture_output=True, check=True).stdout.split(b"\0")
        rels = [n.decode() for n in names if n]
    except (OSError, subprocess.CalledProcessError):  # not a git checkout (a scratch tree)
        rels = []
        for d, dirs, files in os.walk(src):
            dirs[:] = [x for x in dirs if x not in SKIP_DIRS]
            rels += [os.path.relpath(os.path.join(d, f), src) for f in files]
    for rel in rels:
        if not (src / rel).is_file():  # deleted in the work tree but not yet in git
            continue
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src / rel, dst / rel)


BUILT_BY_TESTS = ("clients/c/",)  # the C client's tests build it themselves (make, in a tmp dir)


class NativeBuild:
    """setup.py's compile step, run on the copy: which .c file builds which output."""

    def __init__(self, tree: Path) -> None:
        self.tree = tree
        self._setup = None
        if (tree / "setup.py").exists():
            import setuptools  # setup.py calls setup() at import: make that a no-op here

            real = setuptools.setup
            setuptools.setup = lambda *a, **k: None  # type: ignore[assignment]
            try:
                spec = importlib.util.spec_from_file_location("rocker_setup_for_mutants", tree / "setup.py")
                assert spec and spec.loader
                mod = importlib.util.module_from_spec(spec)
                spec.loader.exec_module(mod)
            finally:
                setuptools.setup = real  # type: ignore[assignment]
            self._setup = mod

    def _targets(self) -> dict[str, tuple[object, Path]]:
        s = self._setup
        if s is None:
            return {}
        g, n = self.tree / s.GUARD_DIR, self.tree / s.NATIVE_DIR
        exec_lib = (s.compile_exec_lib, n / s.EXEC_LIB)
        front = (s.compile_front, self.tree / "clients/cli" / s.FRONT_BIN)  # tests prefer it to the installed one
        return {"rockerd/guard/rocker-guard.c": (s.compile_guard, g / s.GUARD_BIN),
                "rockerd/guard/rocker-spawn.c": (s.compile_spawn_lib, g / s.SPAWN_LIB),
                "rocker_client/_native/rocker-exec.c": exec_lib,
                "rocker_client/_native/rocker-join.c": exec_lib,  # the join, shared with clients/c
                "rocker_client/_native/rocker-join.h": exec_lib,
                "rocker_client/_native/rocker-seccomp.c": exec_lib,  # the join's syscall filter
                "rocker_client/_native/rocker-seccomp.h": exec_lib,
                "clients/cli/main.c": front, "clients/cli/place.c": front, "clients/cli/job.c": front,
                "clients/cli/front.h": front,
                # the tests that use clients/c build it themselves (make O=their tmp dir): nothing to do here
                "clients/c/rocker_client.c": (lambda _out: None, self.tree / "clients/c")}

    def build(self, rel: str | None = None) -> None:
        """Build the output of `rel` (a .c file), or of all of them; raises on a compile error."""
        done: set[Path] = set()
        for src, (fn, out) in self._targets().items():  # none for BUILT_BY_TESTS: nothing to do
            if (rel is None and out not in done) or rel == src:
                done.add(out)
                try:
                    with open(os.devnull, "w") as null, contextlib.redirect_stderr(null):
                        fn(str(out))  # type: ignore[operator]
                except Exception as e:  # setuptools' CompileError, or no compiler at all
                    raise CompileError(str(e)) from None

    def builds(self, rel: str) -> bool:
        return rel in self._targets() or rel.startswith(BUILT_BY_TESTS)


@contextlib.contextmanager
def applied(tree: Path, m: Mutant, native: NativeBuild) -> Iterator[None]:
    """The mutant in place for the body; the original back afterwards, whatever happens, checked by hash."""
    path = tree / m.file
    text = check_snippet(tree, m)
    before = hashlib.sha256(text.encode()).hexdigest()
    mode = path.stat().st_mode
    path.write_text(text.replace(m.original, m.replacement, 1))
    try:
        if m.file.endswith((".c", ".h")):
            if not native.builds(m.file):
                raise MutantError(f"mutant {m.id}: no build step known for {m.file}")
            native.build(m.file)
        yield
    finally:
        # Ctrl-C (or SIGTERM) again while restoring must not leave the mutant in place.
        old = signal.signal(signal.SIGINT, signal.SIG_IGN), signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            path.write_text(text)
            os.chmod(path, mode)
            after = hashlib.sha256(path.read_bytes()).hexdigest()
            if after != before:
                raise MutantError(f"mutant {m.id}: {m.file} was not restored (sha256 {after} != {before})")
            if m.file.endswith((".c", ".h")) and native.builds(m.file):
                native.build(m.file)
        finally:
            signal.signal(signal.SIGINT, old[0])
            signal.signal(signal.SIGTERM, old[1])


def _held_by_an_ancestor(path: str) -> bool:
    """Whether a process this one runs under holds an flock on `path` (/proc/locks: pid, dev:inode)."""
    try:
        st = os.stat(path)
        with open("/proc/locks") as f:
            holders = {int(w[4]) for w in (line.split() for line in f)
                       if len(w) > 5 and w[1] == "FLOCK" and w[5].rsplit(":", 1)[-1] == str(st.st_ino)}
    except (OSError, ValueError):
        return False
    pid = os.getppid()
    while pid > 1:
        if pid in holders:
            return True
        try:
            with open(f"/proc/{pid}/stat") as f:
                pid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            return False
    return False


class TestLock:
    """The shared lock of every kernel-touching test run (docs/testing.md). Held across consecutive
    mutants for at most `batch` seconds, then let go so other runs on the machine get their turn:
    taking it anew for each mutant would mean queueing behind every other run each time."""

    def __init__(self, path: str, batch: float) -> None:
        self.path, self.batch = path, batch
        if path and _held_by_an_ancestor(path):  # `flock LOCK mutants.py`: taking it again would wait forever
            print(f"mutants: {path} is held by a process this one runs under: not taking it again", file=sys.stderr)
            self.path = ""
        self.fd = -1
        self.since = 0.0
        self.waited = 0.0  # in all: other runs' time, not ours

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        if self.path and self.fd >= 0 and time.monotonic() - self.since > self.batch:
            self.release()
        if self.path and self.fd < 0:
            t0 = time.monotonic()
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
            except BaseException:
                os.close(fd)
                raise
            self.fd, self.since = fd, time.monotonic()
            self.waited += self.since - t0
        yield

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # lets go of the lock
            self.fd = -1


def run_tests(tree: Path, tests: tuple[str, ...], lock: TestLock, timeout: float) -> tuple[int | None, str, float]:
    """pytest's exit code (None on timeout), its output and the seconds spent waiting for the lock."""
    env = {**os.environ, "PYTHONPATH": str(tree), "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("ROCKER_SOCKET", None)
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "--rootdir", str(tree), *tests]
    before = lock.waited
    with lock.held():
        waited = lock.waited - before
        proc = subprocess.Popen(cmd, cwd=tree, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)
        try:
            out, _ = proc.communicate(timeout=timeout)
            return proc.returncode, out, waited
        except subprocess.TimeoutExpired:
            _stop_group(proc)
            return None, "", waited
        except BaseException:
            _stop_group(proc)
            raise


def _stop_group(proc: subprocess.Popen[str]) -> None:
    """SIGTERM to the run's process group (its own session), SIGKILL if it lingers."""
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.communicate(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def run_mutant(tree: Path, m: Mutant, native: NativeBuild, lock: TestLock, timeout: float) -> Outcome:
    t0 = time.monotonic()
    try:
        with applied(tree, m, native):
            rc, out, waited = run_tests(tree, m.tests, lock, timeout)
    except CompileError as e:  # a mutant must build: "killed by the compiler" would say nothing
        return Outcome(m, "error", time.monotonic() - t0, f"does not compile: {tail(str(e), 8)}")
    took = time.monotonic() - t0 - waited  # the lock's wait is other runs' time, not this mutant's
    if rc is None:
        o = Outcome(m, "timeout", took, f"no verdict within {timeout:g} s (a hang: counts as killed)")
    elif rc == PYTEST_FAILED:
        lines = out.splitlines()
        failed = [ln for ln in lines if ln.startswith("FAILED")] + [ln for ln in lines if ln.startswith("ERROR")]
        o = Outcome(m, "killed", took, failed[0] if failed else tail(out, 3))
    elif rc == PYTEST_PASSED:
        o = Outcome(m, "survived", took)
    else:
        o = Outcome(m, "error", took, f"pytest exited {rc}:\n{tail(out)}")
    return replace(o, waited=waited)


def select(mutants: list[Mutant], only: list[str]) -> list[Mutant]:
    if not only:
        return mutants
    chosen = [m for m in mutants if any(fnmatch.fnmatchcase(m.id, pat) for pat in only)]
    if not chosen:
        raise MutantError(f"no mutant matches {only}")
    return chosen


def report(outcomes: list[Outcome], total_s: float, waited_s: float) -> int:
    print(f"\n{'mutant':34} {'verdict':10} {'s':>6}  promise")
    for o in outcomes:
        verdict = o.verdict + ("*" if o.mutant.equivalent else "")
        print(f"{o.mutant.id:34} {verdict:10} {o.seconds:6.1f}  {o.mutant.promise}")
    scored = [o for o in outcomes if not o.mutant.equivalent]
    killed = [o for o in scored if o.verdict in ("killed", "timeout")]
    survived = [o for o in scored if o.verdict == "survived"]
    errors = [o for o in outcomes if o.verdict == "error"]
    eq_killed = [o for o in outcomes if o.mutant.equivalent and o.verdict in ("killed", "timeout")]
    for o in survived:
        print(f"\nSURVIVED {o.mutant.id} ({o.mutant.file}): {o.mutant.promise}\n  tests: {' '.join(o.mutant.tests)}")
    for o in errors:
        print(f"\nERROR {o.mutant.id}: {o.detail}")
    for o in eq_killed:
        print(f"\nNOTE {o.mutant.id} is marked equivalent ({o.mutant.equivalent}) but was killed: drop the mark")
    for o in outcomes:
        if o.mutant.equivalent and o.verdict == "survived":
            print(f"\nequivalent {o.mutant.id}: {o.mutant.equivalent}")
    score = 100.0 * len(killed) / len(scored) if scored else 100.0
    print(f"\n{len(killed)} killed, {len(survived)} survived, {len(errors)} errors, "
          f"{len(outcomes) - len(scored)} equivalent (not scored); score {score:.1f}% "
          f"({len(killed)}/{len(scored)}) in {total_s:.0f} s, {waited_s:.0f} s of it waiting for the test lock")
    if errors:
        return 2
    return 1 if survived else 0


def _interrupted(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--list", dest="list_file", type=Path, default=DEFAULT_LIST, help="the mutants (TOML)")
    ap.add_argument("--tree", type=Path, default=ROOT, help="the checkout to copy and mutate (default: this one)")
    ap.add_argument("--only", nargs="+", default=[], metavar="ID", help="only these mutants (shell patterns)")
    ap.add_argument("--check", action="store_true", help="only check that every snippet occurs once")
    ap.add_argument("--show", action="store_true", help="list the mutants and exit")
    ap.add_argument("--lock", default=DEFAULT_LOCK, help="flock this file around the test runs ('' for none)")
    ap.add_argument("--batch", type=float, default=60, metavar="SEC",
                    help="let the lock go for others after holding it this long (between mutants)")
    ap.add_argument("--timeout", type=float, default=300, help="seconds per mutant's test run")
    ap.add_argument("--no-baseline", action="store_true", help="skip the run of all selected tests unmutated")
    ap.add_argument("--keep", action="store_true", help="keep the copy of the tree (its path is printed)")
    args = ap.parse_args(argv)

    try:
        mutants = select(load(args.list_file), args.only)
        for m in mutants:
            check_snippet(args.tree, m)
    except MutantError as e:
        print(f"mutants: {e}", file=sys.stderr)
        return 2
    if args.show:
        for m in mutants:
            eq = f" [equivalent: {m.equivalent}]" if m.equivalent else ""
            print(f"{m.id}: {m.file}: {m.promise}{eq}\n    {' '.join(m.tests)}")
        return 0
    if args.check:
        print(f"{len(mutants)} mutants: every snippet occurs exactly once in {args.tree}")
        return 0

    old_term = signal.signal(signal.SIGTERM, _interrupted)  # like Ctrl-C: restore, stop the tests, clean up
    t0 = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="rocker-mutants-"))
    tree = work / "tree"
    waited = 0.0
    lock = TestLock(args.lock, args.batch)
    try:
        copy_tree(args.tree, tree)
        native = NativeBuild(tree)
        native.build()
        print(f"mutants: {len(mutants)} in a copy of {args.tree} at {tree}", flush=True)
        if not args.no_baseline:
            tests = tuple(dict.fromkeys(t for m in mutants for t in m.tests))
            rc, out, waited = run_tests(tree, tests, lock, args.timeout * 2)
            if rc != PYTEST_PASSED:
                print(f"mutants: the tests fail without any mutant (exit {rc}); fix that first:\n{tail(out, 30)}",
                      file=sys.stderr)
                return 2
            print(f"baseline: {len(tests)} tests pass unmutated ({time.monotonic() - t0 - waited:.0f} s)", flush=True)
        outcomes = []
        for i, m in enumerate(mutants, 1):
            o = run_mutant(tree, m, native, lock, args.timeout)
            outcomes.append(o)
            first = o.detail.splitlines()[0] if o.detail else ""
            print(f"[{i}/{len(mutants)}] {m.id}: {o.verdict} ({o.seconds:.1f} s) {first}", flush=True)
            if o.verdict == "error":
                print(o.detail, file=sys.stderr)
        return report(outcomes, time.monotonic() - t0, waited + sum(o.waited for o in outcomes))
    except MutantError as e:
        print(f"mutants: {e}", file=sys.stderr)
        return 2
    finally:
        signal.signal(signal.SIGTERM, old_term)
        lock.release()
        if args.keep:
            print(f"mutants: the copy stays at {tree}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
