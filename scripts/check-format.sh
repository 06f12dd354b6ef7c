#!/bin/sh
# Check (or with --fix, apply) the C style of .clang-format on every tracked C file.
#   scripts/check-format.sh          exit 1 and name the files clang-format would change
#   scripts/check-format.sh --fix    reformat them in place
# Needs clang-format (Debian: apt-get install clang-format; scripts/setup.sh installs it). scripts/test.sh runs it.
set -eu
cd "$(dirname "$0")/.."
command -v clang-format >/dev/null 2>&1 || { echo "check-format: clang-format is not installed" >&2; exit 2; }
fix=0
[ "${1:-}" = "--fix" ] && fix=1
files=$(git ls-files '*.c' '*.h')
if [ "$fix" = 1 ]; then
    # shellcheck disable=SC2086  # one word per file: git ls-files names have no spaces here
    clang-format -i --style=file $files
    exit 0
fi
bad=0
for f in $files; do
    if ! clang-format --style=file --dry-run -Werror "$f" >/dev/null 2>&1; then
        echo "check-format: $f is not formatted (scripts/check-format.sh --fix)"
        bad=1
    fi
done
exit "$bad"
