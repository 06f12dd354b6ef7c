"""`rockerd`: arguments, the listening socket (socket activation or bind), the event loop."""

from __future__ import annotations

import argparse
import asyncio
import errno
import logging
import os
import signal
import socket
import stat
import sys
import time

from . import __version__, journal, kernel, sd
from .build import net, spawn
from .guard import guard_binary
from .service import RockerService, ServiceConfig
from .varlink.server import Limits, VarlinkServer

DEFAULT_SOCKET = "/run/rocker/rockerd.sock"
log = logging.getLogger("rockerd")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="rockerd", description="The rocker daemon: builds app sandboxes on request.")
    p.add_argument("--socket", default=DEFAULT_SOCKET, metavar="PATH",
                   help=f"unix socket to bind when not socket-activated (default {DEFAULT_SOCKET})")
    p.add_argument("--socket-mode", default="0660", metavar="MODE", help="mode of a socket we bind (octal)")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    p.add_argument("--max-message", type=int, default=Limits.max_message, metavar="BYTES")
    p.add_argument("--max-connections", type=int, default=Limits.max_connections)
    p.add_argument("--request-timeout", type=float, default=Limits.request_timeout, metavar="SEC")
    p.add_argument("--max-rockers", type=int, default=ServiceConfig.max_rockers)
    p.add_argument("--max-rockers-per-uid", type=int, default=ServiceConfig.max_rockers_per_uid)
    p.add_argument("--state-dir", default=ServiceConfig.state_dir, metavar="DIR",
                   help="where live rockers are recorded so a restarted rockerd re-adopts them (tmpfs)")
    p.add_argument("--first-entry-timeout", type=float, default=ServiceConfig.first_entry_timeout, metavar="SEC",
                   help="tear a rocker down when nobody entered it within this time")
    p.add_argument("--warm-mib", type=float, default=ServiceConfig.warm_budget / (1 << 20), metavar="MIB",
                   help="when a package is mounted, read up to this much of its executables ahead on another "
                        "thread, so its first rocker's app starts warm; 0 turns it off")
    p.add_argument("--idle-exit", type=float, default=0.0, metavar="SEC",
                   help="exit after SEC seconds with no live rockers and no clients (for socket activation: "
                        "systemd starts rockerd again on the next connection); 0, the default, never exits")
    args = p.parse_args(argv)
    if args.idle_exit < 0:
        p.error("--idle-exit must be 0 (never) or a number of seconds")
    if args.warm_mib < 0:
        p.error("--warm-mib must be 0 (off) or a size in MiB")
    return args


def activated_listener() -> socket.socket | None:
    """The socket systemd passed us (LISTEN_FDS), if any."""
    if not os.environ.get("LISTEN_FDS"):
        return None
    from systemd import daemon

    fds = daemon.listen_fds()
    if not fds:
        return None
    for extra in fds[1:]:
        os.close(extra)
    return socket.socket(fileno=fds[0])


def bind_listener(path: str, mode: int) -> socket.socket:
    os.makedirs(os.path.dirname(path) or ".", mode=0o755, exist_ok=True)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        pass
    else:
        if not stat.S_ISSOCK(st.st_mode):
            raise SystemExit(f"rockerd: {path} exists and is not a socket; remove it or pick another --socket")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(path)
        except OSError:
            os.unlink(path)  # a stale socket of a daemon that is gone
        else:
            raise SystemExit(f"rockerd: another daemon is already serving {path}")
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    sock.bind(path)
    os.chmod(path, mode)
    sock.listen(512)
    return sock


def check_mount_namespace() -> None:
    """Guards copy the daemon's mount view: a private namespace would hide host mounts from them."""
    try:
        if os.readlink("/proc/self/ns/mnt") != os.readlink("/proc/1/ns/mnt"):
            log.warning("rockerd runs in a mount namespace other than PID 1's: rockers will see its view, "
                        "not the host's (drop ProtectSystem=/PrivateTmp= and the like from the unit)")
    except OSError:
        pass


def install_test_hooks(loop: asyncio.AbstractEventLoop) -> None:
    """ROCKERD_TEST_HOOKS=1 (set only by the tests' unit drop-in): SIGUSR2 wedges the event loop."""

    def wedge() -> None:
        log.warning("test hook: SIGUSR2 blocks the event loop (the watchdog should end this)")
        time.sleep(3600)

    loop.add_signal_handler(signal.SIGUSR2, wedge)


async def serve(listener: socket.socket, args: argparse.Namespace, guard_fd: int) -> None:
    service = RockerService(guard_fd, ServiceConfig(
        max_rockers=args.max_rockers, max_rockers_per_uid=args.max_rockers_per_uid,
        first_entry_timeout=args.first_entry_timeout, state_dir=args.state_dir,
        warm_budget=int(args.warm_mib * (1 << 20))))
    server = VarlinkServer(
        vendor="rocker", product="rockerd", version=__version__, url="https://github.com/rocker-sandbox/rocker",
        interfaces=[service.interface()], log=logging.getLogger("rockerd.varlink"),
        limits=Limits(max_message=args.max_message, max_connections=args.max_connections,
                      request_timeout=args.request_timeout),
        protocol_error="io.rocker.Rocker.ProtocolViolation")
    life = sd.Lifecycle(lambda: (len(service.registry), server.connections), server.close, args.idle_exit)

    def stop(signame: str) -> None:
        log.info("%s: stopping", signame)
        life.stopping(f"stopping, {sd.plural(len(service.registry), 'rocker')} left running")
        server.close()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop, sig.name)
    if os.environ.get("ROCKERD_TEST_HOOKS") == "1":
        install_test_hooks(loop)
    serving = asyncio.create_task(server.serve(listener))
    await asyncio.sleep(0)  # serve() now watches the listener
    if not serving.done():
        log.info("rockerd %s serving %s", __version__, listener.getsockname() or "an activated socket")
        life.ready()  # after any re-adoption (in RockerService()), with the listener watched
    try:
        await serving
    finally:
        life.close()
    log.info("rockerd stopped; %d live rockers keep running", len(service.registry))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    journal.setup(args.log_level)
    if os.geteuid() != 0:
        print("rockerd: must run as root (it builds namespaces and mounts)", file=sys.stderr)
        return 1
    os.setgroups([])  # guards are cloned from us: no supplementary group may leak into a rocker
    check_mount_namespace()
    try:
        kernel.set_current(kernel.probe(os.environ.get(kernel.FORCE_ENV)))
    except kernel.Unsupported as e:
        log.error("rockerd cannot run here: %s", e)
        print(f"rockerd: {e}", file=sys.stderr)
        return 1
    log.info("%s", kernel.current().summary())
    try:
        guard_fd = os.open(guard_binary(), os.O_PATH | os.O_CLOEXEC)
        spawn.load()
        net.load()
    except OSError as e:
        print(f"rockerd: cannot load the guard or its spawner: {e}", file=sys.stderr)
        return 1
    listener = activated_listener()
    bound = None
    if listener is None:
        try:
            listener = bind_listener(args.socket, int(args.socket_mode, 8))
        except OSError as e:
            print(f"rockerd: cannot listen on {args.socket}: {e.strerror}", file=sys.stderr)
            return 1 if e.errno != errno.EADDRINUSE else 2
        bound = args.socket
    try:
        asyncio.run(serve(listener, args, guard_fd))
    finally:
        listener.close()
        if bound:
            try:
                os.unlink(bound)
            except OSError:
                pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
