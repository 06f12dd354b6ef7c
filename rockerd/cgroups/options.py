"""rockerd's options for limits: which hierarchy, the defaults, the ceilings for non-root callers."""

from __future__ import annotations

import argparse

from rocker_client.units import parse_size

from .limits import DEFAULT_PIDS_MAX, LimitPolicy, Limits


def _count(text: str) -> int | None:
    if text in ("max", "none"):
        return None
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"not a positive number or 'max': {text!r}")
    return int(text)


def _cpus(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of CPUs: {text!r}") from None
    if not 0 < value <= 4096:
        raise argparse.ArgumentTypeError(f"must be above 0 and at most 4096: {text!r}")
    return value


def add_cgroup_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("limits (a cgroup per rocker; docs/operations.md)")
    g.add_argument("--cgroups", choices=["auto", "v2", "v1", "none"], default="auto",
                   help="the cgroup hierarchy to put rockers in (default: auto: v2 if it has the memory, pids "
                        "and cpu controllers, else v1; none: limits off, requests that ask for one refused)")
    g.add_argument("--cgroup-parent", default="", metavar="CGROUP",
                   help="v2: make rockers' cgroups under this delegated cgroup (a path in the cgroup2 tree, e.g. "
                        "/system.slice/rocker-cgroups.service) instead of under rockerd's own cgroup, so "
                        "that systemd can restart rockerd while rockers live (docs/operations.md)")
    g.add_argument("--default-memory", type=parse_size, metavar="SIZE",
                   help="memory_max of a request without one (default: none)")
    g.add_argument("--default-pids", type=_count, default=DEFAULT_PIDS_MAX, metavar="N",
                   help=f"pids_max of a request without one (default: {DEFAULT_PIDS_MAX}; 'max': none)")
    g.add_argument("--default-cpus", type=_cpus, metavar="CPUS", help="cpu_max of a request without one")
    g.add_argument("--max-memory", type=parse_size, metavar="SIZE",
                   help="the most memory_max a non-root caller may ask for (and get by default)")
    g.add_argument("--max-pids", type=_count, metavar="N", help="the most pids_max a non-root caller may ask for")
    g.add_argument("--max-cpus", type=_cpus, metavar="CPUS", help="the most cpu_max a non-root caller may ask for")


def limit_policy(args: argparse.Namespace) -> LimitPolicy:
    return LimitPolicy(defaults=Limits(args.default_memory, args.default_pids, args.default_cpus),
                       ceilings=Limits(args.max_memory, args.max_pids, args.max_cpus))
