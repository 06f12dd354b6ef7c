/*
 * librocker-spawn: start a rocker's guard in fresh namespaces, the way
 * posix_spawn starts a program: a CLONE_VM child, a few raw syscalls in it,
 * exec.
 *
 * Why C: rockerd is a ~45 MB Python process. A fork of it copies its page
 * tables and COW-faults on every page the child touches, and the exec from
 * that copy has to tear it all down again: 4-7 ms per rocker. A CLONE_VM
 * child shares rockerd's memory until its exec, so the clone costs what the
 * kernel's namespaces cost and nothing per page. Such a child must not run
 * Python or touch anything the daemon owns (errno aside): it waits for its
 * id maps, places fds and execs the guard, which does the rest of the setup
 * (see rocker-guard.c --setup).
 *
 * The calling thread writes the maps from outside, as root, lets the child
 * go and returns at once: the exec happens while the daemon goes on. So the
 * child runs on a stack the caller provides, and the caller keeps the stack,
 * the spec and everything it points to alive until the child has exec'd or
 * died: until the guard's ready byte, its error report or EOF on the status
 * pipe. Nothing here depends on process-wide state (the euid switch is the
 * calling thread's only).
 *
 * rockerd loads this with ctypes. rocker_spawn() starts the guard on the
 * calling thread; rocker_spawn_start() does the same on a thread of its own
 * and signals an eventfd when it is over, so the daemon's event loop goes on
 * meanwhile and no Python thread (none of the interpreter's lock) takes part:
 * a Python worker thread had to take that lock to begin, after the C call and
 * to hand the result back, each time behind the threads building the mounts.
 * The child also brings the rocker's lo up, from inside (it holds
 * CAP_NET_ADMIN over the network namespace its user namespace owns), where
 * rockerd would have had to setns a thread of its own in and out.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <net/if.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdint.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "rocker-guard-proto.h"
#include "../../rocker_client/_native/rocker-clone3.h" /* the guard is born in its cgroup (v2) */

#ifndef CLONE_PIDFD
#define CLONE_PIDFD 0x00001000
#endif
#ifndef CLOSE_RANGE_CLOEXEC
#define CLOSE_RANGE_CLOEXEC (1U << 2)
#endif
#ifndef SYS_close_range
#define SYS_close_range 436
#endif

#define STATUS_FD ROCKER_GUARD_STATUS_FD /* where the guard finds its status socket (the mounts come over it) */
#define MIN_STACK (16 * 1024)

struct rocker_spawn {
    unsigned long ns_flags; /* CLONE_NEW* */
    int uid, gid;           /* the app's: the user namespace is owned by uid, maps 0 -> uid, 0 -> gid */
    int guard_fd;           /* the guard binary, opened O_PATH by the daemon */
    int status_fd;          /* the guard's end of the status socket: becomes STATUS_FD */
    char *const *argv;      /* the guard's argv (rocker-guard-proto.h); argv[1] is STATUS_FD */
    void *stack;            /* the child's stack, at least MIN_STACK bytes */
    size_t stack_size;
    const int *cgroup_fds; /* v1: the rocker's tasks, one per hierarchy, the guard joins before it runs;
                            * v2: its cgroup dir, the guard is cloned into (clone3 CLONE_INTO_CGROUP) */
    int n_cgroup_fds;
};

/* rocker_spawn_start's job: the caller keeps it (and the spec) alive until done_fd is readable. */
struct rocker_spawn_job {
    const struct rocker_spawn *s;
    int done_fd; /* an eventfd: written once pid and pidfd are set */
    int pid;     /* rocker_spawn's result: the guard's PID, or -errno */
    int pidfd;
};

int rocker_spawn(const struct rocker_spawn *s, int *pidfd); /* the entry points, loaded with ctypes */
int rocker_spawn_start(struct rocker_spawn_job *job);

struct child_arg {
    const struct rocker_spawn *s;
    int go;   /* read end: "G" once the maps are written */
    int go_w; /* the write end, which the child's copy of the fd table holds too: closed first */
    int join; /* write "0" to the cgroup fds (v1 tasks); not when born in its cgroup */
};

/* "E<errno> <step>" on the status pipe: the same report a failed guard setup gives. */
static void report(int fd, const char *step, int err) {
    char b[128];
    int n = snprintf(b, sizeof b, "%c%d %s", ROCKER_GUARD_FAILED, err, step);
    if (n > 0 && syscall(SYS_write, fd, b, (size_t)n) < 0) {}
}

static int write_proc(pid_t pid, const char *name, const char *text) {
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/%s", (int)pid, name);
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0)
        return errno;
    size_t len = strlen(text);
    int err = write(fd, text, len) == (ssize_t)len ? 0 : errno ? errno : EIO;
    close(fd);
    return err;
}

