"""Where a rocker's writes land under its data dir.

    <app_data_dir>/upper/<D>          what the app wrote over host dir D (kept)
    <app_data_dir>/work/<slot>/<i>    overlayfs scratch of the overlay whose first dir
                                      is app_overlay_dirs[i], reused

Overlay dirs never nest, so mirroring D's path under upper/ cannot collide;
an overlay shared by several dirs (overlay_plan.py) over their ancestor A has
upper/<A> as its upper, so each dir's writes still land in upper/<D>.
Each live rocker holds its own work slot: overlayfs resets its work dir at
mount, so two live mounts must never share one (see workslots.py).

Ownership (docs/security.md): upper/<D> has D's owner, group and mode (less
set-id bits), as the app sees D through it; every other dir rockerd makes
here (upper/, the dirs on the way to each upper/<D>, work/...) belongs to
the data dir's owner, who can therefore remove the whole data dir.
The *_rel forms are relative to the data dir (rockerd walks from its fd).
"""

from __future__ import annotations

UPPER = "upper"
WORK = "work"


def upper_rel(overlay_dir: str) -> str:
    return f"{UPPER}{overlay_dir.rstrip('/')}"


def work_rel(slot: int, index: int) -> str:
    return f"{WORK}/{slot}/{index}"
