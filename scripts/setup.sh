#!/usr/bin/env bash
# Set up a Debian 12 machine (as root) to build, run and test rocker:
# Debian packages, then a venv in .venv with the project and its test extras.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "setup.sh: run as root (rockerd builds namespaces and mounts)" >&2; exit 1; }
if [ -z "${ROCKER_SKIP_APT:-}" ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # squashfs-tools: mksquashfs for packages; libsystemd-dev + pkg-config + python3-dev + gcc: systemd-python
    # and the C guard; make + valgrind: the C client and its tests; iproute2 for tests; systemd-container:
    # nspawn for the systemd testbed; libseccomp2 (rockerd compiles the syscall filter with it) and
    # libseccomp-dev (its header, for the test of our ctypes mirror); man-db: `man rocker`; clang-format:
    # scripts/check-format.sh
    apt-get install -y -qq --no-install-recommends \
        squashfs-tools libsystemd-dev pkg-config gcc libc6-dev make valgrind python3-dev python3-venv iproute2 \
        systemd-container libseccomp2 libseccomp-dev man-db clang-format >/dev/null
fi
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/pip install -q --upgrade pip 'setuptools>=77' wheel >/dev/null  # pyproject's build-system: an offline `pip wheel --no-build-isolation` (docs/operations.md)
.venv/bin/pip install -q -e '.[test]'
# rocker(1), rockerd(8) and the bash/zsh completions (scripts/manpages.py), where man(1) looks for the
# pages of programs in .venv/bin once it is on PATH (an editable install skips setup.py's data_files)
mkdir -p .venv/share && cp -r share/. .venv/share/
