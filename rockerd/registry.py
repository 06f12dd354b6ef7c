"""Live rockers, each followed through a pidfd (never by PID number alone)."""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from . import names
from .request import RockerRequestModel
from .state import Record


@dataclass(kw_only=True)
class Rocker:
    """A live rocker: the request it was built for, as one value, and what the daemon adds."""

    name: str
    pid: int
    pidfd: int
    request: RockerRequestModel
    caller_uid: int
    created: float = field(default_factory=time.time)
    started: float = field(default_factory=time.monotonic)
    pkg_key: tuple[int, int, int, int] | None = None  # its share of the package mount (None when adopted)
    work_slot: int = 0  # its overlay work dirs under the data dir (workslots.py)

    @property
    def uid(self) -> int:
        return self.request.uid

    def info(self) -> dict[str, object]:
        """A RockerInfo of the interface: the runtime fields and the request's."""
        return {"guard_pid": self.pid, "guard_pname": self.name, "created": self.created,
                "caller_uid": self.caller_uid, **self.request.model_dump()}

    def record(self, starttime: int) -> Record:
        """What a restarted rockerd needs to adopt it; `starttime` tells a reused PID apart."""
        return Record(name=self.name, pid=self.pid, starttime=starttime, caller_uid=self.caller_uid,
                      created=self.created, work_slot=self.work_slot, request=self.request.model_dump())


ExitCallback = Callable[[Rocker, int], None]


class Registry:
    """Names are reserved from the start of a build, so concurrent builds never share one."""

    def __init__(self, on_exit: ExitCallback) -> None:
        self._live: dict[str, Rocker] = {}
        self._per_uid: Counter[int] = Counter()  # kept, not counted: the limit check is on the request path
        self._reserved: set[str] = set()
        self._on_exit = on_exit

    def reserve_name(self) -> str:
        name = names.new_name(self)
        self._reserved.add(name)
        return name

    def release_name(self, name: str) -> None:
        self._reserved.discard(name)

    def __contains__(self, name: object) -> bool:
        return name in self._live or name in self._reserved

    def add(self, rocker: Rocker) -> None:
        self._reserved.discard(rocker.name)
        self._live[rocker.name] = rocker
        self._per_uid[rocker.uid] += 1
        asyncio.get_running_loop().add_reader(rocker.pidfd, self._exited, rocker)

    def get(self, name: str) -> Rocker | None:
        return self._live.get(name)

    def __iter__(self) -> Iterator[Rocker]:
        return iter(list(self._live.values()))

    def __len__(self) -> int:
        return len(self._live)

    def count_for_uid(self, uid: int) -> int:
        return self._per_uid[uid]

    def _exited(self, rocker: Rocker) -> None:
        asyncio.get_running_loop().remove_reader(rocker.pidfd)
        status = 0
        try:
            res = os.waitid(os.P_PIDFD, rocker.pidfd, os.WEXITED | os.WNOHANG)
            status = res.si_status if res is not None else 0
        except ChildProcessError:  # not our child (adopted) or already collected
            pass
        os.close(rocker.pidfd)
        rocker.pidfd = -1
        del self._live[rocker.name]
        self._per_uid[rocker.uid] -= 1
        if not self._per_uid[rocker.uid]:
            del self._per_uid[rocker.uid]
        self._on_exit(rocker, status)
