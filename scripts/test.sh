#!/usr/bin/env bash
# Set up this Debian 12 machine (as root) and run the whole test suite on the real kernel; then,
# unless pytest arguments were given or ROCKER_SKIP_VM=1, the fallback subset on Debian 12's own
# 6.1 kernel in a qemu VM (scripts/test-vm.sh; emulated, about 6 minutes with the boot).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
.venv/bin/ruff check .
./scripts/check-format.sh  # the C style of .clang-format
.venv/bin/python -m pytest "$@"
if [ $# -eq 0 ] && [ -z "${ROCKER_SKIP_VM:-}" ]; then
    ./scripts/test-vm.sh
fi
