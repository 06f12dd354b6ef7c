"""A cgroup per rocker: its limits (memory, pids, cpu) and its usage (detect, tree, limits, usage)."""

from .detect import Hierarchy, detect
from .limits import DEFAULT_PIDS_MAX, LimitPolicy, LimitRefused, Limits
from .manager import CgroupManager
from .tree import CgroupError, CgroupTree, RockerCgroup
from .usage import Usage, read_usage

__all__ = ["DEFAULT_PIDS_MAX", "CgroupError", "CgroupManager", "CgroupTree", "Hierarchy", "LimitPolicy",
           "LimitRefused", "Limits", "RockerCgroup", "Usage", "detect", "read_usage"]
