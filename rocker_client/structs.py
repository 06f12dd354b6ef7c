"""RockerRequest and RockerResult: the seed's structs as Python values."""

from __future__ import annotations

from dataclasses import dataclass, field

from .errors import RockerErr

MAX_OVERLAY_DIRS = 16


@dataclass
class RockerRequest:
    """What to build. Defaults are those of the seed's ROCKER_request_new(): zeroes and no paths."""

    app_id: int = 0
    uid: int = 0
    gid: int = 0
    app_pkg_path: str = ""
    app_exec_dir: str = ""
    app_data_dir: str = ""
    app_overlay_dirs: list[str] = field(default_factory=list)

    def to_params(self) -> dict[str, object]:
        return {
            "app_id": self.app_id, "uid": self.uid, "gid": self.gid, "app_pkg_path": self.app_pkg_path,
            "app_exec_dir": self.app_exec_dir, "app_data_dir": self.app_data_dir,
            "app_overlay_dirs": list(self.app_overlay_dirs),
        }


@dataclass(frozen=True)
class RockerResult:
    """Every call returns one of these; failures are values, never exceptions.

    `detail` is not in the seed: a human-readable reason for a failure.
    """

    err_no: RockerErr = RockerErr.success
    app_pid: int = 0
    guard_pid: int = 0
    guard_pname: str = ""
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.err_no == RockerErr.success


def request_new() -> RockerRequest:
    """A blank request, as the seed's ROCKER_request_new(): zero ids, no paths, no overlays."""
    return RockerRequest()
