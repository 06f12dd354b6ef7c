"""Where a rocker's writes land under its data dir.

    <app_data_dir>/upper/<D>          what the app wrote over host dir D (kept)
    <app_data_dir>/work/<slot>/<i>    overlayfs scratch of the overlay whose first dir
                                      is app_overlay_dirs[i], reused

Overlay dirs never nest, so mirroring D's path under upper/ cannot collide;
an overlay shared by several dirs (overlay_plan.py) over their ancestor A has
upper/<A> as its upper, so each dir's writes still land in upper/<D>.
Each live rocker holds its own work slot: overlayfs resets its work dir at
mount, so two live mounts must never share one (see workslots.py).
"""

from __future__ import annotations


def upper_root(data_dir: str) -> str:
    return f"{data_dir}/upper"


def upper_dir(data_dir: str, overlay_dir: str) -> str:
    return f"{data_dir}/upper{overlay_dir.rstrip('/')}"


def work_root(data_dir: str) -> str:
    return f"{data_dir}/work"


def work_dir(data_dir: str, slot: int, index: int) -> str:
    return f"{data_dir}/work/{slot}/{index}"
