"""`rocker run`'s command as a job: process group, terminal, signals, exit status.

The command (CMD) runs as a child of `rocker run` (enter.py starts it with
CLONE_PARENT), inside the rocker's PID namespace. How it relates to the
terminal is decided once, before it starts:

job mode     `rocker run` is alone in its process group and that group is the
             terminal's foreground group: an interactive shell started it as a
             job. CMD gets a process group of its own and becomes the
             terminal's foreground group while it runs, so ^C, ^Z and ^\\ reach
             CMD alone (not CMD *and* `rocker run`, which would pass them on a
             second time). When CMD stops (^Z), `rocker run` takes the terminal
             back and stops itself, so the shell sees the job stop; on `fg` it
             hands the terminal over again and continues CMD. When CMD ends it
             takes the terminal back for good.

shared mode  anything else: a script, a pipeline, no terminal at all. CMD stays
             in `rocker run`'s process group, as a plain child would, so the
             job's other members keep the terminal and terminal-generated
             signals reach everyone once; `rocker run` does not pass those on.

In both modes a signal sent to `rocker run` itself (kill(1), timeout(1), a
supervisor) is passed on to CMD, through a pidfd so it can never hit a reused
PID. Signals arriving while the rocker is still being set up are held and
passed on once CMD exists.
"""

from __future__ import annotations

import contextlib
import os
import signal
import termios
from collections.abc import Callable
from dataclasses import dataclass, field

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs every start of the CLI (issue 21); annotations only
    from typing import Any
    Handler = Callable[[int, Any], Any] | int | signal.Handlers | None

__all__ = ["FORWARDED", "Job", "Launch", "run_command"]

# Passed on to CMD. The stop signals are left at their default in `rocker run`:
# in shared mode ^Z has to stop both processes, in job mode it never reaches us.
FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2,
             signal.SIGWINCH, signal.SIGCONT, signal.SIGALRM)
_RESET = (*FORWARDED, signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU, signal.SIGCHLD)
_ALWAYS_DEFAULT = (signal.SIGPIPE, signal.SIGXFSZ)  # Python ignores these at start-up; CMD must not inherit that
_TERMINATING = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)
SI_KERNEL = 0x80  # si_code of a signal the kernel sent, e.g. the terminal's ^C

EXIT_ROCKER = 125
EXIT_CANNOT_RUN = 126
EXIT_NOT_FOUND = 127


@dataclass
class Launch:
    """Everything the app process needs, prepared before the fork (it must not import or decide much)."""

    argv: list[str]
    env: dict[str, str]
    workdir: str | None  # an explicit --workdir: failing to enter it is an error
    fallback_workdir: str  # the caller's cwd: used if it exists inside, else /
    own_group: bool = False
    tty_fd: int = -1  # take the terminal with this fd before exec; -1: leave it
    ignored: frozenset[int] = frozenset()  # signals `rocker run` found ignored (nohup): CMD inherits that
    mask: frozenset[int] = frozenset()  # the signal mask `rocker run` started with
    prog: str = "rocker run"  # names the command in CMD's messages (rocker exec too)


def run_command(launch: Launch) -> int:
    """The app process, already inside the rocker: become the job, restore signals, exec CMD.

    Returns (to enter.py, which exits with it) only when CMD could not be executed.
    """
    if launch.own_group:
        with contextlib.suppress(OSError):
            os.setpgid(0, 0)
    if launch.tty_fd >= 0:
        # We are a background group now: a blocked SIGTTOU lets tcsetpgrp through instead of stopping us.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTTOU})
        with contextlib.suppress(OSError):
            os.tcsetpgrp(launch.tty_fd, os.getpgrp())
    for sig in _RESET:
        signal.signal(sig, signal.SIG_IGN if sig in launch.ignored else signal.SIG_DFL)
    for sig in _ALWAYS_DEFAULT:
        signal.signal(sig, signal.SIG_DFL)
    if launch.workdir is not None:
        try:
            os.chdir(launch.workdir)
        except OSError as e:
            _say(launch.prog,
                 f"--workdir {launch.workdir}: {e.strerror} in the rocker: name a directory that exists there")
            return EXIT_ROCKER
    else:
        try:
            os.chdir(launch.fallback_workdir)
        except OSError:
            os.chdir("/")
    signal.pthread_sigmask(signal.SIG_SETMASK, launch.mask)
    cmd = launch.argv[0]
    try:
        os.execvpe(cmd, launch.argv, launch.env)
    except FileNotFoundError:
        if "/" in cmd:
            _say(launch.prog,
                 f"{cmd}: no such file in the rocker: check the path (see --exec-dir for where the package is)")
        else:
            _say(launch.prog, f"{cmd}: command not found in the rocker: give its path, or put it in the package's bin/")
        return EXIT_NOT_FOUND
    except OSError as e:
        _say(launch.prog, f"{cmd}: cannot execute in the rocker: {e.strerror}: check that it is an executable file "
             "the app's uid may run")
        return EXIT_CANNOT_RUN


