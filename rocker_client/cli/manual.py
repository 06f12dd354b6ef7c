"""The manual: each command's page, rendered by argparse for --help and by scripts/gen_docs.py
as Markdown (docs/api.md), so the two never drift apart."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Page:
    """One command's manual page; argparse renders it for --help, gen_docs.py as Markdown."""

    name: str
    summary: str
    synopsis: str
    description: str
    sections: tuple[tuple[str, str], ...] = ()  # (title, preformatted text) after the options
    examples: tuple[tuple[str, str], ...] = ()  # (what it does, command line)
    exit_status: tuple[tuple[str, str], ...] = ()


EXIT_STATUS_ROCKER = ("125", "rocker failed: rockerd is unreachable, or it answered with an error")
EXIT_STATUS_USAGE = ("2", "usage error: an unknown option, a missing or malformed argument")

PAGES: dict[str, Page] = {p.name: p for p in (
    Page(
        name="rocker",
        summary="run apps from squashfs packages in sandboxes built by rockerd",
        synopsis="rocker [--socket PATH] COMMAND [OPTIONS] [ARGS]",
        description="""\
rocker runs apps shipped as one read-only squashfs package in sandboxes of
their own, called rockers. The rockerd daemon builds each rocker: a guard
process that is PID 1 of new user, mount, PID, UTS, IPC and network
namespaces, with the package mounted read-only at the app's exec dir,
copy-on-write overlays over the host dirs you name (writes land in the app's
data dir, never on the host), a fresh /proc, only lo for network, and root
inside mapped to one uid outside. rocker talks to rockerd over a unix socket.""",
        sections=(
            ("commands", """\
  run       run a command in a new rocker
  exec      run another command in a live rocker
  ps        list the live rockers
  inspect   print one live rocker as JSON
  kill      signal a rocker's guard (ends the rocker)
  diff      show what an app wrote over the host: added, changed, deleted
  rm-data   delete a data dir that no rocker uses
  status    show whether rockerd is up, its version and how many rockers live

Run `rocker COMMAND --help` for a command's options."""),
            ("environment", """\
  ROCKER_SOCKET   rockerd's socket when --socket is not given
                  (default /run/rocker/rockerd.sock)"""),
        ),
        examples=(
            ("is rockerd up?", "rocker status"),
            ("run the package's bin/hello in a new rocker", "rocker run --pkg hello.squashfs -- hello"),
            ("talk to a daemon on another socket", "rocker --socket /tmp/rockerd.sock ps"),
        ),
        exit_status=(
            ("0", "success"),
            ("1", "no live rocker has that name (exec, inspect, kill)"),
            EXIT_STATUS_USAGE,
            ("125", "rocker failed: rockerd is unreachable, the package is missing, or rockerd refused "
                    "or could not build the rocker"),
            ("126", "run, exec: CMD was found in the rocker but could not be executed"),
            ("127", "run, exec: CMD was not found in the rocker"),
            ("128+N", "run, exec: CMD was killed by signal N"),
            ("other", "run, exec: CMD's own exit status"),
        ),
    ),
    Page(
        name="run",
        summary="run a command in a new rocker",
        synopsis="rocker run --pkg PKG [OPTIONS] [--] CMD [ARG...]",
        description="""\
Ask rockerd for a new rocker built from the package PKG and run CMD in it.
CMD is a child of `rocker run` with your environment, stdin, stdout, stderr
and terminal, so an interactive shell inside works. The environment is yours
less rocker's own ROCKER_* variables (pass one on with --env NAME), then what
--env-file and --env set; --clear-env starts from nothing instead. It runs as
root inside the rocker, which is --uid/--gid outside (default: yours; when
you are root, nobody's: --uid 0 asks for root), with a reduced capability set
and the syscall filter --seccomp names (default: default; see docs/security.md).

The package is mounted read-only at the exec dir, and its bin/ comes first
on CMD's PATH. Each --overlay DIR puts a copy-on-write layer over the host's
DIR: what CMD writes there lands in DATA_DIR/upper/DIR, never on the host.
The rest of the file system is the host's, with the host's permissions for
the app's uid. CMD starts in the current directory (else in /) unless
--workdir says otherwise.

Signals sent to `rocker run` are passed on to CMD. Started from an
interactive shell, CMD gets the terminal while it runs, so ^C, ^Z and ^\\
go to CMD and `fg`/`bg` work as usual. `rocker run` exits when CMD does;
the rocker ends as soon as nothing runs in it any more (processes CMD left
behind keep it alive: end them with `rocker kill`).

The rocker has a cgroup of its own: --memory, --pids and --cpus bound what
all its processes use together (rockerd applies its own defaults, e.g. 4096
tasks, to what you leave out, and may refuse values above its ceilings).""",
        sections=(
            ("default dirs", """\
  NAME is PKG's file name without .squashfs.
  as root     exec dir /run/rocker/apps/NAME, data dir /var/lib/rocker/NAME
              for an app of uid 0, /var/lib/rocker/uid-UID/NAME for any other
              (rockerd creates missing dirs)
  otherwise   exec dir $XDG_RUNTIME_DIR/rocker/apps/NAME (/run/user/UID/...)
              data dir ${XDG_DATA_HOME:-~/.local/share}/rocker/NAME
              (`rocker run` creates them: rockerd wants them to exist and
              belong to you)"""),
        ),
        examples=(
            ("run the package's bin/hello", "rocker run --pkg hello.squashfs -- hello"),
            ("a shell whose writes to /usr and /etc stay in the rocker's data dir",
             "rocker run --pkg hello.squashfs --overlay /usr --overlay /etc -- sh"),
            ("at most 256 MiB, 200 tasks and half a CPU",
             "rocker run --pkg hello.squashfs --memory 256M --pids 200 --cpus 0.5 -- hello"),
            ("run it only if it is the package you published (rockerd checks the file it mounts)",
             "rocker run --pkg hello.squashfs --pkg-sha256 \"$(cat hello.sha256)\" -- hello"),
            ("a clean environment with two variables",
             "rocker run --pkg hello.squashfs --clear-env -e LANG=C.UTF-8 --env-file app.env -- hello"),
            ("the exit status is CMD's: this prints 7", "rocker run --pkg hello.squashfs -- sh -c 'exit 7'; echo $?"),
            ("as root, run the app as uid 1000 with dirs of its own",
             "rocker run --pkg /srv/apps/hello.squashfs --uid 1000 --gid 1000 \\\n"
             "    --exec-dir /srv/rocker/hello/exec --data-dir /srv/rocker/hello/data \\\n"
             "    -- hello"),
        ),
        exit_status=(
            ("CMD's", "CMD exited: its exit status"),
            ("128+N", "CMD was killed by signal N (130 SIGINT, 137 SIGKILL, 143 SIGTERM)"),
            EXIT_STATUS_USAGE,
            ("125", "no rocker: rockerd is unreachable, the package is missing, rockerd refused the request "
                    "or could not build the rocker, or --workdir does not exist inside"),
            ("126", "CMD was found in the rocker but could not be executed"),
            ("127", "CMD was not found in the rocker"),
        ),
    ),
    Page(
        name="exec",
        summary="run another command in a live rocker",
        synopsis="rocker exec [-w DIR] NAME [--] CMD [ARG...]",
        description="""\
Run CMD in the live rocker NAME, beside what already runs there: in its PID
namespace (CMD sees the other processes, the guard as PID 1), its mounts
(the package at the exec dir, its overlays with what was written to them),
its hostname and its network, as root inside with the same capability set
as the rocker's first command. It is what `docker exec` and `machinectl
shell` are to their containers; no nsenter needed.

Only root and the uid the rocker runs as may do this: rockerd refuses
anyone else.

CMD is a child of `rocker exec`, with your environment as `rocker run` makes
it (--env, --env-file, --clear-env; the package's bin/ first on PATH), stdin,
stdout, stderr and terminal, and the signal, terminal and exit status
handling of `rocker run`. CMD keeps the rocker alive while
it runs.""",
        examples=(
            ("a shell in a running rocker", "rocker exec rk-0a1b2c3d sh"),
            ("what runs in it", "rocker exec rk-0a1b2c3d -- ps -ef"),
        ),
        exit_status=(
            ("CMD's", "CMD exited: its exit status"),
            ("128+N", "CMD was killed by signal N"),
            ("1", "no live rocker is called NAME (or it ended meanwhile)"),
            EXIT_STATUS_USAGE,
            ("125", "rockerd is unreachable, or refused: you are neither root nor the rocker's uid"),
            ("126", "CMD was found in the rocker but could not be executed"),
            ("127", "CMD was not found in the rocker"),
        ),
    ),
    Page(
        name="ps",
        summary="list the live rockers",
        synopsis="rocker ps [--json]",
        description="""\
List the live rockers you may see: root sees all of them, anyone else the
ones that run as their uid or that they asked for.""",
        sections=(
            ("columns", """\
  NAME       the rocker's name: its guard's process name and its hostname
  APP ID     the --app-id it was created with
  UID        the app's uid outside the rocker
  GUARD PID  the guard's PID on the host (it is PID 1 inside the rocker)
  AGE        time since it was created
  PROCS      processes in the rocker's PID namespace, the guard included
             ("-" where you may not look into the guard)
  MEM        memory its cgroup uses now, /its limit if it has one; "!" once
             the kernel OOM-killed a process in it ("-": limits are off)
  CPU        CPU time its processes used, /its CPU limit if it has one
  PACKAGE    the package it was built from"""),
        ),
        examples=(
            ("the table", "rocker ps"),
            ("names of the rockers of app 7, with jq",
             "rocker ps --json | jq -r '.[] | select(.app_id == 7) | .guard_pname'"),
        ),
        exit_status=(("0", "success (also when no rocker lives)"), EXIT_STATUS_USAGE, EXIT_STATUS_ROCKER),
    ),
    Page(
        name="inspect",
        summary="print one live rocker as JSON",
        synopsis="rocker inspect NAME",
        description="""\
Print what is known about the live rocker NAME as one JSON object: the
fields rockerd reports (RockerInfo in docs/protocol.md: guard_pid,
guard_pname, app_id, uid, gid, created, caller_uid, app_pkg_path,
app_exec_dir, app_data_dir, app_overlay_dirs, seccomp, the limits asked
for, and "limits" and "usage" from its cgroup: memory in bytes, cpu_usec,
procs, oom_kills) plus "processes", the number of processes in its PID
namespace, and "pids", their PIDs on the host with the guard first (both
null where you may not look).""",
        examples=(("the data dir of a rocker, with jq", "rocker inspect rk-0a1b2c3d | jq -r .app_data_dir"),),
        exit_status=(("0", "success"), ("1", "no live rocker is called NAME"), EXIT_STATUS_USAGE,
                     EXIT_STATUS_ROCKER),
    ),
    Page(
        name="kill",
        summary="signal a rocker's guard (ends the rocker)",
        synopsis="rocker kill [-s SIG] NAME...",
        description="""\
Send the signal SIG (default KILL) to the guard of each rocker NAME, through
rockerd, which signals it through a pidfd it holds of the guard: a rocker that
has ended is reported as such, and a PID reused after it ended is never
signalled.""",
        sections=(
            ("what the guard does with the signal", """\
  KILL            the rocker ends at once: the kernel kills every process in it
  TERM, INT, HUP  passed on to every process in the rocker; the rocker ends
                  when they are gone, at most 5 s later
  STOP, CONT      stop and continue the guard alone
  any other       ignored (the guard is PID 1 of its namespace)"""),
        ),
        examples=(
            ("end a rocker now", "rocker kill rk-0a1b2c3d"),
            ("ask its processes to quit first", "rocker kill -s TERM rk-0a1b2c3d"),
        ),
        exit_status=(("0", "every rocker was signalled"), ("1", "no live rocker is called NAME (for at least one)"),
                     EXIT_STATUS_USAGE, EXIT_STATUS_ROCKER),
    ),
    Page(
        name="pack",
        summary="pack a directory into an app package (a squashfs image)",
        synopsis="rocker pack DIR -o APP.squashfs [--comp ALGO]",
        description="""\
Make the read-only package rocker mounts at an app's exec dir from the tree
DIR, with mksquashfs (Debian: squashfs-tools). The image is what a package
should be: every file owned by root:root (the package is mounted nosuid and
nodev, and a uid-1000 app must not own its own code), and reproducible: the
same DIR gives the same bytes on any machine (file times and the image's own
time set to 0, entries in sorted order, no extended attributes). An existing
APP.squashfs is replaced only when the new image is complete.""",
        sections=(("options", """\
  -o, --output FILE   the package to write (required)
  --comp ALGO         compression: gzip (default; every kernel reads it),
                      zstd, xz, lz4, lzo"""),),
        examples=(("pack an app and run it", "rocker pack ./hello -o hello.squashfs\n"
                                             "rocker run --pkg hello.squashfs -- hello"),),
        exit_status=(("0", "the package was written"), EXIT_STATUS_USAGE,
                     ("125", "mksquashfs is missing or failed; DIR is not a directory")),
    ),
    Page(
        name="diff",
        summary="show what an app wrote over the host: added, changed, deleted",
        synopsis="rocker diff NAME|DIR",
        description="""\
List what the overlays of a data dir hold, as paths on the host: the data
dir of the live rocker NAME, or the data dir DIR (a path: it contains a /).
Each line is a kind and a path:

  A PATH    added: the host has no PATH (a dir ends in /)
  C PATH    changed: the app's PATH hides the host's (a dir ends in / when
            the app replaced it whole; needs root to tell)
  D PATH    deleted: the app removed the host's PATH (a whiteout)

Rockers on one data dir share it, so this is what all of them wrote. It
reads <DIR>/upper/ as you: run it as the data dir's owner or root.""",
        sections=(("the same with find", """\
  find DIR/upper -mindepth 1 \\( -type c -printf 'D /%P\\n' \\) -o -printf 'A /%P\\n'"""),),
        examples=(("what the app of rk-0a1b2c3d wrote to /etc", "rocker diff rk-0a1b2c3d | grep ' /etc/'"),),
        exit_status=(("0", "success"), ("1", "no live rocker is called NAME"), EXIT_STATUS_USAGE,
                     ("125", "rockerd is unreachable, or there is no data dir at DIR")),
    ),
    Page(
        name="rm-data",
        summary="delete a data dir that no rocker uses",
        synopsis="rocker rm-data DIR",
        description="""\
Delete the data dir DIR and everything in it, through rockerd: whiteouts,
copy-ups of dirs of other owners and overlayfs's work dirs are root's or
sit in root's sticky dirs, so a plain rm -rf cannot. rockerd removes what
you may remove as you, and with root's rights only what overlayfs or
rockerd made there (and empty dirs); it never follows a symlink or crosses
a mount. DIR must be yours (or you root), hold nothing but upper/ and
work/ (what rockerd makes: anything else is refused, so a typo such as
/usr costs nothing), and no live rocker may use it: that is refused, naming
the rocker (`rocker kill` it first).""",
        examples=(("start an app afresh", "rocker rm-data ~/.local/share/rocker/hello"),),
        exit_status=(("0", "DIR is gone"), EXIT_STATUS_USAGE,
                     ("125", "refused (not yours, in use), or some entries stay: they are not yours and "
                             "rocker did not make them")),
    ),
    Page(
        name="status",
        summary="show whether rockerd is up, its version and how many rockers live",
        synopsis="rocker status [--json]",
        description="""\
Ask rockerd on its socket who it is (org.varlink.service.GetInfo), which
rockers live (io.rocker.Rocker.List) and which kernel paths it takes
(io.rocker.Rocker.Kernel: fast, or the fallback for an older kernel), and
print that with the socket path and this client's version.""",
        examples=(("is rockerd up? (exit status 0 if it is)", "rocker status >/dev/null && echo up"),),
        exit_status=(("0", "rockerd answered"), EXIT_STATUS_USAGE, ("125", "rockerd is unreachable or failed")),
    ),
)}


def _section(title: str, body: str) -> str:
    return f"{title}:\n{body}"


def epilog(page: Page) -> str:
    import textwrap  # here: only help and the docs render an epilog (start time, issue 21)

    parts = [_section(title, text) for title, text in page.sections]
    if page.examples:
        parts.append(_section("examples", "\n\n".join(
            f"  # {what}\n" + textwrap.indent(cmd, "  ") for what, cmd in page.examples)))
    if page.exit_status:
        width = max(len(code) for code, _ in page.exit_status)
        rows = []
        for code, meaning in page.exit_status:
            wrapped = textwrap.wrap(meaning, 76 - width - 4) or [""]
            rows.append(f"  {code:<{width}}  {wrapped[0]}")
            rows += [f"  {'':<{width}}  {more}" for more in wrapped[1:]]
        parts.append(_section("exit status", "\n".join(rows)))
    return "\n\n".join(parts)


PAGES_COMMANDS = [name for name in PAGES if name != "rocker"]

