"""The resolv.conf a bridged rocker sees: the host's, or its upstreams when the host runs a local stub.

A stub on 127.0.0.x (systemd-resolved's 127.0.0.53, dnsmasq) answers only in
the host's network namespace; from a rocker's netns 127.0.0.53 is its own lo.
So nameservers on loopback are replaced by the stub's upstreams (resolved
keeps them in /run/systemd/resolve/resolv.conf), and the operator may name
the servers outright (rockerd --bridge-dns). The file is written once per
daemon and bind-mounted (a detached clone) over the rocker's /etc/resolv.conf.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

HOST = "/etc/resolv.conf"
RESOLVED_UPSTREAMS = "/run/systemd/resolve/resolv.conf"


def _read(path: str) -> list[str]:
    try:
        with open(path) as f:
            return f.read().splitlines()
    except OSError:
        return []


def _servers(lines: list[str]) -> list[str]:
    return [ln.split()[1] for ln in lines if ln.split()[:1] == ["nameserver"] and len(ln.split()) > 1]


def content(servers: Sequence[str] = (), host: str = HOST, upstreams: str = RESOLVED_UPSTREAMS) -> str:
    lines = _read(host)
    rest = [ln for ln in lines if ln.split()[:1] in (["search"], ["options"], ["domain"])]
    chosen = list(servers)
    if not chosen:
        chosen = [s for s in _servers(lines) if not s.startswith("127.") and s != "::1"]
        if len(chosen) < len(_servers(lines)):  # a local stub: ask what it asks
            chosen += [s for s in _servers(_read(upstreams)) if not s.startswith("127.") and s not in chosen]
    head = "# written by rockerd for rockers on its bridge (network bridge)\n"
    return head + "".join(f"nameserver {s}\n" for s in chosen) + "".join(f"{ln}\n" for ln in rest)


def write(path: str, servers: Sequence[str] = ()) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(content(servers))
    os.chmod(tmp, 0o644)
    os.rename(tmp, path)


def target() -> str:
    """Where to mount it: /etc/resolv.conf, or the file it links to (a mount cannot sit on a symlink).
    "" when there is none to cover (the rocker then has no resolver config, as on the host)."""
    real = os.path.realpath(HOST)
    return real if os.path.isfile(real) else ""
