"""rocker_client: ask rockerd for a rocker and run an app in it (the seed's API, in Python)."""

# The names below are imported on first use (PEP 562), so that `import rocker_client.cli` or
# `rocker_client.wire` does not pay for the rest: the CLI's start time (issue 21).

from __future__ import annotations

from importlib import import_module

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .enter import enter_rocker, join_rocker
    from .errors import RockerErr
    from .execapp import Exec
    from .guardname import get_guardname
    from .structs import RockerRequest, RockerResult, request_new
    from .wire import default_socket_path

_WHERE = {"enter_rocker": "enter", "join_rocker": "enter", "RockerErr": "errors", "Exec": "execapp",
          "get_guardname": "guardname", "RockerRequest": "structs", "RockerResult": "structs",
          "request_new": "structs", "default_socket_path": "wire"}

__all__ = ["Exec", "RockerErr", "RockerRequest", "RockerResult", "default_socket_path", "enter_rocker", "get_guardname",
           "join_rocker", "request_new"]


def __getattr__(name: str) -> object:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
