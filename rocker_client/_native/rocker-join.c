/*
 * rocker-join: see rocker-join.h.
 * SPDX-License-Identifier: MIT
 */
#define _GNU_SOURCE
#include "rocker-join.h"
#include "rocker-seccomp.h"

#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <stdio.h>
#include <linux/nsfs.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

static const int NS_TYPE[ROCKER_NNS] = {CLONE_NEWUSER, CLONE_NEWNS,  CLONE_NEWPID,
                                        CLONE_NEWNET,  CLONE_NEWUTS, CLONE_NEWIPC};
static const char *const NS_STEP[ROCKER_NNS] = {"setns(user)", "setns(mnt)", "setns(pid)",
                                                "setns(net)",  "setns(uts)", "setns(ipc)"};

/* The kernel's highest capability: the bounding set is dropped up to it. */
static int last_cap(void) {
    char buf[16];
    long fd = syscall(SYS_openat, AT_FDCWD, "/proc/sys/kernel/cap_last_cap", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    long n = syscall(SYS_read, (int)fd, buf, sizeof buf - 1);
    syscall(SYS_close, (int)fd);
    int v = 0;
    for (long i = 0; i < n && buf[i] >= '0' && buf[i] <= '9'; i++)
        v = v * 10 + (buf[i] - '0');
    return n > 0 ? v : -1;
}

static const char *limit_caps(int last) {
    for (int cap = 0; cap <= last; cap++)
        if (!(cap < 64 && (ROCKER_APP_CAP_MASK >> cap & 1)) && syscall(SYS_prctl, PR_CAPBSET_DROP, cap, 0, 0, 0) < 0)
            return "prctl(PR_CAPBSET_DROP)";
    struct __user_cap_header_struct hdr = {.version = _LINUX_CAPABILITY_VERSION_3, .pid = 0};
    unsigned lo = (unsigned)(ROCKER_APP_CAP_MASK & 0xFFFFFFFFu), hi = (unsigned)(ROCKER_APP_CAP_MASK >> 32);
    struct __user_cap_data_struct data[2] = {{lo, lo, 0}, {hi, hi, 0}}; /* inheritable empty: no ambient */
    return syscall(SYS_capset, &hdr, data) < 0 ? "capset" : NULL;
}

/* A socket instead of a cgroup.procs (cgroup v2, non-root launcher: rockerd/cgroups/mover.py):
 * rockerd has moved us when it answers "0", else it answers the errno; EOF: the rocker ended. */
static int moved_by_rockerd(int fd) {
    int type;
    socklen_t len = sizeof type;
    if (syscall(SYS_getsockopt, fd, SOL_SOCKET, SO_TYPE, &type, &len) < 0)
        return errno == ENOTSOCK ? 0 : -1; /* a cgroup.procs: the write did it */
    char b[12];
    long n = syscall(SYS_read, fd, b, sizeof b);
    if (n <= 0) {
        errno = n == 0 ? ESRCH : errno;
        return -1;
    }
    int err = 0;
    for (long i = 0; i < n && b[i] >= '0' && b[i] <= '9'; i++)
        err = err * 10 + (b[i] - '0');
    errno = err;
    return err ? -1 : 0;
}

/* Into the rocker's cgroups, then its cgroup namespace (rooted there: the app sees "/" as its own
 * cgroup, and a cgroupfs mounted inside would show nothing above it). */
static const char *join_cgroups(const int *fds, int n) {
    for (int i = 0; i < n; i++) {
        if (syscall(SYS_ioctl, fds[i], NS_GET_NSTYPE) == CLONE_NEWCGROUP) {
            if (syscall(SYS_setns, fds[i], CLONE_NEWCGROUP) < 0)
                return "setns(cgroup)";
            continue;
        }
        if (syscall(SYS_write, fds[i], "0", 1) != 1 || moved_by_rockerd(fds[i]) < 0) {
            if (errno == ENODEV) /* the cgroup was removed: its rocker ended, as ESRCH says elsewhere */
                errno = ESRCH;
            return "join the rocker's cgroup";
        }
    }
    return NULL;
}

const char *rocker_join_ns(const int ns_fds[ROCKER_NNS], int with_pid, const struct sock_fprog *filter,
                           const int *cgroup_fds, int n_cgroup_fds) {
    int last = last_cap(); /* before setns(mnt): the caller's /proc, whatever the rocker's is */
    if (last < 0)
        return "read /proc/sys/kernel/cap_last_cap";
    if (syscall(SYS_geteuid) == 0 && syscall(SYS_setgroups, 0, NULL) < 0)
        return "setgroups";
    for (int i = 0; i < ROCKER_NNS; i++) {
        if (i == ROCKER_NS_PID && !with_pid)
            continue; /* the caller joined it for its children */
        if (i == ROCKER_NS_NET && ns_fds[i] < 0)
            continue; /* network "host": the rocker keeps the caller's network namespace */
        if (syscall(SYS_setns, ns_fds[i], NS_TYPE[i]) < 0)
            return NS_STEP[i];
    }
    if (syscall(SYS_setresgid, 0, 0, 0) < 0)
        return "setresgid";
    if (syscall(SYS_setresuid, 0, 0, 0) < 0)
        return "setresuid";
    const char *step = join_cgroups(cgroup_fds, n_cgroup_fds); /* as the app's uid, still with the caps setns needs */
    if (!step)
        step = limit_caps(last);
    if (step)
        return step;
    if (syscall(SYS_prctl, PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0)
        return "prctl(PR_SET_NO_NEW_PRIVS)";
    return rocker_seccomp_install(filter); /* last: the filter need not allow the join's own steps */
}

void rocker_report(int fd, const char *step, int err) {
    char b[128];
    int n = snprintf(b, sizeof b, "E%d %s", err, step);
    if (n > 0 && syscall(SYS_write, fd, b, (size_t)(n < (int)sizeof b ? n : (int)sizeof b - 1)) < 0) {}
}
