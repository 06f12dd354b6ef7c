"""rocker's own nftables table, `ip rocker`, written with small netlink messages of our own.

Nothing of the host's ruleset is read or changed: the table is ours alone
(masquerade of the bridge subnet, DNAT of published ports), made when the
first bridged rocker needs it and deleted, whole, when rockerd stops with no
bridged rocker left. Each published port is one rule per hook, tagged with
its rocker's name (rule userdata) so a release finds exactly its own rules.
A change is one nfnetlink batch: the kernel applies all of it or none.
"""

from __future__ import annotations

import errno
import socket
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network

from rocker_sys.libc import SyscallError

from .nlmsg import error_of, messages

TABLE = "rocker"
NFPROTO_IPV4 = 2
NFNL_SUBSYS_NFTABLES = 10
NFNL_MSG_BATCH_BEGIN, NFNL_MSG_BATCH_END = 16, 17
NEWTABLE, GETTABLE, DELTABLE, NEWCHAIN, NEWRULE, GETRULE, DELRULE = 0, 1, 2, 3, 6, 7, 8
F_REQUEST, F_ACK, F_EXCL, F_CREATE, F_APPEND, F_DUMP = 0x1, 0x4, 0x200, 0x400, 0x800, 0x300
NLMSG_ERROR, NLMSG_DONE = 2, 3
NESTED = 0x8000
HOOK_PREROUTING, HOOK_OUTPUT, HOOK_POSTROUTING = 0, 3, 4
META_IIFNAME, META_OIFNAME, META_L4PROTO = 6, 7, 16
RTN_LOCAL = 2
PROTO = {"tcp": socket.IPPROTO_TCP, "udp": socket.IPPROTO_UDP}


# ---- netlink attributes ----

def attr(kind: int, payload: bytes) -> bytes:
    head = struct.pack("=HH", 4 + len(payload), kind)
    return head + payload + b"\0" * (-len(payload) % 4)


def nest(kind: int, *parts: bytes) -> bytes:
    return attr(kind | NESTED, b"".join(parts))


def be32(kind: int, value: int) -> bytes:
    return attr(kind, struct.pack(">I", value))


def string(kind: int, value: str) -> bytes:
    return attr(kind, value.encode() + b"\0")


def parse_attrs(data: bytes) -> dict[int, bytes]:
    out, off = {}, 0
    while off + 4 <= len(data):
        length, kind = struct.unpack_from("=HH", data, off)
        if length < 4:
            break
        out[kind & ~NESTED] = data[off + 4:off + length]
        off += (length + 3) & ~3
    return out


# ---- expressions ----

def expr(name: str, *data: bytes) -> bytes:
    return nest(1, string(1, name), nest(2, *data))  # NFTA_LIST_ELEM { NFTA_EXPR_NAME, NFTA_EXPR_DATA }


def _data(kind: int, value: bytes) -> bytes:
    return nest(kind, attr(1, value))  # NFTA_DATA_VALUE


def payload(base: int, offset: int, length: int, reg: int = 1) -> bytes:
    return expr("payload", be32(1, reg), be32(2, base), be32(3, offset), be32(4, length))


def cmp(value: bytes, eq: bool = True, reg: int = 1) -> bytes:
    return expr("cmp", be32(1, reg), be32(2, 0 if eq else 1), _data(3, value))


def bitwise(mask: bytes, reg: int = 1) -> bytes:
    return expr("bitwise", be32(1, reg), be32(2, reg), be32(3, len(mask)), _data(4, mask),
                _data(5, b"\0" * len(mask)))


def meta(key: int, reg: int = 1) -> bytes:
    return expr("meta", be32(1, reg), be32(2, key))


def immediate(value: bytes, reg: int) -> bytes:
    return expr("immediate", be32(1, reg), _data(2, value))


