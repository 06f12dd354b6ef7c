/*
 * The guard protocol: how rockerd starts rocker-guard and hears from it. This
 * header is its one definition: rocker-spawn.c and rocker-guard.c include it,
 * and rockerd reads its ROCKER_GUARD_* #defines at start (rockerd/guard/proto.py;
 * tests/test_guard_proto.py checks what it reads against the C compiler).
 * Keep each #define on one line, its value a number, a 'c'har or a "string".
 *
 * argv     <name> <status-fd> <first-entry-timeout-seconds> --setup
 *          rockerd always passes all four (ROCKER_GUARD_ARGC); the tests'
 *          harness may stop after the status fd or the timeout (then no setup).
 * fds      the guard's end of a SOCK_SEQPACKET pair on ROCKER_GUARD_STATUS_FD
 *          (rocker-spawn.c puts it there); 0-2 are /dev/null; nothing else.
 * mounts   rockerd -> guard, one message once the guard's mount-free setup is
 *          under way: the data are the targets, NUL-separated, and the
 *          SCM_RIGHTS the detached mounts to attach there, in that order
 *          (overlays first, then the package): at most ROCKER_GUARD_MAX_MOUNTS,
 *          each target shorter than ROCKER_GUARD_TARGET_MAX bytes.
 * status   guard -> rockerd: ROCKER_GUARD_READY alone once ready, or
 *          ROCKER_GUARD_FAILED as "E<errno> <step>[: <detail>]" (at most
 *          ROCKER_GUARD_REPORT_MAX bytes) if the child or a setup step failed;
 *          then EOF. EOF alone: the guard died.
 */
#ifndef ROCKER_GUARD_PROTO_H
#define ROCKER_GUARD_PROTO_H

#define ROCKER_GUARD_STATUS_FD 3
#define ROCKER_GUARD_ARGC 4
#define ROCKER_GUARD_SETUP "--setup"
#define ROCKER_GUARD_READY 'R'
#define ROCKER_GUARD_FAILED 'E'
#define ROCKER_GUARD_MAX_MOUNTS 64
#define ROCKER_GUARD_TARGET_MAX 4096
#define ROCKER_GUARD_REPORT_MAX 512

#endif
