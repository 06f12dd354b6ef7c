/*
 * rocker-seccomp: the app's syscall filter, installed as the last step of the join (rocker-join.c).
 * rockerd compiles the policy once (rockerd/confine) and sends the BPF program in a sealed memfd
 * beside the Create reply; the launcher reads it before it forks or clones (rocker_seccomp_read in
 * C, the same few lines in Python), and the joining process only installs it.
 * SPDX-License-Identifier: MIT
 */
#ifndef ROCKER_SECCOMP_H
#define ROCKER_SECCOMP_H

#include <linux/filter.h>

#ifndef ROCKER_HIDDEN
#define ROCKER_HIDDEN __attribute__((visibility("hidden")))
#endif

/* Install `prog` on the calling thread (NULL: the unconfined profile, nothing to do). Needs
 * no_new_privs, which the join sets first. No TSYNC: every process that joins is single-threaded.
 * Raw syscalls only (it runs in CLONE_VM children). Returns NULL, or the step that failed with
 * errno set. */
ROCKER_HIDDEN const char *rocker_seccomp_install(const struct sock_fprog *prog);

/* The launcher's side: read the program from rockerd's memfd into a malloc'd buffer `out`
 * (free out->filter after the join). Returns 0 or -errno (EINVAL: not a whole program). */
ROCKER_HIDDEN int rocker_seccomp_read(int fd, struct sock_fprog *out);

#endif
