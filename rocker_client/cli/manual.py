"""The manual: each command's page, rendered by argparse for --help and by scripts/gen_docs.py
as Markdown (docs/api.md), so the two never drift apart."""

from __future__ import annotations

import textwrap
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
--env-file and --env set; --clear-env starts from nothing instead. It runs as root inside
the rocker, which is --uid/--gid outside, with a reduced capability set.

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
behind keep it alive: end them with `rocker kill`).""",
        sections=(
            ("default dirs", """\
  NAME is PKG's file name without .squashfs.
  as root     exec dir /run/rocker/apps/NAME, data dir /var/lib/rocker/NAME
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
app_exec_dir, app_data_dir, app_overlay_dirs) plus "processes", the number
of processes in its PID namespace, and "pids", their PIDs on the host with
the guard first (both null where you may not look).""",
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

