"""`lo` up in a rocker's netns: rockerd/network/netns.py (kept here for the build's imports)."""

from ..network.netns import load, loopback_up

__all__ = ["load", "loopback_up"]
