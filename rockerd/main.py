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
from ipaddress import IPv4Address, IPv4Network

from rocker_client.wire import DEFAULT_SOCKET

from . import __version__, journal, kernel, sd
from .cgroups.options import add_cgroup_options, limit_policy
from .create import net, spawn
from .guard import guard_binary
from .network import DEFAULT_BRIDGE, DEFAULT_SUBNET, MODES, NetConfig
from .service import RockerService, ServiceConfig
from .varlink.server import Limits, VarlinkServer

log = logging.getLogger("rockerd")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="rockerd", description="The rocker daemon: builds app sandboxes on request.")
    p.add_argument("--socket", default=DEFAULT_SOCKET, metavar="PATH",
                   help=f"unix socket to bind when not socket-activated (default {DEFAULT_SOCKET})")
    p.add_argument("--socket-mode", default="0660", metavar="MODE", help="mode of a socket we bind (octal)")
    p.add_argument("--socket-group", metavar="GROUP", type=_group,
                   help="group (name or number) of a socket we bind, as SocketGroup= does under systemd; "
                        "its members may connect when --socket-mode gives the group rw (default: root)")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    p.add_argument("--max-message", type=int, default=Limits.max_message, metavar="BYTES")
    p.add_argument("--max-connections", type=int, default=Limits.max_connections, metavar="N",
                   help="client connections at once, in all (default %(default)s)")
    p.add_argument("--root-connections", type=int, default=Limits.root_connections, metavar="N",
                   help="of those, kept for root: other uids are refused when only these are left "
                        "(default %(default)s)")
    p.add_argument("--max-connections-per-uid", type=int, default=Limits.max_connections_per_uid, metavar="N",
                   help="connections at once of one uid other than root (default %(default)s)")
    p.add_argument("--max-calls-per-uid", type=int, default=Limits.max_calls_per_uid, metavar="N",
                   help="calls being handled at once for one uid other than root, over all its connections; "
                        "more get LimitReached (default %(default)s)")
    p.add_argument("--request-timeout", type=float, default=Limits.request_timeout, metavar="SEC",
                   help="time from a request's first byte to its last, and to read a reply (default %(default)s)")
    p.add_argument("--idle-timeout", type=float, default=Limits.idle_timeout, metavar="SEC",
                   help="a connection with no request under way is closed after this (default %(default)s)")
    p.add_argument("--max-connection-life", type=float, default=Limits.max_connection_life, metavar="SEC",
                   help="a connection is closed after this, once no call is under way (default %(default)s)")
    p.add_argument("--allow-nested-callers", action="store_true",
                   help="serve io.rocker.Rocker calls from processes in another user or PID namespace than "
                        "rockerd's (apps inside rockers, containers); refused by default")
    p.add_argument("--max-rockers", type=int, default=ServiceConfig.max_rockers)
    p.add_argument("--max-rockers-per-uid", type=int, default=ServiceConfig.max_rockers_per_uid)
    p.add_argument("--state-dir", default=ServiceConfig.state_dir, metavar="DIR",
                   help="where live rockers are recorded so a restarted rockerd re-adopts them (tmpfs)")
    p.add_argument("--first-entry-timeout", type=float, default=ServiceConfig.first_entry_timeout, metavar="SEC",
                   help="tear a rocker down when nobody entered it within this time")
    p.add_argument("--warm-mib", type=float, default=ServiceConfig.warm_budget / (1 << 20), metavar="MIB",
                   help="when a package is mounted, read up to this much of its executables ahead on another "
                        "thread, so its first rocker's app starts warm; 0 turns it off")
    p.add_argument("--spare-guards", type=_count, default=ServiceConfig.spare_guards, metavar="N",
                   help="after a Create, start the guard of the next one like it ahead, off the reply's path; "
                        "keep at most N such spare guards, one per app uid, gid, network and caller "
                        "(default %(default)s; 0 turns them off)")
    p.add_argument("--default-network", default="none", choices=MODES,
                   help="the network of a rocker whose request names none (default %(default)s)")
    p.add_argument("--bridge-subnet", type=_subnet, default=DEFAULT_SUBNET, metavar="CIDR",
                   help="IPv4 subnet of the bridge for --network bridge; .1 is the bridge (default %(default)s)")
    p.add_argument("--bridge-name", default=DEFAULT_BRIDGE, metavar="NAME",
                   help="the bridge's interface name (default %(default)s; its nftables table: ip rocker)")
    p.add_argument("--bridge-dns", action="append", default=[], metavar="ADDR",
                   help="a nameserver for bridged rockers; repeatable (default: the host's resolv.conf, with "
                        "the upstreams of a 127.0.0.x stub in its place)")
    p.add_argument("--idle-exit", type=float, default=0.0, metavar="SEC",
                   help="exit after SEC seconds with no live rockers and no clients (for socket activation: "
                        "systemd starts rockerd again on the next connection); 0, the default, never exits")
    p.add_argument("--data-linger", type=float, default=ServiceConfig.data_linger, metavar="SEC",
                   help="a data dir's overlays and work dir outlive its last rocker this long, so that the next "
                        "rocker on it with the same overlay dirs and ids reuses them (default %(default)s); "
                        "0 ends them with the last rocker")
    add_cgroup_options(p)
    args = p.parse_args(argv)
    try:
        limits(args).check()
    except ValueError:
        p.error("connection limits must be positive, and --root-connections below --max-connections")
    if args.idle_exit < 0:
        p.error("--idle-exit must be 0 (never) or a number of seconds")
    for addr in args.bridge_dns:
        try:
            IPv4Address(addr)
        except ValueError:
            p.error(f"--bridge-dns {addr}: not an IPv4 address")
    if len(args.bridge_name.encode()) > 15 or not args.bridge_name.isprintable() or "/" in args.bridge_name:
        p.error("--bridge-name: at most 15 bytes, no '/'")
    if args.warm_mib < 0:
        p.error("--warm-mib must be 0 (off) or a size in MiB")
    if not args.data_linger >= 0:
        p.error("--data-linger must be 0 (off) or a number of seconds")
    return args


