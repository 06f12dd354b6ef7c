"""`rocker status`: is rockerd up, which version, which kernel paths it takes."""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from .. import wire
from .common import EXIT_OK, GET_INFO, KERNEL, Daemon, Failure, client_version, socket_path


def cmd_status(args: argparse.Namespace) -> int:
    path = socket_path(args)
    with Daemon(path) as d:
        try:
            info = d.call(GET_INFO)
        except wire.RemoteError as e:
            raise Failure(f"rockerd did not say who it is: {e}: is {path} rockerd's socket?") from None
        rockers = d.rockers()
        try:
            kernel: dict[str, Any] | None = d.call(KERNEL)
        except wire.RemoteError:  # a daemon older than the Kernel method
            kernel = None
    status = {"socket": path, "client_version": client_version(), "daemon": info, "rockers": len(rockers),
              "kernel": kernel}
    if args.json:
        print(json.dumps(status, indent=2))
        return EXIT_OK
    mine = "" if os.geteuid() == 0 else " (that you may see)"
    print(f"rockerd:     running, version {info.get('version', '?')} "
          f"({info.get('vendor', '?')} {info.get('product', '?')}, {info.get('url', '?')})")
    print(f"socket:      {path}")
    print(f"interfaces:  {', '.join(info.get('interfaces') or [])}")
    print(f"rockers:     {len(rockers)} live{mine}")
    if kernel is not None:
        print(f"kernel:      {kernel.get('release', '?')}")
        for p in kernel.get("paths") or []:
            how = "fast" if p.get("fast") else "forced fallback" if p.get("forced") else \
                f"fallback (fast path needs Linux {p.get('fast_since', '?')})"
            print(f"  {p.get('feature', '?')}: {how}: {p.get('path', '?')}")
    print(f"client:      rocker {client_version()}")
    return EXIT_OK