def _say(prog: str, message: str) -> None:
    try:
        os.write(2, f"{prog}: {message}\n".encode(errors="replace"))
    except OSError:
        pass


class Terminal:
    """The controlling terminal, if `rocker run` has one."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        try:
            self.attrs: list[Any] | None = termios.tcgetattr(fd)
        except termios.error:
            self.attrs = None

    @classmethod
    def open(cls) -> Terminal | None:
        try:
            return cls(os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC))
        except OSError:
            return None

    def foreground_is(self, pgrp: int) -> bool:
        try:
            return os.tcgetpgrp(self.fd) == pgrp
        except OSError:
            return False

    def give(self, pgrp: int) -> None:
        """Make pgrp the foreground group; works from the background too (SIGTTOU blocked)."""
        old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTTOU})
        try:
            os.tcsetpgrp(self.fd, pgrp)
        except OSError:
            pass
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)

    def restore_modes(self) -> None:
        """What a shell does after a job died of a signal: it may have left the terminal raw."""
        if self.attrs is not None:
            old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTTOU})
            try:
                termios.tcsetattr(self.fd, termios.TCSADRAIN, self.attrs)
            except termios.error:
                pass
            finally:
                signal.pthread_sigmask(signal.SIG_SETMASK, old)

    def close(self) -> None:
        os.close(self.fd)


def _alone_in_process_group() -> bool:
    pgrp, me = os.getpgrp(), os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2:].split()
        if len(fields) > 2 and int(fields[2]) == pgrp:
            return False
    return True


@dataclass
class Job:
    """The parent's side: prepare() before enter_rocker, started() after it, then wait()."""

    terminal: Terminal | None = None
    job_mode: bool = False
    initial_mask: frozenset[int] = frozenset()
    ignored: frozenset[int] = frozenset()
    forwarded: tuple[int, ...] = ()
    saved_handlers: dict[int, Handler] = field(default_factory=dict)
    held: list[int] = field(default_factory=list)
    app_pid: int = 0
    pidfd: int = -1
    ended: bool = False

    @classmethod
    def prepare(cls) -> Job:
        initial_mask = frozenset(signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD}))
        ignored = frozenset(s for s in _RESET if signal.getsignal(s) == signal.SIG_IGN)
        job = cls(initial_mask=initial_mask, ignored=ignored,
                  forwarded=tuple(s for s in FORWARDED if s not in ignored))
        if signal.SIGCHLD in ignored:  # the kernel would reap CMD before we could wait for it
            job.saved_handlers[signal.SIGCHLD] = signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        job.terminal = Terminal.open()
        if job.terminal is not None and job.terminal.foreground_is(os.getpgrp()) and _alone_in_process_group():
            job.job_mode = True
        if job.job_mode:
            for sig in job.forwarded:
                job.saved_handlers[sig] = signal.signal(sig, job._hold)
        else:
            # Shared mode: keep them pending until CMD exists, so wait() reads each one's si_code and passes on
            # only those sent to us alone; a handler would lose si_code, and a ^C typed just after the app
            # began (it shares our group) would reach CMD twice. CMD restores the initial mask before exec.
            signal.pthread_sigmask(signal.SIG_BLOCK, job.forwarded)
        return job

    def launch(self, argv: list[str], env: dict[str, str], workdir: str | None, prog: str = "rocker run") -> Launch:
        return Launch(argv, env, workdir, os.getcwd() if _cwd_exists() else "/", own_group=self.job_mode,
                      tty_fd=self.terminal.fd if self.job_mode and self.terminal else -1,
                      ignored=self.ignored, mask=self.initial_mask, prog=prog)

    def _hold(self, sig: int, _frame: object) -> None:
        """A signal before CMD exists: hold it; a second terminating one gives up at once."""
        if sig in _TERMINATING and sig in self.held:
            _say("rocker", "interrupted while the rocker was being set up")
            os._exit(128 + sig)
        self.held.append(sig)

    def started(self, app_pid: int) -> None:
        self.app_pid = app_pid
        self.pidfd = os.pidfd_open(app_pid)
        if self.job_mode:
            with contextlib.suppress(OSError):  # the app does the same; whoever is first wins the race
                os.setpgid(app_pid, app_pid)
            assert self.terminal is not None
            self.terminal.give(app_pid)
        signal.pthread_sigmask(signal.SIG_BLOCK, self.forwarded)
        self._pass_held()

    def _pass_held(self) -> None:
        # Handlers for signals caught before the block above have run by the time this body executes.
        held, self.held = self.held, []
        for sig in held:
            self._on_signal(sig, 0)

    def wait(self) -> int:
        """Until CMD ends: pass signals on, follow its stops; its exit status, 128+N if signal N killed it."""
        waited = {signal.SIGCHLD, *self.forwarded}
        while True:
            code = self._check_app()
            if code is not None:
                return code
            info = signal.sigtimedwait(waited, 1.0)
            if info is not None and info.si_signo != signal.SIGCHLD:
                self._on_signal(info.si_signo, info.si_code)

    def _check_app(self) -> int | None:
        res = os.waitid(os.P_PIDFD, self.pidfd, os.WEXITED | os.WSTOPPED | os.WNOHANG | os.WNOWAIT)
        if res is None:
            return None
        if res.si_code == os.CLD_STOPPED:
            os.waitid(os.P_PIDFD, self.pidfd, os.WSTOPPED | os.WNOHANG)  # consume this stop report
            self._app_stopped()
            return None
        self.ended = True  # before reaping: nothing may signal the PID (or group) once it can be reused
        os.waitid(os.P_PIDFD, self.pidfd, os.WEXITED)
        if self.job_mode and self.terminal is not None:
            self.terminal.give(os.getpgrp())
        if res.si_code == os.CLD_EXITED:
            return res.si_status
        if self.terminal is not None and self.terminal.foreground_is(os.getpgrp()):
            self.terminal.restore_modes()
        return 128 + res.si_status

    def _app_stopped(self) -> None:
        if not self.job_mode or self.terminal is None:
            return  # nobody to show the stop to: wait until someone continues CMD
        self.terminal.give(os.getpgrp())
        os.kill(os.getpid(), signal.SIGSTOP)
        # `fg` or `bg` continued us; the SIGCONT that did it waits in the set wait() takes from

    def _on_signal(self, sig: int, si_code: int) -> None:
        if si_code == SI_KERNEL and not self.job_mode:
            return  # the terminal sent it to the whole group, CMD included
        if sig == signal.SIGCONT and self.job_mode and not self.ended:
            assert self.terminal is not None
            if self.terminal.foreground_is(os.getpgrp()):
                self.terminal.give(self.app_pid)  # `fg`: the terminal goes back to CMD
            with contextlib.suppress(OSError):
                os.killpg(self.app_pid, signal.SIGCONT)  # all of CMD's group stopped with it
            return
        with contextlib.suppress(OSError):
            signal.pidfd_send_signal(self.pidfd, sig)

    def close(self) -> None:
        """Back to how `rocker run` started; safe after any failure."""
        if self.job_mode and self.terminal is not None:
            self.terminal.give(os.getpgrp())
        for sig, handler in self.saved_handlers.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        self.saved_handlers.clear()
        # Signals that came after CMD ended are dropped, not turned into a KeyboardInterrupt here.
        late = {signal.SIGCHLD, *self.forwarded} - self.initial_mask
        while signal.sigtimedwait(late, 0) is not None:
            pass
        signal.pthread_sigmask(signal.SIG_SETMASK, self.initial_mask)
        if self.pidfd >= 0:
            os.close(self.pidfd)
            self.pidfd = -1
        if self.terminal is not None:
            self.terminal.close()
            self.terminal = None


def _cwd_exists() -> bool:
    try:
        os.getcwd()
    except OSError:
        return False
    return True

