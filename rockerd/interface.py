"""The io.rocker.Rocker varlink interface: the description every client can fetch.

Create's parameters and RockerInfo's request part are rendered from the request model, so a
field declared there is in the interface too.
"""

from .idl import idl_fields
from .request import RockerRequestModel

NAME = "io.rocker.Rocker"

RUNTIME_FIELDS = """\
  guard_pid: int,
  guard_pname: string,
  created: float,
  caller_uid: int"""

CGROUP_FIELDS = """\
  limits: Limits,
  usage: ?Usage"""

DESCRIPTION = f"""\
# rocker: app sandboxes built from read-only squashfs packages.
# A rocker is a guard process, PID 1 of new user, mount, PID, UTS, IPC and
# network namespaces, with the package at the exec dir and copy-on-write
# overlays over host dirs whose writes land in the app's data dir.
interface io.rocker.Rocker

# Indices into the file descriptors sent with the Create reply (SCM_RIGHTS).
# Enter them in this order: user first. No net with network "host": the app
# keeps the caller's network namespace.
type Namespaces (
  user: int,
  mnt: int,
  pid: int,
  net: ?int,
  uts: int,
  ipc: int
)

# The limits a rocker's cgroup holds (null: none); from the request, else rockerd's defaults.
type Limits (
  memory_max: ?int,
  pids_max: ?int,
  cpu_max: ?float
)

# What a rocker's processes use now, from its cgroup: memory in bytes, CPU time
# in microseconds, tasks, and processes the kernel OOM-killed at memory_max.
type Usage (
  memory: int,
  cpu_usec: int,
  procs: int,
  oom_kills: int
)

# One live rocker; usage is null where it has no cgroup (limits off).
type RockerInfo (
{RUNTIME_FIELDS},
{CGROUP_FIELDS},
{idl_fields(RockerRequestModel, optional_if_defaulted=False)}
)

# Build a rocker. The parameters are the fields of the C RockerRequest.
# The reply carries the RockerResult fields; app_pid is 0 (the client starts
# the app) and the namespace fds travel beside the reply, with the rocker's
# cgroup fds (cgroups: their indexes), which the app uses in order before it
# runs: it writes "0" to a cgroup file (v1 tasks, v2 cgroup.procs); on a
# socket (cgroup v2, non-root caller) it writes "0" and reads rockerd's
# answer, "0" once it has been moved or an errno; the last, the rocker's
# cgroup namespace, it joins (setns).
# Unless the request's seccomp is unconfined, the app's syscall filter comes
# too: a sealed memfd holding a BPF program (struct sock_filter[]) whose index
# is seccomp. The client installs it in the app after no_new_privs.
method Create(
{idl_fields(RockerRequestModel, optional_if_defaulted=True)}
) -> (
  err_no: int,
  app_pid: int,
  guard_pid: int,
  guard_pname: string,
  namespaces: Namespaces,
  cgroups: ?[]int,
  seccomp: ?int
)

# Enter a live rocker again (rocker exec): its namespace fds, in the same reply as
# Create's. Root and the uid the rocker runs as may; anyone else gets PermissionDenied.
method Join(guard_pname: string) -> (
  err_no: int,
  app_pid: int,
  guard_pid: int,
  guard_pname: string,
  namespaces: Namespaces
)

# The live rockers.
method List() -> (rockers: []RockerInfo)

# Send a signal (default SIGKILL) to a rocker's guard; its apps die with it.
method Kill(guard_pname: string, signal: ?int) -> ()

# A feature rockerd can take a fast or a fallback path for, and the one it takes
# on this kernel (probed at start; forced: ROCKER_FORCE_FALLBACK chose it).
type KernelPath (
  feature: string,
  fast: bool,
  forced: bool,
  path: string,
  fast_since: string
)

# Delete a data dir no live rocker uses, as its owner: the caller's own rights,
# and root's only for what overlayfs made inside (whiteouts, copy-ups, work
# dirs). left counts the entries that stay (someone else's, moved in).
method RemoveData(data_dir: string) -> (removed: int, left: int)

# The kernel rockerd runs on and the paths it takes there.
method Kernel() -> (release: string, paths: []KernelPath)

# The request broke a rule; field names it (e.g. app_overlay_dirs[2]).
error InvalidRequest (field: string, reason: string)

# The caller may not ask for this.
error PermissionDenied (reason: string)

# Building the rocker failed at step; everything done before was undone.
error BuildFailed (step: string, errno: int, reason: string)

# No live rocker has that name.
error NoSuchRocker (guard_pname: string)

# A configured limit was reached.
error LimitReached (limit: string, reason: string)

# The message could not be read as a varlink call.
error ProtocolViolation (parameter: string)

# A bug in rockerd; the daemon goes on serving.
error InternalError (reason: string)
"""
