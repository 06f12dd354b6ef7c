"""rocker_client: ask rockerd for a rocker and run an app in it (the seed's API, in Python)."""

from .enter import enter_rocker, join_rocker
from .errors import RockerErr
from .execapp import Exec
from .guardname import get_guardname
from .structs import RockerRequest, RockerResult, request_new
from .wire import default_socket_path

__all__ = ["Exec", "RockerErr", "RockerRequest", "RockerResult", "default_socket_path", "enter_rocker", "get_guardname",
           "join_rocker", "request_new"]
