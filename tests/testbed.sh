#!/bin/bash
# testbed.sh - boot a real systemd (PID 1 of its own container) on a host without one, for tests.
#
# rocker's copy of the testbed (tests/test_systemd.py drives it); it stands alone in the project.
# Recipe: private mount namespace (unshare -m) -> tmpfs upper + overlayfs(lowerdir=/) ->
#         systemd-nspawn -b --register=no --keep-unit --private-network on that overlay.
# Nothing is written to the host disk except the state dir under $TESTBED_DIR; all mounts
# live in the private namespace and disappear when nspawn exits.
#
# Needs: apt-get install --no-install-recommends systemd-container   (provides systemd-nspawn)
#
# Usage (root):
#   testbed.sh up                 boot, wait until `systemctl is-system-running` is running/degraded
#   testbed.sh exec CMD...        run CMD inside the container (all namespaces), e.g. systemctl status x
#   testbed.sh install-unit F...  copy unit files into the container's /etc/systemd/system + daemon-reload
#   testbed.sh root               print the host-side path of the container's root (/proc/PID/root)
#   testbed.sh leader             print the host PID of the container's PID 1
#   testbed.sh console            print the container console log
#   testbed.sh down               orderly poweroff (SIGTERM to nspawn), then clean cgroups/state
#
# Env:
#   TESTBED_DIR    (default ${TMPDIR:-/tmp}/rocker-testbed)   base dir; $TESTBED_DIR/share is bind-mounted at /testbed
#   TESTBED_NAME   (default tb)                     instance name; several instances may run at once
#   TESTBED_BIND_RO / TESTBED_BIND  space-separated host paths bind-mounted at the same path inside
#                                   (e.g. your venv / checkout; needed for anything under /tmp, which is
#                                   a fresh tmpfs inside the container)
#   TESTBED_LOOP=1                  bind /dev/loop-control and every /dev/loopN the host has now (rockerd needs
#                                   them; a loop device made after `up` is not visible inside)
#   TESTBED_TIMEOUT (default 60)    seconds to wait for boot / shutdown
#   TESTBED_NSPAWN_ARGS             extra systemd-nspawn args (e.g. "--setenv=FOO=1")
#
# Where the host has cgroup2 (pure or hybrid), the container gets the unified hierarchy and may load BPF
# programs, so systemd inside enforces DevicePolicy=/DeviceAllow= (with nspawn's defaults on a hybrid host
# it cannot, and silently allows every device).
set -euo pipefail

B=${TESTBED_DIR:-${TMPDIR:-/tmp}/rocker-testbed}
NAME=${TESTBED_NAME:-tb}
S=$B/state/$NAME
TIMEOUT=${TESTBED_TIMEOUT:-60}
CG_NAME=systemd-testbed-$NAME
SELF=$(readlink -f "$0")
PATH_IN=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

