"""systemd glue: readiness, STATUS=, the watchdog, STOPPING=, idle exit.

Outside systemd all of it is inert: notifications need $NOTIFY_SOCKET, the
watchdog runs only when $WATCHDOG_USEC is meant for this process, and idle
exit only when asked for (`rockerd --idle-exit SEC`, set in the unit).

The watchdog is pinged from the event loop itself, by a call_later chain at
half the interval systemd gave us: a wedged loop stops pinging, and systemd
kills and restarts the daemon.

The counts for STATUS= and idle exit are read from the registry and the
server once per tick (at most a second apart); reading two lengths is cheaper
than hooking every place that changes them.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable

from systemd import daemon

log = logging.getLogger("rockerd")

STATUS_TICK = 1.0  # seconds between looks at the counts (STATUS= and idle exit)

Counts = Callable[[], tuple[int, int]]  # (live rockers, client connections)


def notify(*assignments: str) -> None:
    """sd_notify(3) the assignments (READY=1, STATUS=..., ...) if systemd listens; never raises."""
    if os.environ.get("NOTIFY_SOCKET"):
        try:
            daemon.notify("\n".join(assignments))
        except OSError as e:  # the manager went away: nothing to tell, and no reason to stop serving
            log.debug("sd_notify(%s) failed: %s", assignments[0], e)


def watchdog_interval() -> float | None:
    """Seconds between WATCHDOG=1 pings (half of $WATCHDOG_USEC), or None when no watchdog is ours."""
    usec, pid = os.environ.get("WATCHDOG_USEC", ""), os.environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0 or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 2e6


def plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def status_text(rockers: int, clients: int) -> str:
    return f"{plural(rockers, 'rocker')}, {plural(clients, 'client')}"


class Lifecycle:
    """Tells systemd how the daemon is doing, keeps the watchdog fed, and ends an idle daemon."""

    def __init__(self, counts: Counts, on_idle: Callable[[], None], idle_exit: float = 0.0) -> None:
        self.counts = counts
        self.on_idle = on_idle
        self.idle_exit = idle_exit
        self.status = ""
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._busy_at = 0.0
        self._stopping = False
        self._loop: asyncio.AbstractEventLoop | None = None

    def ready(self) -> None:
        """Call once the daemon can serve: READY=1, then the watchdog and the status/idle ticks start."""
        if self._stopping:  # a SIGTERM came first
            return
        loop = self._loop = asyncio.get_running_loop()
        self._busy_at = loop.time()
        self.status = status_text(*self.counts())
        notify("READY=1", "STATUS=" + self.status)
        interval = watchdog_interval()
        if interval is not None:
            log.debug("pinging the systemd watchdog every %.3g s", interval)
            self._ping(interval)
        if self.idle_exit > 0 or os.environ.get("NOTIFY_SOCKET"):
            tick = min(STATUS_TICK, self.idle_exit / 4) if self.idle_exit > 0 else STATUS_TICK
            self._tick(tick)

    def stopping(self, status: str) -> None:
        """STOPPING=1 with a last status line; no more pings or ticks."""
        self._stopping = True
        self.close()
        self.status = status
        notify("STOPPING=1", "STATUS=" + status)

    def close(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()

    def _later(self, name: str, delay: float, fn: Callable[[float], None]) -> None:
        assert self._loop is not None
        self._timers[name] = self._loop.call_later(delay, fn, delay)

    def _ping(self, interval: float) -> None:
        notify("WATCHDOG=1")
        self._later("watchdog", interval, self._ping)

    def _tick(self, tick: float) -> None:
        assert self._loop is not None
        rockers, clients = self.counts()
        text = status_text(rockers, clients)
        if text != self.status:
            self.status = text
            notify("STATUS=" + text)
        now = self._loop.time()
        if rockers or clients or self.idle_exit <= 0:
            self._busy_at = now
        elif now - self._busy_at >= self.idle_exit:
            log.info("no rockers and no clients for %g s: exiting (socket activation starts rockerd again on "
                     "the next connection)", self.idle_exit)
            self.stopping("idle, exiting")
            self.on_idle()
            return
        self._later("tick", tick, self._tick)