/* The child moves itself into the rocker's cgroups before it runs anything else: each of its
 * processes, the app's included, is then born or moved there, never outside. "0" (the writer) to
 * a v1 `tasks` moves this one thread without the kernel's global threadgroup lock, whose every
 * take waits for an RCU grace period (rockerd/cgroups/tree.py); the fds are root's opens. */
static int join_cgroups(const int *fds, int n) {
    for (int i = 0; i < n; i++)
        if (syscall(SYS_write, fds[i], "0", 1) != 1)
            return errno ? errno : EIO;
    return 0;
}

/* lo up, from inside its network namespace: SIOCSIFFLAGS on a socket made there. An AF_UNIX one
 * (unix_ioctl hands interface ioctls to dev_ioctl, in the socket's netns): rockerd.service's
 * RestrictAddressFamilies=AF_UNIX AF_NETLINK filter, which the child inherits, refuses AF_INET. */
static int lo_up(void) {
    int fd = (int)syscall(SYS_socket, AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return errno;
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    memcpy(ifr.ifr_name, "lo", 3);
    int err = 0;
    if (syscall(SYS_ioctl, fd, SIOCGIFFLAGS, &ifr) < 0)
        err = errno;
    else if (!(ifr.ifr_flags & IFF_UP)) {
        ifr.ifr_flags |= IFF_UP;
        if (syscall(SYS_ioctl, fd, SIOCSIFFLAGS, &ifr) < 0)
            err = errno;
    }
    syscall(SYS_close, fd);
    return err;
}

static int child(void *p) {
    const struct child_arg *a = p;
    const struct rocker_spawn *s = a->s;
    char go = 0;
    /* Else a daemon killed before its "G" would leave us waiting for ever on a pipe we hold open
     * ourselves, with a copy of all its fds: its listening socket too, so no new rockerd could start. */
    syscall(SYS_close, a->go_w);
    if (syscall(SYS_read, a->go, &go, 1) != 1 || go != 'G')
        _exit(127); /* the parent reported why */
    int cerr = a->join ? join_cgroups(s->cgroup_fds, s->n_cgroup_fds) : 0;
    if (cerr) {
        report(s->status_fd, "join the rocker's cgroup", cerr);
        _exit(127);
    }
    /* In its cgroup now: a cgroup namespace rooted there, which the app joins too (rocker-join.h). */
    if (s->n_cgroup_fds > 0 && syscall(SYS_unshare, CLONE_NEWCGROUP) < 0) {
        report(s->status_fd, "unshare(CLONE_NEWCGROUP)", errno);
        _exit(127);
    }
    /* Root of the namespace (the app's ids outside), so exec keeps the caps in it. */
    if (syscall(SYS_setresgid, 0, 0, 0) < 0 || syscall(SYS_setresuid, 0, 0, 0) < 0) {
        report(s->status_fd, "switch to the app's ids", errno);
        _exit(127);
    }
    int lo_err = s->ns_flags & CLONE_NEWNET ? lo_up() : 0; /* its own netns: only lo, down until now */
    if (lo_err) {
        report(s->status_fd, "bring lo up", lo_err);
        _exit(127);
    }
    /* Lift both fds above STATUS_FD first: either may sit on 0-3. */
    int top = STATUS_FD + 1;
    int status = (int)syscall(SYS_fcntl, s->status_fd, F_DUPFD_CLOEXEC, top);
    int guard = status < 0 ? -1 : (int)syscall(SYS_fcntl, s->guard_fd, F_DUPFD_CLOEXEC, top);
    /* 0-2 are the daemon's (its log, its terminal): the app's uid owns the
     * rocker's user namespace and may pidfd_getfd() them from the guard. So
     * /dev/null goes there, as it would for any daemon's child. */
    int null = guard < 0 ? -1 : (int)syscall(SYS_openat, AT_FDCWD, "/dev/null", O_RDWR | O_CLOEXEC);
    if (null >= 0 && null < top) {
        int lifted = (int)syscall(SYS_fcntl, null, F_DUPFD_CLOEXEC, top);
        null = lifted;
    }
    if (null < 0 || syscall(SYS_dup3, null, 0, 0) < 0 || syscall(SYS_dup3, null, 1, 0) < 0 ||
        syscall(SYS_dup3, null, 2, 0) < 0 || syscall(SYS_dup3, status, STATUS_FD, 0) < 0) {
        report(status < 0 ? s->status_fd : status, "pass fds to the guard", errno);
        _exit(127);
    }
    syscall(SYS_close_range, top, ~0U, CLOSE_RANGE_CLOEXEC); /* nothing else of the daemon's goes along */
    char *const envp[] = {NULL};
    syscall(SYS_execveat, guard, "", s->argv, envp, AT_EMPTY_PATH);
    report(status, "exec guard", errno);
    _exit(127);
}

static int is_dir(int fd) {
    struct stat st;
    return syscall(SYS_fstat, fd, &st) == 0 && S_ISDIR(st.st_mode);
}

/* The fallback (no clone3 CLONE_INTO_CGROUP here): the stopped child moved by its PID, as root. */
static int move_child(int dir_fd, pid_t pid) {
    int fd = (int)syscall(SYS_openat, dir_fd, "cgroup.procs", O_WRONLY | O_CLOEXEC);
    if (fd < 0)
        return errno;
    char text[16];
    int len = snprintf(text, sizeof text, "%d", (int)pid);
    int err = syscall(SYS_write, fd, text, (size_t)len) == len ? 0 : errno ? errno : EIO;
    close(fd);
    return err;
}

/* Returns the guard's PID (and its pidfd in *pidfd), or -errno. Failures
 * after the clone arrive on the status pipe, as the guard's own do. The child
 * arg lives at the top of the caller's stack buffer, as the spec does in the
 * caller's memory: both outlive this call. */
int rocker_spawn(const struct rocker_spawn *s, int *pidfd) {
    if (!s->stack || s->stack_size < MIN_STACK)
        return -EINVAL;
    int go[2];
    if (pipe2(go, O_CLOEXEC) < 0)
        return -errno;
    char *top = (char *)s->stack + s->stack_size - 64; /* 16-byte aligned room for the arg */
    top -= (unsigned long)top % 16;
    struct child_arg *a = (struct child_arg *)top;
    int into = s->n_cgroup_fds == 1 && is_dir(s->cgroup_fds[0]), moved = 0;
    *a = (struct child_arg){.s = s, .go = go[0], .go_w = go[1], .join = !into};
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
    if (!err && into) {
        /* The kernel checks write access to cgroup.procs above with this thread's fsuid: root's
         * (the euid, the app's, stays the new user namespace's owner). */
        syscall(SYS_setfsuid, 0);
        struct clone_args3 ca = {.flags = CLONE_VM | CLONE_PIDFD | s->ns_flags | ROCKER_CLONE_INTO_CGROUP,
                                 .pidfd = (uintptr_t)&fd,
                                 .exit_signal = SIGCHLD,
                                 .stack = (uintptr_t)s->stack,
                                 .stack_size = (uintptr_t)(top - (char *)s->stack),
                                 .cgroup = (uint64_t)s->cgroup_fds[0]};
        pid = (pid_t)rocker_clone3_run(&ca, child, a);
        moved = pid > 0;
        if (pid < 0 && !rocker_clone3_unsupported(errno))
            err = errno; /* else an older kernel (or a filter that hides clone3): clone, then move it */
    }
    if (!err && !moved) {
        pid = clone(child, top, CLONE_VM | CLONE_PIDFD | (int)s->ns_flags | SIGCHLD, a, &fd);
        if (pid < 0)
            err = errno;
    }
    if (switched) { /* uid first: euid 0 brings back the capability to reset the gid */
        syscall(SYS_setresuid, -1, 0, -1);
        syscall(SYS_setresgid, -1, 0, -1);
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    close(go[0]);
    if (!err) {
        char uid_map[32], gid_map[32];
        snprintf(uid_map, sizeof uid_map, "0 %d 1", s->uid);
        snprintf(gid_map, sizeof gid_map, "0 %d 1", s->gid);
        const char *step = "join the rocker's cgroup";
        int merr = into && !moved ? move_child(s->cgroup_fds[0], pid) : 0;
        if (!merr) {
            step = "write uid/gid maps";
            merr = write_proc(pid, "setgroups", "deny");
        }
        if (!merr)
            merr = write_proc(pid, "uid_map", uid_map);
        if (!merr)
            merr = write_proc(pid, "gid_map", gid_map);
        if (merr)
            report(s->status_fd, step, merr);
        if (write(go[1], merr ? "X" : "G", 1) < 0) {} /* on failure EOF stops it too */
    }
    close(go[1]);
    if (err)
        return -err;
    *pidfd = fd;
    return pid;
}

static void *spawn_thread(void *p) {
    struct rocker_spawn_job *j = p;
    int pidfd = -1;
    int pid = rocker_spawn(j->s, &pidfd);
    j->pidfd = pidfd;
    j->pid = pid;
    uint64_t one = 1;
    if (write(j->done_fd, &one, sizeof one) < 0) {} /* an eventfd takes it: cannot fail */
    return NULL;
}

/* rocker_spawn(job->s) on a detached thread of its own; job->done_fd is written when it is
 * over, job->pid and job->pidfd then hold what it returned. Returns 0, or -errno (no thread). */
int rocker_spawn_start(struct rocker_spawn_job *job) {
    pthread_attr_t attr;
    int err = pthread_attr_init(&attr);
    if (err)
        return -err;
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_attr_setstacksize(&attr, 256 * 1024);
    /* It runs no signal handler of the daemon's: it starts with every signal blocked. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    pthread_t t;
    err = pthread_create(&t, &attr, spawn_thread, job);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    pthread_attr_destroy(&attr);
    return -err;
}
