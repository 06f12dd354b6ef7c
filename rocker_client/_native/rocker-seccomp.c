/*
 * rocker-seccomp: see rocker-seccomp.h.
 * SPDX-License-Identifier: MIT
 */
#define _GNU_SOURCE
#include "rocker-seccomp.h"

#include <errno.h>
#include <linux/seccomp.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#define MAX_INSNS 4096 /* BPF_MAXINSNS: the kernel's limit for one program */

const char *rocker_seccomp_install(const struct sock_fprog *prog) {
    if (!prog)
        return NULL;
    if (syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, prog) < 0)
        return "seccomp(SECCOMP_SET_MODE_FILTER)";
    return NULL;
}

int rocker_seccomp_read(int fd, struct sock_fprog *out) {
    struct stat st;
    if (fstat(fd, &st) < 0)
        return -errno;
    size_t n = (size_t)st.st_size;
    if (n == 0 || n % sizeof(struct sock_filter) || n / sizeof(struct sock_filter) > MAX_INSNS)
        return -EINVAL;
    struct sock_filter *f = malloc(n);
    if (!f)
        return -ENOMEM;
    size_t got = 0;
    while (got < n) { /* pread: the memfd's offset is shared with every other holder of it */
        ssize_t r = pread(fd, (char *)f + got, n - got, (off_t)got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0) {
            int err = r < 0 ? errno : EINVAL;
            free(f);
            return -err;
        }
        got += (size_t)r;
    }
    out->len = (unsigned short)(n / sizeof(struct sock_filter));
    out->filter = f;
    return 0;
}
