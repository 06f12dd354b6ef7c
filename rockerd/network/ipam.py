"""The bridge subnet's addresses, handed out in memory (the state records keep them across restarts)."""

from __future__ import annotations

import errno
from ipaddress import IPv4Address, IPv4Network


class PoolExhausted(OSError):
    pass


class Pool:
    """Next-fit over the subnet: .1 is the bridge (the rockers' gateway), the rest are the rockers'.

    Next-fit rather than lowest-free, so an address just freed is not handed out
    again at once (a peer's ARP cache or conntrack entry could still name it)."""

    def __init__(self, net: IPv4Network) -> None:
        if net.prefixlen > 29:
            raise ValueError(f"bridge subnet {net} is too small (at most /29)")
        self.net = net
        self.gateway = net.network_address + 1
        self._first, self._last = int(net.network_address) + 2, int(net.broadcast_address) - 1
        self._next = self._first
        self.owner: dict[IPv4Address, str] = {}

    def allocate(self, name: str) -> IPv4Address:
        size = self._last - self._first + 1
        for i in range(size):
            cand = IPv4Address(self._first + (self._next - self._first + i) % size)
            if cand not in self.owner:
                self.owner[cand] = name
                self._next = int(cand) + 1 if int(cand) < self._last else self._first
                return cand
        raise PoolExhausted(errno.EADDRNOTAVAIL, f"all {size} addresses of {self.net} are in use")

    def hold(self, name: str, address: IPv4Address) -> None:
        """Take `address` for `name` (a re-adopted rocker): it must be ours to give and free."""
        if not (self._first <= int(address) <= self._last):
            raise ValueError(f"{address} is not in the pool of {self.net}")
        if self.owner.get(address, name) != name:
            raise ValueError(f"{address} is already {self.owner[address]}'s")
        self.owner[address] = name

    def release(self, address: IPv4Address) -> None:
        self.owner.pop(address, None)

    def __len__(self) -> int:
        return len(self.owner)
