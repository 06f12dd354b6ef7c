#!/bin/sh
# Install cost of the default syscall filter: compile default.policy as rockerd does, then time it.
#   bench/seccomp/run.sh [N]     (from the checkout, with its .venv)
set -eu
top=$(cd "$(dirname "$0")/../.." && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$top/.venv/bin/python" -c "
import sys; sys.path.insert(0, '$top')
from rockerd.confine import compile_profile
from rockerd.confine.policy import load
open('$tmp/default.bpf', 'wb').write(compile_profile(load()))"
cc -O2 -I"$top/rocker_client/_native" -o "$tmp/install" "$top/bench/seccomp/install.c" \
    "$top/rocker_client/_native/rocker-seccomp.c"
"$tmp/install" "$tmp/default.bpf" "${1:-300}"
