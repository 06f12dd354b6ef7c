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

from rocker_sys import fs
from rocker_sys import mount as m

from .. import kernel, policy
from ..request import RockerRequestModel
from . import layout
from .datashare import DataShares, Share, written_dirs
from .overlay_plan import OverlayGroup, plan_overlays
from .packages import PackageCache, PackageKey
from .pkgopen import open_package
from .stage import clone_subdirs, sharing
from .steps import BuildError, Step
from .workslots import WorkSlots


@dataclass
class HostContext:
    req: RockerRequestModel
    name: str
    caller: policy.Peer | None  # None: the daemon itself; root may have dirs created
    packages: PackageCache
    slots: WorkSlots
    pkg_key: PackageKey | None = None
    work_slot: int | None = None
    created: list[str] = field(default_factory=list)  # exec/data dirs made (root callers), absolute
    made_in_data: list[str] = field(default_factory=list)  # dirs made below the data dir, relative to it
    mounts: list[tuple[str, int]] = field(default_factory=list)  # (target, detached mount fd), in attach order
    dir_fds: dict[str, int] = field(default_factory=dict)
    overlays: list[OverlayGroup] = field(default_factory=list)
    data_owner: policy.Peer | None = None  # whom dirs below the data dir are made as
    expect: dict[str, fs.DirSpec] = field(default_factory=dict)  # overlay dir -> its upper's (host's) attrs
    pkg_fd: int | None = None  # the package, opened off the loop (pkgopen.py)
    shares: DataShares | None = None  # None: every rocker builds its own overlays (tests of single steps)
    share: Share | None = None  # the data dir's share this rocker is a member of
    joined: bool = False  # it clones the share's overlays instead of building them

    def close_fds(self) -> None:
        if self.pkg_fd is not None:
            os.close(self.pkg_fd)
            self.pkg_fd = None
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
        with policy.acting_as(ctx.caller):
            for key, path, spec in (("exec", r.app_exec_dir, fs.DirSpec(0o755, (0, 0))),
                                    ("data", r.app_data_dir, fs.DirSpec(0o700, (r.uid, r.gid)))):
                try:
                    fd, created = fs.ensure_dir(path, create=create, spec=spec, parents=fs.DirSpec(0o755, (0, 0)))
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


class ClaimDataDir(Step[HostContext]):
    """Join the data dir's live overlays or start them (datashare.py); a different set is refused."""

    def describe(self) -> str:
        return "claim data dir"

    def execute(self, ctx: HostContext) -> None:
        if ctx.shares is not None:
            ctx.share, ctx.joined = ctx.shares.claim(ctx.name, ctx.req, ctx.dir_fds["data"])
            if ctx.joined:
                ctx.work_slot = ctx.share.slot

    def undo(self, ctx: HostContext) -> None:
        if ctx.share is not None:
            assert ctx.shares is not None
            ctx.shares.leave(ctx.name)
            ctx.share = None
            if ctx.joined:
                ctx.work_slot = None  # the share's, not this rocker's to give back


class ShareOverlays(Step[HostContext]):
    """The first rocker on a data dir stages its overlays (datashare.py); each rocker gets clones of them."""

    def describe(self) -> str:
        return "share overlays"

    def execute(self, ctx: HostContext) -> None:
        share = ctx.share
        if share is None:
            return
        assert ctx.shares is not None
        if ctx.joined:
            ctx.mounts += ctx.shares.clones(share)
            return
        share.slot = ctx.work_slot
        if ctx.mounts:  # only overlays so far: the package comes after
            mounts, ctx.mounts = ctx.mounts, []
            ctx.mounts = ctx.shares.publish(share, mounts, written_dirs(ctx.overlays, ctx.dir_fds, share.slot))


