#!/usr/bin/env bash
# Run tests inside a VM on Debian 12's own kernel (6.1), where rockerd takes its fallback paths
# (see docs/index.md, "Kernels"). Needs .venv built on the host first (./scripts/setup.sh): the VM
# has no network. Arguments go to pytest (default: the tests that cover every fallback, and overlayfs
# before 6.5, whose refusals carry no messages).
#   ./scripts/test-vm.sh                      # the 6.1 subset (CI runs this)
#   ./scripts/test-vm.sh --per-file tests/test_*.py   # the whole suite on 6.1, one pytest per file,
#                                             # a "RESULT file rc=N time=Ns summary" line for each
#   ./scripts/test-vm.sh --grouped tests/test_a.py tests/test_b.py   # one pytest for all (saves its
#                                             # ~40 s start per file), the same RESULT lines from JUnit XML
#   ROCKER_VM_KERNEL=6.1.0-57-amd64 ./scripts/test-vm.sh ...   # another Debian kernel
set -euo pipefail
cd "$(dirname "$0")/.."
per_file=0
case "${1:-}" in --per-file) per_file=1; shift ;; --grouped) per_file=2; shift ;; esac
[ $# -gt 0 ] || set -- tests/test_kernel_paths.py tests/test_rocker_e2e.py tests/test_overlay_sharing.py \
    tests/test_packages.py tests/test_faults.py tests/test_kernel_messages.py
kernel=()
[ -z "${ROCKER_VM_KERNEL:-}" ] || kernel=(--kernel "$ROCKER_VM_KERNEL")
# Emulated (no KVM): several times slower than the host. Warm the page cache with one import first
# (a cold import of the venv over 9p takes ~50 s), then give daemons more time to come up.
exec ./scripts/kvm-run.sh "${kernel[@]}" --tmpfs /tmp -- env ROCKER_TEST_TIME_SCALE="${ROCKER_TEST_TIME_SCALE:-6}" \
    sh -c 'modprobe -a overlay squashfs loop && uname -r && .venv/bin/python -c "import rockerd.main, rocker_client.cli, pytest" &&
           pytest() { .venv/bin/python -m pytest -q -p no:cacheprovider --timeout 600 "$@"; }
           [ "$0" != 2 ] || { rc=0; pytest --junitxml=/tmp/vm-junit.xml "$@" || rc=$?
                              .venv/bin/python scripts/junit_per_file.py /tmp/vm-junit.xml; exit $rc; }
           [ "$0" = 1 ] || { pytest "$@"; exit; }
           worst=0
           for f; do
               s=$(date +%s); rc=0; pytest "$f" > /tmp/vm-file.out 2>&1 || rc=$?
               grep -E "^(FAILED|ERROR)|Error|assert" /tmp/vm-file.out | head -40 | sed "s|^|  [$f] |"
               echo "RESULT $f rc=$rc time=$(( $(date +%s) - s ))s $(tail -1 /tmp/vm-file.out)"
               [ $rc = 0 ] || worst=$rc
           done
           exit $worst' "$per_file" "$@"
