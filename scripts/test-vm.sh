#!/usr/bin/env bash
# Run tests inside a VM on Debian 12's own kernel (6.1), where rockerd takes its fallback paths
# (see docs/index.md, "Kernels"). Needs .venv built on the host first (./scripts/setup.sh): the VM
# has no network. Arguments go to pytest (default: the tests that cover every fallback).
#   ./scripts/test-vm.sh                      # the 6.1 subset (CI runs this)
#   ./scripts/test-vm.sh tests/               # the whole suite on 6.1
#   ROCKER_VM_KERNEL=6.1.0-57-amd64 ./scripts/test-vm.sh ...   # another Debian kernel
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -gt 0 ] || set -- tests/test_kernel_paths.py tests/test_rocker_e2e.py tests/test_overlay_sharing.py \
    tests/test_packages.py tests/test_faults.py
kernel=()
[ -z "${ROCKER_VM_KERNEL:-}" ] || kernel=(--kernel "$ROCKER_VM_KERNEL")
# Emulated (no KVM): several times slower than the host. Warm the page cache with one import first
# (a cold import of the venv over 9p takes ~50 s), then give daemons more time to come up.
exec ./scripts/kvm-run.sh "${kernel[@]}" --tmpfs /tmp -- env ROCKER_TEST_TIME_SCALE="${ROCKER_TEST_TIME_SCALE:-6}" \
    sh -c 'modprobe -a overlay squashfs loop && uname -r && .venv/bin/python -c "import rockerd.main, rocker_client.cli, pytest" &&
           exec .venv/bin/python -m pytest -q -p no:cacheprovider --timeout 600 "$@"' sh "$@"
