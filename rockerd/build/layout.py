"""Where a rocker's writes land under its data dir.

    <app_data_dir>/upper/<D>          what the app wrote over host dir D (kept)
    <app_data_dir>/work/<guard name>/<i>   overlayfs scratch of one live rocker,
                                      removed when the rocker ends

Overlay dirs never nest, so mirroring D's path under upper/ cannot collide.
Each live rocker gets its own work dirs: overlayfs resets its work dir at
mount, so two live mounts must never share one.
"""

from __future__ import annotations


def upper_root(data_dir: str) -> str:
    return f"{data_dir}/upper"


def upper_dir(data_dir: str, overlay_dir: str) -> str:
    return f"{data_dir}/upper{overlay_dir}"


def work_root(data_dir: str) -> str:
    return f"{data_dir}/work"


def work_base(data_dir: str, guard_name: str) -> str:
    return f"{data_dir}/work/{guard_name}"


def work_dir(data_dir: str, guard_name: str, index: int) -> str:
    return f"{data_dir}/work/{guard_name}/{index}"
