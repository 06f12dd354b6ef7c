#!/usr/bin/env bash
# Set up this Debian 12 machine (as root) and show rocker's main job: build a small
# squashfs app, start rockerd, run the app in a rocker, and show that its write to
# /usr landed in its data dir and not on the host. Leaves nothing behind.
set -euo pipefail
cd "$(dirname "$0")/.."
# ROCKER_SKIP_SETUP=1: use the .venv as it is (a machine without network, e.g. the 6.1 VM of scripts/kvm-run.sh)
[ -n "${ROCKER_SKIP_SETUP:-}" ] || ./scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"

WORK=$(mktemp -d /tmp/rocker-demo.XXXXXX)
chmod 755 "$WORK"
DAEMON=""
cleanup() {
    [ -n "$DAEMON" ] && kill "$DAEMON" 2>/dev/null && wait "$DAEMON" 2>/dev/null
    rm -rf "$WORK"
}
trap cleanup EXIT

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "1. Build the app package: $WORK/demo.squashfs"
mkdir -p "$WORK/src/bin"
cat > "$WORK/src/bin/demo" <<'APP'
#!/bin/sh
echo "  app: uid $(id -u), hostname $(hostname), my PID $$, PID 1 is '$(cat /proc/1/comm)'"
echo "  app: processes I can see: $(ls /proc | grep -c '^[0-9]'); network interfaces: $(tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' ' | tr '\n' ' ')"
echo "written by the demo app" > /usr/share/rocker-demo-note.txt && echo "  app: wrote /usr/share/rocker-demo-note.txt"
APP
chmod 755 "$WORK/src/bin/demo"
mksquashfs "$WORK/src" "$WORK/demo.squashfs" -comp zstd -all-root -noappend -quiet -no-progress

step "2. Start rockerd on $WORK/rockerd.sock"
rockerd --socket "$WORK/rockerd.sock" &
DAEMON=$!
# Up to 60 s: a few hundred ms here, much longer on a slow or emulated machine (a 6.1 VM under qemu).
for _ in $(seq 1200); do
    [ -S "$WORK/rockerd.sock" ] && break
    kill -0 "$DAEMON" 2>/dev/null || { echo "rockerd exited before it served its socket" >&2; exit 1; }
    sleep 0.05
done
[ -S "$WORK/rockerd.sock" ] || { echo "rockerd did not serve $WORK/rockerd.sock within 60 s" >&2; exit 1; }
export ROCKER_SOCKET="$WORK/rockerd.sock"

step "3. Run the app in a rocker (package at $WORK/exec, data in $WORK/data, /usr and /etc overlaid)"
# --uid 0 --gid 0: root in the rocker (a root launcher's app is nobody unless asked), to write to /usr
rocker run --pkg "$WORK/demo.squashfs" --exec-dir "$WORK/exec" --data-dir "$WORK/data" --uid 0 --gid 0 \
    --overlay /usr --overlay /etc -- "$WORK/exec/bin/demo" | tee "$WORK/app.out"
NAME=$(sed -n 's/.*hostname \(rk-[a-z0-9]*\),.*/\1/p' "$WORK/app.out")

step "4. On the host"
if [ -e /usr/share/rocker-demo-note.txt ]; then
    echo "  FAIL: the host's /usr/share/rocker-demo-note.txt exists"; exit 1
fi
echo "  the host's /usr/share/rocker-demo-note.txt does not exist"
echo "  the data dir has it: $WORK/data/upper/usr/share/rocker-demo-note.txt: $(cat "$WORK/data/upper/usr/share/rocker-demo-note.txt")"

step "5. Stop rockerd and check that nothing is left"
sleep 0.3   # the guard leaves within a moment of its app
kill "$DAEMON"; wait "$DAEMON" || true; DAEMON=""
left=$(grep -E " - (overlay|squashfs) " /proc/self/mountinfo | grep -c "$WORK" || true)
loops=$(losetup -a | grep -c "$WORK" || true)
guards=$(ps -eo comm= | grep -cx "$NAME" || true)
echo "  mounts left: $left, loop devices left: $loops, processes of rocker $NAME left: $guards"
[ "$left$loops$guards" = 000 ] || { echo "  FAIL: something was left behind"; exit 1; }
echo "  done: nothing left behind"
