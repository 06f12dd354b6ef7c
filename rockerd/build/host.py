"""The steps the daemon takes on the host before the guard exists.

They need host privileges (loop devices, squashfs, overlays whose copy-up
runs with the daemon's credentials) and end as detached mounts: file
descriptors the guard attaches inside its own mount namespace.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass, field
from typing import Protocol

from rocker_client._sys import fs
from rocker_client._sys import mount as m
from rocker_client._sys.libc import SyscallError

from .. import kernel, policy
from . import layout
from .overlay_plan import OverlayGroup, plan_overlays
from .packages import PackageCache, PackageKey
from .steps import BuildError, Step
from .workslots import WorkSlots


class Request(Protocol):
    app_id: int
    uid: int
    gid: int
    app_pkg_path: str
    app_exec_dir: str
    app_data_dir: str
    app_overlay_dirs: tuple[str, ...] | list[str]


@dataclass
class HostContext:
    req: Request
    name: str
    caller: policy.Peer | None  # None: the daemon itself; root may have dirs created
    packages: PackageCache
    slots: WorkSlots
    pkg_key: PackageKey | None = None
    work_slot: int | None = None
    created: list[str] = field(default_factory=list)
    mounts: list[tuple[str, int]] = field(default_factory=list)  # (target, detached mount fd), in attach order
    dir_fds: dict[str, int] = field(default_factory=dict)
    overlays: list[OverlayGroup] = field(default_factory=list)

    def close_fds(self) -> None:
        for _, fd in self.mounts:
            os.close(fd)
        self.mounts.clear()
        for fd in self.dir_fds.values():
            os.close(fd)
        self.dir_fds.clear()


class EnsureExecAndDataDirs(Step[HostContext]):
    """Root callers get missing dirs made; the data dir belongs to the app (0700)."""

    def describe(self) -> str:
        return "prepare exec and data dirs"

    def execute(self, ctx: HostContext) -> None:
        r = ctx.req
        create = policy.is_root(ctx.caller)
        for key, path, mode, owner in (("exec", r.app_exec_dir, 0o755, (0, 0)),
                                       ("data", r.app_data_dir, 0o700, (r.uid, r.gid))):
            try:
                with policy.acting_as(ctx.caller):
                    fd, created = fs.ensure_dir(path, create=create, final_mode=mode, final_owner=owner)
            except OSError as e:
                if create:
                    raise
                raise policy.Denied(f"{key} dir {path}: {e.strerror} (it must exist, be owned by uid "
                                    f"{r.uid} and have no symlink on the way)") from None
            ctx.created += created
            ctx.dir_fds[key] = fd
            policy.require_owned_dir(ctx.caller, fd, f"{key} dir", path)

    def undo(self, ctx: HostContext) -> None:
        fs.remove_created(ctx.created)


class PrepareOverlayLayers(Step[HostContext]):
    """Plan the overlays (overlay_plan.py); open each one's lower dir (no symlinks), make its
    upper and this rocker's work dir; every overlay dir's upper mirrors the host dir."""

    def describe(self) -> str:
        return "prepare overlay layers"

    def execute(self, ctx: HostContext) -> None:
        r = ctx.req
        ctx.work_slot = ctx.slots.take(r.app_data_dir)
        ctx.overlays = plan_overlays(r.app_overlay_dirs)
        for k, group in enumerate(ctx.overlays):
            if group.shared:
                for i in group.members:
                    os.close(self._upper(ctx, r.app_overlay_dirs[i]))
            ctx.dir_fds[f"lower{k}"] = self._lower(group.lower)
            ctx.dir_fds[f"upper{k}"] = self._upper(ctx, group.lower)
            wk, created = fs.ensure_dir(layout.work_dir(r.app_data_dir, ctx.work_slot, group.members[0]),
                                        create=True, final_mode=0o700)
            ctx.created += created
            ctx.dir_fds[f"work{k}"] = wk

    def _lower(self, d: str) -> int:
        try:
            return fs.open_nofollow(d, fs.O_PATH_DIR)
        except SyscallError as e:
            if e.errno == errno.ELOOP:
                raise BuildError(self.describe(), e.errno,
                                 f"overlay dir {d} is or passes through a symlink; name the real directory") from e
            raise BuildError(self.describe(), e.errno or errno.EIO, f"overlay dir {d}: {e.strerror}") from e

    @staticmethod
    def _upper(ctx: HostContext, d: str) -> int:
        r = ctx.req
        fd, created = fs.ensure_dir(layout.upper_dir(r.app_data_dir, d), create=True,
                                    parent_owner=(r.uid, r.gid), mirror=(layout.upper_root(r.app_data_dir), ""))
        ctx.created += created
        return fd

    def undo(self, ctx: HostContext) -> None:
        work_root = layout.work_root(ctx.req.app_data_dir) + "/"
        for path in ctx.created:
            if path.startswith(work_root):  # overlayfs may have filled a work dir we made: not empty
                fs.remove_tree(path)
        fs.remove_created(ctx.created)
        if ctx.work_slot is not None:
            ctx.slots.give_back(ctx.req.app_data_dir, ctx.work_slot)
            ctx.work_slot = None


class MountOverlays(Step[HostContext]):
    """Each planned overlay as a detached mount; a shared one gives each of its dirs a clone
    of that subdir, reached without symlinks or mounts (the app owns the upper it merges)."""

    def describe(self) -> str:
        return "mount overlays"

    def execute(self, ctx: HostContext) -> None:
        dirs = ctx.req.app_overlay_dirs
        for k, group in enumerate(ctx.overlays):
            what = f"overlay {group.lower}"
            fsfd = m.fsopen("overlay")
            try:
                _set_layers(fsfd, ctx.dir_fds[f"lower{k}"], ctx.dir_fds[f"upper{k}"], ctx.dir_fds[f"work{k}"], what)
                m.fsconfig_create(fsfd, what)
                mfd = m.fsmount(fsfd, m.MOUNT_ATTR_NOSUID | m.MOUNT_ATTR_NODEV, what)
            finally:
                os.close(fsfd)
            if not group.shared:
                ctx.mounts.append((dirs[group.members[0]], mfd))
                continue
            ctx.dir_fds[f"overlay{k}"] = mfd  # the clones keep it mounted once this goes
            for i in group.members:
                ctx.mounts.append((dirs[i], m.clone_subdir(mfd, dirs[i][len(group.lower):].lstrip("/"),
                                                           f"overlay {dirs[i]}")))


def _set_layers(fsfd: int, lower: int, upper: int, work: int, what: str) -> None:
    """The overlay's layers as fds (Linux 6.13), else as /proc/self/fd/N strings: both name the
    opened dirs, never a path again (kernel.py probes which one this kernel takes)."""
    if kernel.current().overlay_fd:
        m.fsconfig_fd(fsfd, "lowerdir+", lower, what)
        m.fsconfig_fd(fsfd, "upperdir", upper, what)
        m.fsconfig_fd(fsfd, "workdir", work, what)
    else:
        m.fsconfig_string(fsfd, "lowerdir", m.fd_path(lower), what)
        m.fsconfig_string(fsfd, "upperdir", m.fd_path(upper), what)
        m.fsconfig_string(fsfd, "workdir", m.fd_path(work), what)


class MountPackage(Step[HostContext]):
    """A clone of the package's shared read-only mount (see packages.py)."""

    def describe(self) -> str:
        return "mount package"

    def execute(self, ctx: HostContext) -> None:
        path = ctx.req.app_pkg_path
        try:
            with policy.acting_as(ctx.caller):
                pkg = fs.open_nofollow(path, os.O_RDONLY)
        except OSError as e:
            if e.errno != errno.EACCES or policy.is_root(ctx.caller):
                raise
            raise policy.Denied(f"package {path} is not readable by uid {ctx.caller and ctx.caller.uid}") from None
        try:
            if not stat.S_ISREG(os.fstat(pkg).st_mode):
                raise BuildError(self.describe(), errno.EINVAL, f"package {path} is not a regular file")
            ctx.pkg_key, mfd = ctx.packages.acquire(pkg, path, self.describe())
        finally:
            os.close(pkg)
        ctx.mounts.append((ctx.req.app_exec_dir, mfd))

    def undo(self, ctx: HostContext) -> None:
        if ctx.pkg_key is not None:
            ctx.packages.release(ctx.pkg_key)
            ctx.pkg_key = None


def host_steps() -> list[Step[HostContext]]:
    return [
        EnsureExecAndDataDirs(),
        PrepareOverlayLayers(),
        MountOverlays(),
        MountPackage(),
    ]