class PrepareOverlayLayers(Step[HostContext]):
    """Plan the overlays (overlay_plan.py); open each one's lower dir as the caller (no symlinks);
    give each overlay dir an upper that mirrors the host dir and this rocker a work dir.

    Only upper/<D> of each overlay dir D is seen by the app, so only it mirrors D (owner, group,
    mode without set-id bits); it is made as root and set on its fd, and an existing one that
    differs is refused (stray set-id bits are cleared). Every other dir made below the data
    dir (upper/ and the dirs on the way to each upper/<D>, work/<slot>/<i>) is made as the data
    dir's owner, so that it can remove the whole data dir with rm -rf.
    """

    def describe(self) -> str:
        return "prepare overlay layers"

    def execute(self, ctx: HostContext) -> None:
        """In three passes, so that each set of credentials is taken once (acting_as costs ~15 us)."""
        if ctx.joined:
            return
        r = ctx.req
        ctx.data_owner = policy.data_dir_owner(ctx.caller, ctx.dir_fds["data"])
        ctx.work_slot = ctx.slots.take(r.app_data_dir)
        ctx.overlays = plan_overlays(r.app_overlay_dirs, share=sharing())
        host: dict[str, os.stat_result] = {}  # overlay dir -> what its overlay shows there
        with policy.acting_as(ctx.caller):  # the host side, walked as the caller
            for k, group in enumerate(ctx.overlays):
                lower = ctx.dir_fds[f"lower{k}"] = self._lower(ctx, group.lower)
                for i in group.members:
                    d = r.app_overlay_dirs[i]
                    host[d] = self._member_stat(ctx, lower, group.lower, d) if group.shared else os.fstat(lower)
        wanted = {layout.upper_rel(d).rpartition("/")[0]: 0o755 for d in host}  # the data dir owner's dirs
        for group in ctx.overlays:
            if group.shared:
                wanted[layout.upper_rel(group.lower)] = 0o755
            wanted[layout.work_rel(ctx.work_slot, group.members[0])] = 0o700
        own = self._own_dirs(ctx, wanted)
        try:
            for k, group in enumerate(ctx.overlays):
                if group.shared:
                    ctx.dir_fds[f"upper{k}"] = os.dup(own[layout.upper_rel(group.lower)])
                ctx.dir_fds[f"work{k}"] = os.dup(own[layout.work_rel(ctx.work_slot, group.members[0])])
            for k, group in enumerate(ctx.overlays):  # each upper/<D>, as root
                for i in group.members:
                    d = r.app_overlay_dirs[i]
                    fd = self._upper(ctx, d, host[d], own[layout.upper_rel(d).rpartition("/")[0]])
                    if group.shared:
                        os.close(fd)
                    else:
                        ctx.dir_fds[f"upper{k}"] = fd
        finally:
            for fd in own.values():
                os.close(fd)

    def _fail(self, ctx: HostContext, d: str, e: OSError) -> Exception:
        if e.errno == errno.ELOOP:
            return BuildError(self.describe(), e.errno,
                              f"overlay dir {d} is or passes through a symlink; name the real directory")
        if e.errno == errno.EACCES and not policy.is_root(ctx.caller):
            assert ctx.caller is not None
            return policy.Denied(f"overlay dir {d} is not reachable by uid {ctx.caller.uid}")
        return BuildError(self.describe(), e.errno or errno.EIO, f"overlay dir {d}: {e.strerror}")

    def _lower(self, ctx: HostContext, d: str) -> int:
        try:
            return fs.open_nofollow(d, fs.O_PATH_DIR)
        except OSError as e:
            raise self._fail(ctx, d, e) from None

    def _member_stat(self, ctx: HostContext, lower: int, top: str, d: str) -> os.stat_result:
        """What the shared overlay over `top` shows at `d`: reached from its lower (no mount crossed)."""
        try:
            fd = fs.open_nofollow(d[len(top):].lstrip("/"), fs.O_PATH_DIR, lower, same_mount=True, beneath=True)
        except OSError as e:
            raise self._fail(ctx, d, e) from None
        try:
            return os.fstat(fd)
        finally:
            os.close(fd)

    @staticmethod
    def _own_dirs(ctx: HostContext, wanted: dict[str, int]) -> dict[str, int]:
        """Dirs below the data dir (path relative to it -> mode), each opened beneath its fd; the
        missing ones made as the data dir's owner (opening needs no credentials: the usual case
        of a data dir used before takes none)."""
        data = ctx.dir_fds["data"]
        own: dict[str, int] = {}
        try:
            for rel in wanted:
                try:
                    own[rel] = fs.open_nofollow(rel, fs.O_PATH_DIR, data, beneath=True)
                except OSError:
                    pass
            if len(own) < len(wanted):
                with policy.acting_as(ctx.data_owner):
                    for rel, mode in wanted.items():
                        if rel not in own:
                            own[rel], created = fs.ensure_dir(rel, create=True, spec=fs.DirSpec(mode), dir_fd=data)
                            ctx.made_in_data += created
        except BaseException:
            for fd in own.values():
                os.close(fd)
            raise
        return own

    def _upper(self, ctx: HostContext, d: str, host: os.stat_result, parent: int) -> int:
        """upper/<d> in its parent's fd, mirroring host dir `d` (`host`: its stat as the lower shows it)."""
        want = mirror_of(host)
        rel = layout.upper_rel(d)
        path = f"{ctx.req.app_data_dir}/{rel}"
        fd, made = fs.make_dir(parent, rel.rpartition("/")[2], want, path)  # only root may give it D's owner
        if made:
            ctx.made_in_data.append(rel)
        else:
            try:
                check_upper(fd, want, d, path)
            except BaseException:
                os.close(fd)
                raise
        ctx.expect[d] = want
        return fd

    def undo(self, ctx: HostContext) -> None:
        if ctx.joined:
            return
        if ctx.made_in_data:
            try:
                data = fs.open_nofollow(ctx.req.app_data_dir, fs.O_PATH_DIR)
            except OSError:
                data = -1
            if data >= 0:
                try:
                    for rel in ctx.made_in_data:
                        if rel.startswith(layout.WORK + "/"):  # overlayfs may have filled a work dir we made: not empty
                            fs.remove_tree(rel, data)
                    with policy.acting_as(ctx.data_owner):  # all in the owner's dirs: remove as the owner
                        fs.remove_created(ctx.made_in_data, data)
                finally:
                    os.close(data)
            ctx.made_in_data.clear()
        if ctx.work_slot is not None:
            ctx.slots.give_back(ctx.req.app_data_dir, ctx.work_slot)
            ctx.work_slot = None


