"""Which cgroup hierarchy this host gives rockerd: cgroup v2, v1, or none (limits off).

Checked once at start. v2 first: a cgroup2 mount whose root offers the memory, pids and cpu
controllers (every current distro's default). Else v1: the memory, pids, cpu and cpuacct
controllers each on a v1 hierarchy (a hybrid host such as this test machine, where the
cgroup2 mount at /sys/fs/cgroup/unified has no controllers). Else none, with the reason.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

V2_CONTROLLERS = ("memory", "pids", "cpu")
V1_CONTROLLERS = ("memory", "pids", "cpu", "cpuacct")


@dataclass(frozen=True)
class Hierarchy:
    """What the host has: `mode` "v2", "v1" or "none"; `mounts` maps a controller to its mount
    point (v2: "" maps to the one cgroup2 mount); `own` is rockerd's cgroup there (v2 only);
    `parent`, if set, the delegated cgroup rockers go under instead of `own` (v2 only: --cgroup-parent)."""

    mode: str
    mounts: dict[str, str] = field(default_factory=dict)
    own: str = "/"
    reason: str = ""
    parent: str = ""

    def describe(self) -> str:
        if self.mode == "v2":
            where = f", rockers in {self.parent}" if self.parent else ""
            return f"cgroup v2 at {self.mounts['']} (rockerd in {self.own}{where})"
        if self.mode == "v1":
            return "cgroup v1: " + ", ".join(f"{c} at {m}" for c, m in self.mounts.items())
        return f"none: {self.reason}"


def _mounts(mountinfo: str) -> list[tuple[str, str, set[str]]]:
    """(mount point, fstype, super options) of every cgroup mount, root of its hierarchy only."""
    out = []
    for line in mountinfo.splitlines():
        left, _, right = line.partition(" - ")
        parts, rparts = left.split(), right.split()
        if len(parts) < 5 or len(rparts) < 3 or rparts[0] not in ("cgroup", "cgroup2"):
            continue
        if parts[3] != "/":  # a bind mount of a sub-cgroup: not the hierarchy's root
            continue
        out.append((parts[4].replace("\\040", " "), rparts[0], set(rparts[2].split(","))))
    return out


def _own_v2(proc_cgroup: str) -> str:
    for line in proc_cgroup.splitlines():
        if line.startswith("0::"):
            return line[3:] or "/"
    return "/"


def detect(mountinfo: str | None = None, proc_cgroup: str | None = None, want: str = "auto",
           parent: str = "") -> Hierarchy:
    """The host's hierarchy; `want` ("auto", "v2", "v1", "none") forces one (for tests and
    operators), and is refused with the reason when the host lacks it. `parent` (v2): the cgroup
    to put rockers under instead of rockerd's own."""
    if want == "none":
        return Hierarchy("none", reason="turned off by --cgroups none")
    if mountinfo is None:
        with open("/proc/self/mountinfo") as f:
            mountinfo = f.read()
    if proc_cgroup is None:
        with open("/proc/self/cgroup") as f:
            proc_cgroup = f.read()
    mounts = _mounts(mountinfo)
    reasons = []
    if want in ("auto", "v2"):
        for point, fstype, _ in mounts:
            if fstype != "cgroup2":
                continue
            try:
                with open(os.path.join(point, "cgroup.controllers")) as f:
                    have = set(f.read().split())
            except OSError as e:
                reasons.append(f"{point}: {e.strerror}")
                continue
            missing = [c for c in V2_CONTROLLERS if c not in have]
            if not missing:
                return Hierarchy("v2", {"": point}, _own_v2(proc_cgroup), parent=parent)
            reasons.append(f"cgroup2 at {point} lacks {' '.join(missing)}")
    if want in ("auto", "v1"):
        v1 = {}
        for point, fstype, opts in mounts:
            if fstype == "cgroup":
                for c in V1_CONTROLLERS:
                    if c in opts and c not in v1 and os.access(point, os.W_OK):
                        v1[c] = point
        missing = [c for c in V1_CONTROLLERS if c not in v1]
        if not missing:
            return Hierarchy("v1", v1)
        reasons.append(f"no writable v1 hierarchy for {' '.join(missing)}")
    return Hierarchy("none", reason="; ".join(reasons) or "no cgroup file system mounted")