def limits(args: argparse.Namespace) -> Limits:
    return Limits(max_message=args.max_message, max_connections=args.max_connections,
                  root_connections=args.root_connections, max_connections_per_uid=args.max_connections_per_uid,
                  max_calls_per_uid=args.max_calls_per_uid, request_timeout=args.request_timeout,
                  idle_timeout=args.idle_timeout, max_connection_life=args.max_connection_life)


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


def _subnet(text: str) -> IPv4Network:
    try:
        net = IPv4Network(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    if net.prefixlen > 29:
        raise argparse.ArgumentTypeError(f"{net} is too small: at most /29")
    return net


def _count(text: str) -> int:
    if not text.isdigit() or int(text) > 64:
        raise argparse.ArgumentTypeError(f"{text!r}: a count from 0 to 64")
    return int(text)


def _group(text: str) -> int:
    import grp

    if text.isdigit():
        return int(text)
    try:
        return grp.getgrnam(text).gr_gid
    except KeyError:
        raise argparse.ArgumentTypeError(f"no group called {text!r}") from None


def bind_listener(path: str, mode: int, gid: int = 0) -> socket.socket:
    """Bind in a private dir beside `path`, set owner and mode there, then rename into place:
    the socket never exists at `path` with other permissions, and no name another user could
    swap is chowned or chmodded."""
    parent = os.path.dirname(path) or "."
    os.makedirs(parent, mode=0o755, exist_ok=True)
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
    import tempfile

    private = tempfile.mkdtemp(prefix=".rockerd-bind-", dir=parent)  # 0700, ours
    staged = os.path.join(private, "sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        sock.bind(staged)
        os.chown(staged, 0, gid)
        os.chmod(staged, mode)
        sock.listen(512)
        os.rename(staged, path)
    except BaseException:
        sock.close()
        raise
    finally:
        if os.path.exists(staged):
            os.unlink(staged)
        os.rmdir(private)
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


async def serve(listener: socket.socket, args: argparse.Namespace, guard_fd: int, where: str) -> None:
    service = RockerService(guard_fd, ServiceConfig(
        max_rockers=args.max_rockers, max_rockers_per_uid=args.max_rockers_per_uid,
        first_entry_timeout=args.first_entry_timeout, state_dir=args.state_dir,
        warm_budget=int(args.warm_mib * (1 << 20)), allow_nested_callers=args.allow_nested_callers,
        network=NetConfig(args.default_network, args.bridge_subnet, args.bridge_name, tuple(args.bridge_dns),
                          os.path.abspath(args.state_dir) + "-net"),
        cgroups=args.cgroups, cgroup_parent=args.cgroup_parent, limit_policy=limit_policy(args),
        spare_guards=args.spare_guards,
        data_linger=args.data_linger))
    server = VarlinkServer(
        vendor="rocker", product="rockerd", version=__version__, url="https://github.com/rocker-sandbox/rocker",
        interfaces=[service.interface()], log=logging.getLogger("rockerd.varlink"),
        limits=limits(args), protocol_error="io.rocker.Rocker.ProtocolViolation",
        limit_error="io.rocker.Rocker.LimitReached")
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
        log.info("rockerd %s serving %s", __version__, where)
        life.ready()  # after any re-adoption (in RockerService()), with the listener watched
    try:
        await serving
    finally:
        life.close()
        await service.spares.close()  # before the network and cgroups: they hold an address and a cgroup each
        await end_lingering(service)
        service.network.close()
        service.cgroups.flush()  # rockers that ended just now: their cgroups go with us, not at the next start
    log.info("rockerd stopped; %d live rockers keep running", len(service.registry))


async def end_lingering(service: RockerService, timeout: float = 30.0) -> None:
    """The data dirs whose overlays linger after their last rocker are cleared before rockerd exits
    (overlays dropped, work slots removed): nothing of theirs is left for the next start."""
    ending = service.shares.stop()
    if ending:
        done, _ = await asyncio.wait([asyncio.wrap_future(f) for f in ending], timeout=timeout)
        if len(done) < len(ending):
            log.warning("%d data dirs were still being cleared after %g s", len(ending) - len(done), timeout)


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
            listener = bind_listener(args.socket, int(args.socket_mode, 8), args.socket_group or 0)
        except OSError as e:
            print(f"rockerd: cannot listen on {args.socket}: {e.strerror}", file=sys.stderr)
            return 1 if e.errno != errno.EADDRINUSE else 2
        bound = args.socket
    try:
        asyncio.run(serve(listener, args, guard_fd, bound or listener.getsockname() or "an activated socket"))
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