def in_net(offset: int, net: IPv4Network, eq: bool = True) -> list[bytes]:
    """ip saddr (offset 12) or daddr (16) [!]= net."""
    return [payload(1, offset, 4), bitwise(net.netmask.packed), cmp(net.network_address.packed, eq)]


def ifname(key: int, name: str) -> list[bytes]:
    return [meta(key), cmp(name.encode().ljust(16, b"\0"))]


def dest_local() -> list[bytes]:
    """fib daddr type local: traffic to one of this host's addresses, whichever."""
    return [expr("fib", be32(1, 1), be32(2, 3), be32(3, 1 << 1)), cmp(struct.pack("=I", RTN_LOCAL))]


def dnat_port(proto: str, host_port: int, address: IPv4Address, port: int) -> list[bytes]:
    return [meta(META_L4PROTO), cmp(bytes([PROTO[proto]])),
            payload(2, 2, 2), cmp(struct.pack(">H", host_port)),
            immediate(address.packed, 1), immediate(struct.pack(">H", port), 2),
            expr("nat", be32(1, 1), be32(2, NFPROTO_IPV4), be32(3, 1), be32(5, 2))]


# ---- messages ----

def _msg(kind: int, flags: int, seq: int, body: bytes, family: int = NFPROTO_IPV4) -> bytes:
    nfgen = struct.pack("=BBH", family, 0, 0)
    return struct.pack("=LHHLL", 16 + 4 + len(body), (NFNL_SUBSYS_NFTABLES << 8) | kind, flags, seq, 0) + nfgen + body


def _batch_marker(kind: int, seq: int) -> bytes:
    nfgen = struct.pack("=BBH", 0, 0, socket.htons(NFNL_SUBSYS_NFTABLES))
    return struct.pack("=LHHLL", 20, kind, F_REQUEST, seq, 0) + nfgen


@dataclass(frozen=True)
class Chain:
    name: str
    hook: int
    priority: int
    kind: str = "nat"


CHAINS = (Chain("prerouting", HOOK_PREROUTING, -100), Chain("output", HOOK_OUTPUT, -100),
          Chain("postrouting", HOOK_POSTROUTING, 100))


