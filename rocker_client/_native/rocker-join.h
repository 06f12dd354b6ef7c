/*
 * rocker-join: how a process joins a rocker and becomes its app, in one place. Compiled into
 * librocker-exec (the Python client: Exec apps and the forked child of a callable app) and into
 * librocker_client (clients/c), so the two clients cannot drift apart.
 *
 * Raw syscalls only, no allocation, no locks: it runs in CLONE_VM children that share the
 * caller's memory and in forked children of threaded callers.
 * SPDX-License-Identifier: MIT
 */
#ifndef ROCKER_JOIN_H
#define ROCKER_JOIN_H

#include <linux/capability.h>
#include <linux/filter.h>

#define ROCKER_HIDDEN __attribute__((visibility("hidden")))

/* The order of the namespace fds everywhere (Create's reply, setns): user first, it owns the others. */
enum { ROCKER_NS_USER, ROCKER_NS_MNT, ROCKER_NS_PID, ROCKER_NS_NET, ROCKER_NS_UTS, ROCKER_NS_IPC, ROCKER_NNS };

/* The capabilities an app keeps in its rocker (where it is uid 0): Docker's default set less
 * CAP_MKNOD and CAP_NET_RAW. Without CAP_SYS_ADMIN it cannot unmount its overlays (for a uid-0
 * rocker that would expose the host's dirs), without CAP_SYS_PTRACE it stays off the guard. */
#define ROCKER_APP_CAP_MASK                                                                                            \
    (1ULL << CAP_CHOWN | 1ULL << CAP_DAC_OVERRIDE | 1ULL << CAP_FOWNER | 1ULL << CAP_FSETID | 1ULL << CAP_KILL |       \
     1ULL << CAP_SETGID | 1ULL << CAP_SETUID | 1ULL << CAP_SETPCAP | 1ULL << CAP_NET_BIND_SERVICE |                    \
     1ULL << CAP_SYS_CHROOT | 1ULL << CAP_AUDIT_WRITE | 1ULL << CAP_SETFCAP)

/* Join the rocker's namespaces (its PID namespace too if with_pid: for the caller's children
 * from then on) and become its app: no supplementary groups (a root caller's would follow the
 * app otherwise, and cannot be dropped later), uid/gid 0 inside, then the rocker's cgroups, then
 * ROCKER_APP_CAP_MASK as the bounding, permitted and effective sets, no_new_privs, and last the
 * syscall filter `filter` (rocker-seccomp.h; NULL: none). Returns NULL, or the step that failed
 * with errno set.
 *
 * The cgroups: `cgroup_fds`, the fds rockerd sent beside the Create reply (its `cgroups`), in order:
 * a cgroup.procs gets "0" (the caller itself: rockerd opened it as the app's uid, and the kernel
 * (v1) moves only a process whose uid is the opener's); on cgroup v2 a non-root launcher gets a
 * socket instead, rockerd moves the writer and answers (rockerd/cgroups/mover.py); the rocker's
 * cgroup namespace fd, last, is joined (setns needs the caps the app then drops). Every process
 * forked afterwards starts in the rocker's cgroup too. */
ROCKER_HIDDEN const char *rocker_join_ns(const int ns_fds[ROCKER_NNS], int with_pid, const struct sock_fprog *filter,
                                         const int *cgroup_fds, int n_cgroup_fds);

/* The most fds a Create reply carries in `cgroups`: one cgroup.procs per cgroup v1 hierarchy (memory,
 * pids, cpu, cpuacct) or one on cgroup v2 (or a socket to rockerd), and the cgroup namespace. */
#define ROCKER_MAX_CGROUPS 8

/* The one failure report of every process that joins or starts something for rocker:
 * "E<errno> <step>", one write (well under PIPE_BUF). */
ROCKER_HIDDEN void rocker_report(int fd, const char *step, int err);

#endif
