"""One benchmark rockerd and package for the small focused measurements (bench.steptimes,
bench.netmodes): the work dir, the package, the daemon, a Setup for ours.py's cycles, and the
cleanup (apps reaped, guards gone, daemon stopped, work dir removed). Root only; hold the test lock."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from . import ours, proc
from .daemon import BenchDaemon
from .run import BRIDGE_ARGS, DEFAULT_OVERLAYS, REPO, build_package


@contextmanager
def bench_setup(prefix: str, rockerd_args: tuple[str, ...] = (), module: tuple[str, ...] = ("rockerd",),
                seccomp: str | None = None, keep: bool = False) -> Iterator[ours.Setup]:
    if os.geteuid() != 0:
        raise SystemExit(f"bench.{prefix}: run as root (rockerd builds namespaces and mounts)")
    workdir = Path(tempfile.mkdtemp(prefix=f"rocker-{prefix}-", dir="/tmp"))
    workdir.chmod(0o755)  # the apps run as uid 1000 and must reach the exec dir
    d = BenchDaemon(workdir, REPO, max_rockers=64, extra=(*BRIDGE_ARGS, *rockerd_args), module=module)
    nsw = proc.NsWatch()
    try:
        pkg = build_package(workdir, "gzip")
        d.start()
        os.environ["ROCKER_SOCKET"] = d.socket
        ours.install_wire_timer()
        yield ours.Setup(workdir, pkg, str(workdir / "exec"), DEFAULT_OVERLAYS, 1000, 1000, d, nsw, seccomp=seccomp)
    finally:
        for k in proc.children(os.getpid()):
            if k != d.pid:
                try:
                    os.waitpid(k, 0)
                except ChildProcessError:
                    pass
        if d.proc is not None:
            proc.poll_until(lambda: not d.children(), 10, step=0.05)
        d.stop()
        nsw.close()
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)