class Nft:
    """A NETLINK_NETFILTER socket; each call is one batch, checked message by message."""

    def __init__(self, table: str = TABLE) -> None:
        self.table = table
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, 12)  # NETFILTER
        self.seq = 0

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Nft:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _next(self) -> int:
        self.seq += 1
        return self.seq

    def batch(self, what: str, msgs: Iterable[tuple[int, int, bytes]]) -> None:
        """(type, flags, body) messages applied as one transaction; SyscallError names `what`."""
        seqs = []
        data = _batch_marker(NFNL_MSG_BATCH_BEGIN, self._next())
        for kind, flags, body in msgs:
            seq = self._next()
            seqs.append(seq)
            data += _msg(kind, flags | F_REQUEST | F_ACK, seq, body)
        data += _batch_marker(NFNL_MSG_BATCH_END, self._next())
        self.sock.send(data)
        pending, first = set(seqs), 0
        while pending:
            buf = self.sock.recv(1 << 16)
            for kind, seq, off, _ in messages(buf):
                if kind == NLMSG_ERROR:
                    err = error_of(buf, off)
                    if err and not first:
                        first = -err
                    if err:
                        pending.clear()  # the transaction is aborted: no more acks come
                    pending.discard(seq)
        if first:
            raise SyscallError(first, "nfnetlink", what)

    def table_exists(self) -> bool:
        self.sock.send(_msg(GETTABLE, F_REQUEST | F_ACK, self._next(), string(1, self.table)))
        buf = self.sock.recv(1 << 16)
        exists = struct.unpack_from("=H", buf, 4)[0] != NLMSG_ERROR
        if exists:
            self.sock.recv(1 << 16)  # the ack that follows the table
        return exists

    def create(self, subnet: IPv4Network, bridge: str) -> None:
        """The table, its three nat chains and the masquerade rules, in one transaction."""
        msgs = [(NEWTABLE, F_CREATE | F_EXCL, string(1, self.table))]
        for c in CHAINS:
            hook = nest(4, be32(1, c.hook), be32(2, c.priority & 0xFFFFFFFF))
            body = string(1, self.table) + string(3, c.name) + hook
            msgs.append((NEWCHAIN, F_CREATE, body + string(7, c.kind)))
        masq = expr("masq")
        # the bridge's traffic to anywhere else leaves with the host's address
        msgs.append(self._rule("postrouting", [*in_net(12, subnet), *in_net(16, subnet, eq=False), masq]))
        # the host's own connections to a published port on 127.0.0.1 reach the rocker from the bridge's address
        msgs.append(self._rule("postrouting", [*ifname(META_OIFNAME, bridge),
                                               *in_net(12, IPv4Network("127.0.0.0/8")), masq]))
        self.batch(f"create table ip {self.table}", msgs)

    def delete(self) -> bool:
        """Delete the table and all in it; False if there was none."""
        try:
            self.batch(f"delete table ip {self.table}", [(DELTABLE, 0, string(1, self.table))])
        except SyscallError as e:
            if e.errno == errno.ENOENT:
                return False
            raise
        return True

    def _rule(self, chain: str, exprs: list[bytes], tag: str = "") -> tuple[int, int, bytes]:
        body = string(1, self.table) + string(2, chain) + nest(4, *exprs)
        if tag:
            body += attr(7, tag.encode())  # NFTA_RULE_USERDATA
        return NEWRULE, F_CREATE | F_APPEND, body

    def publish(self, tag: str, ports: list[tuple[int, int, str]], address: IPv4Address) -> None:
        """DNAT of each (host port, port, proto) to `address`, from outside and from the host itself."""
        msgs = []
        for host_port, port, proto in ports:
            rule = [*dest_local(), *dnat_port(proto, host_port, address, port)]
            msgs += [self._rule("prerouting", rule, tag), self._rule("output", rule, tag)]
        self.batch(f"publish ports of {tag}", msgs)

    def unpublish(self, tag: str) -> int:
        """Delete the rules tagged `tag`; returns how many."""
        handles = [(chain, h) for chain, h, t in self.rules() if t == tag.encode()]
        if handles:
            self.batch(f"unpublish ports of {tag}", [
                (DELRULE, 0, string(1, self.table) + string(2, chain) + attr(3, struct.pack(">Q", h)))
                for chain, h in handles])
        return len(handles)

    def tables(self) -> list[tuple[int, str]]:
        """(family, name) of every nftables table of this netns (the tests' leak check)."""
        return [(fam, a[1].rstrip(b"\0").decode()) for fam, a in self._dump(GETTABLE, b"", family=0)]

    def rules(self) -> list[tuple[str, int, bytes]]:
        """(chain, handle, tag) of every rule in our table."""
        return [(a[2].rstrip(b"\0").decode(), struct.unpack(">Q", a[3])[0], a.get(7, b""))
                for _, a in self._dump(GETRULE, string(1, self.table))
                if a.get(1, b"").rstrip(b"\0").decode() == self.table]

    def _dump(self, kind: int, body: bytes, family: int = NFPROTO_IPV4) -> list[tuple[int, dict[int, bytes]]]:
        self.sock.send(_msg(kind, F_REQUEST | F_DUMP, self._next(), body, family))
        out: list[tuple[int, dict[int, bytes]]] = []
        while True:
            buf = self.sock.recv(1 << 20)
            for mtype, _, off, length in messages(buf):
                if mtype == NLMSG_DONE:
                    return out
                if mtype == NLMSG_ERROR:
                    err = error_of(buf, off)
                    if err == -errno.ENOENT:
                        return out
                    raise SyscallError(-err, "nfnetlink", "dump")
                out.append((buf[off + 16], parse_attrs(buf[off + 20:off + length])))