die() { echo "testbed: $*" >&2; exit 1; }
elapsed() {  # seconds since $1 (an $EPOCHREALTIME), without bc
    local us=$(( 10#${EPOCHREALTIME//[!0-9]/} - 10#${1//[!0-9]/} ))
    printf '%d.%06d' $((us / 1000000)) $((us % 1000000))
}
alive() { [ -e "/proc/$1" ] && [ "$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" != Z ]; }  # zombies = dead

cg_dirs() {  # cgroup dirs that will hold nspawn (host side)
    if [ -f /sys/fs/cgroup/cgroup.controllers ]; then
        echo /sys/fs/cgroup/$CG_NAME                      # pure cgroup2 host
    else
        [ -d /sys/fs/cgroup/unified ] && echo /sys/fs/cgroup/unified/$CG_NAME
        [ -d /sys/fs/cgroup/systemd ] && echo /sys/fs/cgroup/systemd/$CG_NAME
    fi
}

root_controllers() {  # pure cgroup2 host: hand the root's controllers down, so the container's systemd has some
    # A host systemd has done this already; a host without one (the 6.1 VM: scripts/kvm-run.sh) has not, and then
    # nspawn cannot enable anything for its payload and the container's systemd sees no controllers to delegate.
    local R=/sys/fs/cgroup c
    [ -f $R/cgroup.controllers ] || return 0
    for c in $(cat $R/cgroup.controllers); do
        grep -qw "$c" $R/cgroup.subtree_control || echo "+$c" > $R/cgroup.subtree_control 2>/dev/null || true
    done
}

leader() {
    [ -f "$S/leader.pid" ] || die "not running (no $S/leader.pid)"
    cat "$S/leader.pid"
}

in_ct() {  # run a command inside every namespace of the container, with a clean environment
    local L; L=$(leader)
    nsenter -t "$L" -a -- env -i PATH=$PATH_IN LANG=C.UTF-8 TERM=dumb SYSTEMD_PAGER= SYSTEMD_COLORS=0 "$@"
}

inner() {  # runs inside `unshare -m --propagation private`; becomes systemd-nspawn
    local R=$S/root O=$S/ovl
    # nspawn keeps locks/propagation dirs in /run/systemd/nspawn; host /run is on disk -> hide it.
    mount -t tmpfs -o mode=755 tb-run /run
    mount -t tmpfs -o mode=755,size=${TESTBED_TMPFS_SIZE:-4G} tb-ovl "$O"
    mkdir -p "$O/upper" "$O/work"
    mount -t overlay tb-root -o "lowerdir=/,upperdir=$O/upper,workdir=$O/work" "$R"
    # Deterministic, minimal unit set: hide host-enabled units (postgresql, timers, getty, timesyncd...)
    rm -rf "$R/etc/systemd/system"
    mkdir -p "$R/etc/systemd/system"
    ln -s /lib/systemd/system/multi-user.target "$R/etc/systemd/system/default.target"
    ln -s /dev/null "$R/etc/systemd/system/console-getty.service"
    # own machine id, so the container journal is not confused with the host's
    systemd-id128 new > "$R/etc/machine-id"
    local args=(-D "$R" -b --register=no --keep-unit --private-network -M "$NAME"
                --bind="$B/share:/testbed")
    local p
    for p in ${TESTBED_BIND_RO:-}; do args+=(--bind-ro="$p"); done
    for p in ${TESTBED_BIND:-}; do args+=(--bind="$p"); done
    if [ -n "${TESTBED_LOOP:-}" ]; then
        for p in /dev/loop-control /dev/loop[0-9]*; do
            if [ -b "$p" ] || [ -c "$p" ]; then args+=(--bind="$p"); fi
        done
    fi
    if [ -f /sys/fs/cgroup/cgroup.controllers ] || [ -d /sys/fs/cgroup/unified ]; then
        export SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1   # cgroup2 inside: BPF device policy works there
        args+=(--system-call-filter=bpf)             # nspawn's seccomp filter refuses bpf(2) otherwise
    fi
    # shellcheck disable=SC2206
    args+=(${TESTBED_NSPAWN_ARGS:-})
    exec systemd-nspawn "${args[@]}"
}

up() {
    command -v systemd-nspawn >/dev/null || die "systemd-nspawn missing: apt-get install --no-install-recommends systemd-container"
    [ -f "$S/nspawn.pid" ] && alive "$(cat "$S/nspawn.pid")" && die "already running (TESTBED_NAME=$NAME)"
    rm -rf "$S"; mkdir -p "$S/root" "$S/ovl" "$B/share"
    local t0=$EPOCHREALTIME
    root_controllers
    local d; for d in $(cg_dirs); do mkdir -p "$d"; done
    # launcher subshell: move into our own cgroup (nspawn --keep-unit puts the container in ./payload)
    (
        for d in $(cg_dirs); do echo $BASHPID > "$d/cgroup.procs"; done
        exec setsid unshare -m --propagation private "$SELF" __inner </dev/null >"$S/console.log" 2>&1
    ) &
    local N=$!
    echo $N > "$S/nspawn.pid"
    # find the container's PID 1 (direct child of nspawn, running systemd)
    local L="" deadline=$((SECONDS + TIMEOUT))
    while [ -z "$L" ]; do
        alive $N || { cat "$S/console.log" >&2; die "nspawn exited during boot"; }
        [ $SECONDS -lt $deadline ] || die "timeout waiting for container init"
        for c in $(cat /proc/$N/task/*/children 2>/dev/null); do
            [ "$(cat /proc/$c/comm 2>/dev/null)" = systemd ] && L=$c
        done
        [ -n "$L" ] || sleep 0.05
    done
    echo $L > "$S/leader.pid"
    # wait for boot to finish
    local st=""
    while :; do
        st=$(timeout 10 nsenter -t "$L" -a -- env -i PATH=$PATH_IN systemctl is-system-running --wait 2>/dev/null) || true
        case "$st" in running|degraded) break;; esac
        alive $N || { cat "$S/console.log" >&2; die "nspawn exited during boot"; }
        [ $SECONDS -lt $deadline ] || die "timeout waiting for boot (state: $st)"
        sleep 0.1
    done
    printf 'testbed %s up: nspawn=%s leader=%s state=%s in %.2fs\n' "$NAME" "$N" "$L" "$st" \
        "$(elapsed "$t0")"
}

cg_pids() {  # every process still in our cgroup tree (nspawn, container init, services, strays)
    local d; for d in $(cg_dirs); do
        [ -d "$d" ] && find "$d" -name cgroup.procs -exec cat {} + 2>/dev/null
    done | sort -u
}

wait_gone() {  # wait_gone SECONDS PID...
    local deadline=$((SECONDS + $1)) p alive; shift
    while :; do
        alive=""
        for p in "$@"; do   # a zombie counts as gone
            alive "$p" && alive=1
        done
        [ -z "$alive" ] && return 0
        [ $SECONDS -lt $deadline ] || return 1
        sleep 0.05
    done
}

down() {
    local N="" L="" t0=$EPOCHREALTIME
    [ -f "$S/nspawn.pid" ] && N=$(cat "$S/nspawn.pid")
    [ -f "$S/leader.pid" ] && L=$(cat "$S/leader.pid")
    if [ -n "$N" ] && alive "$N"; then
        kill -TERM "$N"    # nspawn turns SIGTERM into SIGRTMIN+3 -> orderly halt of the container
        wait_gone "$TIMEOUT" "$N" || echo "testbed: nspawn did not exit in ${TIMEOUT}s" >&2
    fi
    if [ -n "$L" ] && wait_gone 0 "$L" 2>/dev/null; then :
    elif [ -n "$L" ] && grep -q "/$CG_NAME/" "/proc/$L/cgroup" 2>/dev/null; then
        kill -s SIGRTMIN+4 "$L"   # orphaned container (nspawn was killed): ask its init to power off
        wait_gone "$TIMEOUT" "$L" || echo "testbed: container init did not exit in ${TIMEOUT}s" >&2
    fi
    # last resort: SIGKILL whatever is still in our cgroups (only processes we started live there)
    local left; left=$(cg_pids)
    if [ -n "$left" ]; then
        echo "testbed: SIGKILL leftover pids: $left" >&2
        # shellcheck disable=SC2086
        kill -KILL $left 2>/dev/null || true
        # shellcheck disable=SC2086
        wait_gone 10 $left || true
    fi
    # remove the cgroups nspawn left behind (payload/..., deepest first); a cgroup whose last task is
    # still exiting cannot be removed yet, so try for a few seconds
    local d i rc=0; for d in $(cg_dirs); do
        for i in $(seq 100); do
            [ -d "$d" ] || break
            find "$d" -depth -type d -exec rmdir {} \; 2>/dev/null || true
            if [ -d "$d" ]; then sleep 0.05; fi
        done
        if [ -d "$d" ]; then echo "testbed: could not remove $d" >&2; rc=1; fi
    done
    rm -rf "$S"
    printf 'testbed %s down in %.2fs\n' "$NAME" "$(elapsed "$t0")"
    return $rc
}

cmd=${1:-}; shift || true
case "$cmd" in
    __inner) inner ;;
    up) if ! (up); then down >&2 || true; exit 1; fi ;;   # failed boot: clean up everything
    down) down ;;
    exec) in_ct "$@" ;;
    leader) leader ;;
    root) echo "/proc/$(leader)/root" ;;
    console) cat "$S/console.log" ;;
    install-unit)
        L=$(leader)
        for f in "$@"; do install -m 0644 "$f" "/proc/$L/root/etc/systemd/system/"; done
        in_ct systemctl daemon-reload ;;
    *) sed -n '2,30p' "$0"; exit 2 ;;
esac