def mirror_of(host: os.stat_result) -> fs.DirSpec:
    """What rockerd makes upper/<D> as: D's owner, group and mode, less set-id bits (a mirrored
    setgid dir would give files the app makes the dir's group, or let a swapped-in file take it)."""
    return fs.DirSpec(stat.S_IMODE(host.st_mode) & ~fs.SET_ID, (host.st_uid, host.st_gid))


def _attrs(uid: int, gid: int, mode: int) -> str:
    return f"{uid}:{gid} {mode:04o}"


def check_upper(fd: int, want: fs.DirSpec, d: str, path: str) -> None:
    """An existing upper/<D> must be what rockerd makes: overlayfs shows the app D with the
    upper's owner and mode but reads D's lower as root, so a looser upper would open D to it."""
    st = os.fstat(fd)
    assert want.owner is not None
    mode = stat.S_IMODE(st.st_mode)
    if (st.st_uid, st.st_gid, mode & ~fs.SET_ID) != (*want.owner, want.mode):
        raise policy.Denied(f"upper dir {path} is {_attrs(st.st_uid, st.st_gid, mode)} but overlay dir {d} "
                            f"is {_attrs(*want.owner, want.mode)} on the host (set-id bits aside): the app "
                            f"would see {d} with rights its uid does not have there; remove {path}")
    if mode & fs.SET_ID:  # made by an older rockerd, which copied them: clear them on the fd
        os.fchmod(fd, want.mode)


