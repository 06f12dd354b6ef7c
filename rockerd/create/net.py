"""The daemon's own netns fd, opened at start (rockerd/network/netns.py): a bridged rocker's
network job steps in and out of the rocker's netns with it. lo is brought up by the guard's
child, from inside (rockerd/guard/rocker-spawn.c)."""

from ..network.netns import load

__all__ = ["load"]
