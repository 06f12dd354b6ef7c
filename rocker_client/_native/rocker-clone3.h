/*
 * rocker-clone3: clone3 for a CLONE_VM child on its own stack, and CLONE_INTO_CGROUP, in one place:
 * rockerd's guard spawner (rockerd/guard/rocker-spawn.c) clones the guard into its cgroup with it,
 * the client's exec library (rocker-exec.c) the app. Born in a cgroup, a process skips the move
 * whose cgroup_threadgroup_rwsem write waits for an RCU grace period (docs/operations.md, "The
 * cost of a move"); the kernel takes that lock for reading only at a clone.
 * SPDX-License-Identifier: MIT
 */
#ifndef ROCKER_CLONE3_H
#define ROCKER_CLONE3_H

#include <errno.h>
#include <stdint.h>
#include <sys/syscall.h>

#ifndef SYS_clone3
#define SYS_clone3 435
#endif
#define ROCKER_CLONE_INTO_CGROUP 0x200000000ULL

/* struct clone_args, up to `cgroup` (CLONE_ARGS_SIZE_VER2): older uapi headers lack the field. */
struct clone_args3 {
    uint64_t flags, pidfd, child_tid, parent_tid, exit_signal, stack, stack_size, tls, set_tid, set_tid_size, cgroup;
};

/* clone3 with CLONE_VM: the child starts on the new stack with no frame to return to, so it calls
 * fn(arg) and exits from here, as glibc's clone does; -1 with errno, or the child's PID. Other
 * machines get ENOSYS: the callers then clone as before and move the child (or it moves itself). */
static inline long rocker_clone3_run(struct clone_args3 *ca, int (*fn)(void *), void *arg) {
#if defined(__x86_64__)
    register void *r8 __asm__("r8") = (void *)fn; /* syscall keeps r8/r9: the child finds them */
    register void *r9 __asm__("r9") = arg;
    long ret;
    __asm__ volatile("syscall\n\t"
                     "test %%rax, %%rax\n\t"
                     "jnz 1f\n\t"
                     "xor %%ebp, %%ebp\n\t"
                     "mov %%r9, %%rdi\n\t"
                     "call *%%r8\n\t"
                     "mov %%eax, %%edi\n\t"
                     "mov $60, %%eax\n\t" /* SYS_exit */
                     "syscall\n\t"
                     "hlt\n"
                     "1:\n\t"
                     : "=a"(ret)
                     : "0"((long)SYS_clone3), "D"(ca), "S"(sizeof *ca), "r"(r8), "r"(r9)
                     : "rcx", "r11", "memory");
    if (ret < 0) {
        errno = (int)-ret;
        return -1;
    }
    return ret;
#else
    (void)ca, (void)fn, (void)arg;
    errno = ENOSYS;
    return -1;
#endif
}

/* clone3 refused as a kernel without it (or without CLONE_INTO_CGROUP, or a filter hiding it)
 * refuses: clone as before instead. */
static inline int rocker_clone3_unsupported(int err) {
    return err == ENOSYS || err == E2BIG || err == EINVAL;
}

#endif
