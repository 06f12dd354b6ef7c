#!/usr/bin/env bash
# Set up this Debian 12 machine (as root) and run the whole test suite on the real kernel.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
.venv/bin/ruff check .
exec .venv/bin/python -m pytest "$@"