class VerifyOverlayRoots(Step[HostContext]):
    """What the app gets at each overlay dir is the dir checked above: a shared overlay reaches
    each subdir by name inside its upper, which the caller could have swapped since; the mount's
    own root (fstat of the detached mount) cannot change any more."""

    def describe(self) -> str:
        return "verify overlays"

    def execute(self, ctx: HostContext) -> None:
        if ctx.joined:
            return
        for target, mfd in ctx.mounts:
            want = ctx.expect.get(target)
            if want is None or want.owner is None:
                continue
            st = os.fstat(mfd)
            if (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) != (*want.owner, want.mode) \
                    or not stat.S_ISDIR(st.st_mode):
                raise policy.Denied(f"overlay dir {target} came out as {_attrs(st.st_uid, st.st_gid, st.st_mode)}, "
                                    f"not {_attrs(*want.owner, want.mode)}: its upper dir changed during the build")


class MountOverlays(Step[HostContext]):
    """Each planned overlay as a detached mount; a shared one gives each of its dirs a clone
    of that subdir, reached without symlinks or mounts (the app owns the upper it merges)."""

    def describe(self) -> str:
        return "mount overlays"

    def execute(self, ctx: HostContext) -> None:
        if ctx.joined:
            return
        dirs = ctx.req.app_overlay_dirs
        for k, group in enumerate(ctx.overlays):
            what = f"overlay {group.lower}"
            fsfd = m.fsopen("overlay")
            try:
                set_layers(fsfd, ctx.dir_fds[f"lower{k}"], ctx.dir_fds[f"upper{k}"], ctx.dir_fds[f"work{k}"], what,
                           kernel.current().overlay_fd)
                m.fsconfig_create(fsfd, what, upper_work=(ctx.dir_fds[f"upper{k}"], ctx.dir_fds[f"work{k}"]))
                mfd = m.fsmount(fsfd, m.MOUNT_ATTR_NOSUID | m.MOUNT_ATTR_NODEV, what)
            finally:
                os.close(fsfd)
            if not group.shared:
                ctx.mounts.append((dirs[group.members[0]], mfd))
                continue
            ctx.dir_fds[f"overlay{k}"] = mfd  # the clones keep it mounted once this goes
            members = [dirs[i] for i in group.members]
            clones = clone_subdirs(mfd, [d[len(group.lower):].lstrip("/") for d in members],
                                   [f"overlay {d}" for d in members])
            ctx.mounts += zip(members, clones, strict=True)


def set_layers(fsfd: int, lower: int, upper: int, work: int, what: str, as_fds: bool) -> None:
    """The overlay's layers as fds (Linux 6.13), else as /proc/self/fd/N strings: both name the
    opened dirs, never a path again (kernel.py probes which one this kernel takes: `as_fds`)."""
    if as_fds:
        m.fsconfig_fd(fsfd, "lowerdir+", lower, what)
        m.fsconfig_fd(fsfd, "upperdir", upper, what)
        m.fsconfig_fd(fsfd, "workdir", work, what)
    else:
        m.fsconfig_fd_path(fsfd, "lowerdir", lower, what)
        m.fsconfig_fd_path(fsfd, "upperdir", upper, what)
        m.fsconfig_fd_path(fsfd, "workdir", work, what)


class MountPackage(Step[HostContext]):
    """A clone of the package's shared read-only mount (see packages.py), from the fd
    pkgopen.py opened off the event loop (or, without one, opened here the same way)."""

    def describe(self) -> str:
        return "mount package"

    def execute(self, ctx: HostContext) -> None:
        pkg, ctx.pkg_fd = ctx.pkg_fd, None
        if pkg is None:
            pkg = open_package(ctx.req.app_pkg_path, ctx.caller, ctx.req.app_pkg_sha256)
        try:
            ctx.pkg_key, mfd = ctx.packages.acquire(pkg, ctx.req.app_pkg_path, self.describe())
        finally:
            os.close(pkg)
        ctx.mounts.append((ctx.req.app_exec_dir, mfd))

    def undo(self, ctx: HostContext) -> None:
        if ctx.pkg_key is not None:
            ctx.packages.release(ctx.pkg_key)
            ctx.pkg_key = None
