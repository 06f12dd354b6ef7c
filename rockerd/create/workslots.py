"""Overlay work dirs, reused: each live rocker holds one slot of its data dir exclusively.

overlayfs resets a work dir when it mounts, so a work dir needs no cleaning
between rockers, only exclusivity while one is live. Rockers on one data dir
share its overlays (datashare.py), and so one slot, which goes (dir and all)
when the last of them ends: a data dir holds at most as many slots as it had
sets of overlays live at once, and none once no rocker uses it. Reusing slots instead of
making and removing per-rocker dirs takes a handful of mkdirs off every create
and an rmtree (journal commits) off the event loop at every end.
"""

from __future__ import annotations

import threading


class WorkSlots:
    def __init__(self) -> None:
        self._busy: dict[str, set[int]] = {}
        self._lock = threading.Lock()  # taken on the dir steps' threads, given back on the loop

    def take(self, data_dir: str) -> int:
        with self._lock:
            busy = self._busy.setdefault(data_dir, set())
            slot = 0
            while slot in busy:
                slot += 1
            busy.add(slot)
            return slot

    def hold(self, data_dir: str, slot: int) -> None:
        """Mark a slot busy that an adopted rocker already uses."""
        with self._lock:
            self._busy.setdefault(data_dir, set()).add(slot)

    def give_back(self, data_dir: str, slot: int) -> None:
        with self._lock:
            busy = self._busy.get(data_dir)
            if busy is not None:
                busy.discard(slot)
                if not busy:
                    del self._busy[data_dir]
