/*
 * librocker-spawn: start a rocker's guard in fresh namespaces, the way
 * posix_spawn starts a program: clone(CLONE_VM | CLONE_VFORK), a few raw
 * syscalls in the child, exec.
 *
 * Why C: rockerd is a ~48 MB Python process. A fork of it copies its page
 * tables and COW-faults on every page the child touches, and the exec from
 * that copy has to tear it all down again: 4-7 ms per rocker on the event
 * loop. A CLONE_VM child shares rockerd's memory until its exec, so the clone
 * costs what the kernel's namespaces cost and nothing per page. Such a child
 * must not run Python or touch anything the daemon owns (errno aside): it
 * only maps its ids, places fds and execs the guard, which does the rest of
 * the setup (see rocker-guard.c --setup).
 *
 * rockerd loads this with ctypes; the one entry point is rocker_spawn().
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef CLONE_PIDFD
#define CLONE_PIDFD 0x00001000
#endif
#ifndef CLOSE_RANGE_CLOEXEC
#define CLOSE_RANGE_CLOEXEC (1U << 2)
#endif
#ifndef SYS_close_range
#define SYS_close_range 436
#endif

#define STATUS_FD 3 /* where the guard finds its status pipe; the mounts follow */
#define MAX_MOUNTS 64
#define STACK_SIZE (64 * 1024)

struct rocker_spawn {
    unsigned long ns_flags; /* CLONE_NEW* */
    int uid, gid;           /* the app's: the user namespace is owned by uid, maps 0 -> uid, 0 -> gid */
    int guard_fd;           /* the guard binary, opened O_PATH by the daemon */
    int status_fd;          /* write end of the status pipe: becomes STATUS_FD */
    int nmounts;
    const int *mount_fds;   /* detached mounts: become STATUS_FD + 1 + i */
    char *const *argv;      /* the guard's argv; argv[1] must be "3" */
};

struct child_arg {
    const struct rocker_spawn *s;
    char uid_map[32], gid_map[32];
};

/* "E<errno> <step>" on the status pipe: the same report a failed guard setup gives. */
static void report(int fd, const char *step, int err) {
    char b[128];
    int n = snprintf(b, sizeof b, "E%d %s", err, step);
    if (n > 0 && syscall(SYS_write, fd, b, (size_t)n) < 0) {}
}

static int write_file(const char *path, const char *text) {
    int fd = (int)syscall(SYS_openat, AT_FDCWD, path, O_WRONLY | O_CLOEXEC);
    if (fd < 0) return errno;
    size_t len = strlen(text);
    int err = syscall(SYS_write, fd, text, len) == (long)len ? 0 : errno ? errno : EIO;
    syscall(SYS_close, fd);
    return err;
}

static int child(void *p) {
    const struct child_arg *a = p;
    const struct rocker_spawn *s = a->s;
    int err;
    /* Our own maps, from inside: a single extent of our own euid/egid needs
     * no privilege outside (with setgroups denied), so the parent need not
     * wait for us. Then become root of the namespace, so exec keeps its caps.
     * The euid switch made the (shared) mm non-dumpable, which gives
     * /proc/self to host root: make it ours again. The parent's switch back
     * resets the flag for the daemon. */
    if (syscall(SYS_prctl, PR_SET_DUMPABLE, 1, 0, 0, 0) < 0) {
        report(s->status_fd, "write uid/gid maps", errno);
        _exit(127);
    }
    if ((err = write_file("/proc/self/setgroups", "deny")) || (err = write_file("/proc/self/uid_map", a->uid_map)) ||
        (err = write_file("/proc/self/gid_map", a->gid_map))) {
        report(s->status_fd, "write uid/gid maps", err);
        _exit(127);
    }
    if (syscall(SYS_setresgid, 0, 0, 0) < 0 || syscall(SYS_setresuid, 0, 0, 0) < 0) {
        report(s->status_fd, "switch to the app's ids", errno);
        _exit(127);
    }
    /* Lift every fd above the targets first: any of them may sit on one. */
    int top = STATUS_FD + 1 + s->nmounts, lifted[MAX_MOUNTS + 2];
    for (int i = 0; i < s->nmounts + 2; i++) {
        int fd = i == 0 ? s->status_fd : i == 1 ? s->guard_fd : s->mount_fds[i - 2];
        if ((lifted[i] = (int)syscall(SYS_fcntl, fd, F_DUPFD_CLOEXEC, top)) < 0) {
            report(s->status_fd, "pass fds to the guard", errno);
            _exit(127);
        }
    }
    int status = lifted[0];
    for (int i = 0; i < s->nmounts + 1; i++) {
        int fd = i == 0 ? lifted[0] : lifted[i + 1];
        if (syscall(SYS_dup3, fd, STATUS_FD + i, 0) < 0) {
            report(status, "pass fds to the guard", errno);
            _exit(127);
        }
    }
    syscall(SYS_close_range, top, ~0U, CLOSE_RANGE_CLOEXEC); /* nothing else of the daemon's goes along */
    char *const envp[] = { NULL };
    syscall(SYS_execveat, lifted[1], "", s->argv, envp, AT_EMPTY_PATH);
    report(status, "exec guard", errno);
    _exit(127);
}

/* Returns the guard's PID (and its pidfd in *pidfd), or -errno. Failures
 * inside the child arrive on the status pipe, as the guard's own do. */
int rocker_spawn(const struct rocker_spawn *s, int *pidfd) {
    if (s->nmounts < 0 || s->nmounts > MAX_MOUNTS) return -E2BIG;
    struct child_arg a = { .s = s };
    snprintf(a.uid_map, sizeof a.uid_map, "0 %d 1", s->uid);
    snprintf(a.gid_map, sizeof a.gid_map, "0 %d 1", s->gid);
    char *stack = mmap(NULL, STACK_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
    if (stack == MAP_FAILED) return -errno;
    /* No signal handler of the daemon's may run in the child (it shares our
     * memory); the guard sets its own mask after exec. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    /* The namespace's owner is the creator's euid: this thread's only
     * (raw syscalls, not glibc's process-wide set*id). */
    int switched = s->uid != 0 || s->gid != 0, err = 0;
    pid_t pid = -1;
    if (switched && (syscall(SYS_setresgid, -1, s->gid, -1) < 0 || syscall(SYS_setresuid, -1, s->uid, -1) < 0))
        err = errno;
    int fd = -1;
    if (!err) {
        pid = clone(child, stack + STACK_SIZE, CLONE_VM | CLONE_VFORK | CLONE_PIDFD | (int)s->ns_flags | SIGCHLD,
                    &a, &fd);
        if (pid < 0) err = errno;
    }
    if (switched) { /* uid first: euid 0 brings back the capability to reset the gid */
        syscall(SYS_setresuid, -1, 0, -1);
        syscall(SYS_setresgid, -1, 0, -1);
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    munmap(stack, STACK_SIZE);
    if (err) return -err;
    *pidfd = fd;
    return pid;
}
