/*
 * librocker-exec: start a program as an app in a rocker without forking the
 * caller, the way posix_spawn starts one: a CLONE_VM|CLONE_VFORK child that
 * joins the rocker with a few raw syscalls and execs.
 *
 * Why: a launcher written in Python forks its whole interpreter to run an
 * app callable, and the child then copy-on-write faults on every page Python
 * touches and tears the copy down again at its exec: on a 19 MB launcher that
 * is most of the time between rockerd's reply and the app's main(). When the
 * app is just a program, none of that is needed.
 *
 * A root caller: the calling thread joins the rocker's PID namespace for its
 * children only (pid_for_children is per thread; other threads' children are
 * unaffected), clones the app, and goes back. Any other caller cannot join a
 * PID namespace before it holds the rocker's user namespace, so the clone is
 * an intermediate that joins all six and clones the app with CLONE_PARENT, as
 * a forked intermediate would, still without a copy of the caller's memory.
 * Either way the app is the caller's child, so waitpid works.
 * On cgroup v2 a root caller clones the app into the rocker's cgroup (clone3 CLONE_INTO_CGROUP, on
 * the dir of the reply's cgroup.procs fd): born there, it skips the move whose lock waits for an
 * RCU grace period (docs/operations.md). An intermediate runs as the app's uid by then, which the
 * kernel does not let clone into a cgroup whose cgroup.procs is root's: it joins as before.
 * It shares the caller's memory until its exec, so it runs only raw syscalls:
 * glibc's set*id would signal the caller's other threads, and no handler of
 * the caller's may run in it (all signals stay blocked until just before the
 * exec, with every handled signal reset to its default first).
 *
 * rocker_client loads this with ctypes. rocker_exec() is the entry point for
 * an Exec app; rocker_join() serves the forked child of a callable app, which
 * joins the same way in one call. The join itself is rocker-join.c's, shared
 * with the C client.
 */
#define _GNU_SOURCE
#include "rocker-clone3.h"
#include "rocker-join.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/vfs.h>
#include <sys/wait.h>
#include <unistd.h>

#define CGROUP2_MAGIC 0x63677270 /* linux/magic.h CGROUP2_SUPER_MAGIC */

#define MIN_STACK (16 * 1024)

struct rocker_exec {
    int ns_fds[ROCKER_NNS]; /* the rocker's, in ROCKER_NS_* order */
    int own_pid_ns;         /* the caller's PID namespace, to go back to; -1: through an intermediate */
    int report_fd;          /* write end of a CLOEXEC pipe: "E<errno> <step>" if the child fails */
    const char *path;       /* the program, resolved in the rocker's mount namespace */
    char *const *argv;
    char *const *envp;
    void *stack; /* the children's stacks, at least 2 * MIN_STACK bytes; free once this returns */
    size_t stack_size;
    const int *cgroup_fds; /* the reply's `cgroups` (rocker_join_ns), n_cgroup_fds of them */
    int n_cgroup_fds;
    const struct sock_fprog *filter; /* the app's syscall filter (rocker-seccomp.h); NULL: none */
    const char *cwd;                 /* chdir here, inside the rocker, right before the exec; NULL: stay at / */
};

/* The entry points, loaded with ctypes (rocker_client/_native/__init__.py). */
int rocker_join(const struct rocker_exec *e, int with_pid, const char **stage);
unsigned long long rocker_app_cap_mask(void);
int rocker_exec(const struct rocker_exec *e, int *app_pid);

struct child_arg {
    const struct rocker_exec *e;
    sigset_t caller_mask;  /* the app starts with the caller's mask, as a forked app would */
    char *app_stack;       /* top of the app's stack, when an intermediate clones it */
    int app_pid;           /* set by the intermediate: the app it cloned (shared memory) */
    const int *cgroup_fds; /* what the root caller's app joins: e's, less the cgroup it was cloned into */
    int n_cgroup_fds;
    int left[ROCKER_MAX_CGROUPS];
};

static void reset_handlers(void) {
    /* Our own copy of the handler table (no CLONE_SIGHAND): the caller's handlers must not run here. */
    for (int sig = 1; sig < _NSIG; sig++) {
        struct sigaction sa;
        if (sigaction(sig, NULL, &sa) == 0 && sa.sa_handler != SIG_IGN && sa.sa_handler != SIG_DFL) {
            sa.sa_handler = SIG_DFL;
            sa.sa_flags = 0;
            sigaction(sig, &sa, NULL);
        }
    }
}

/* The app, born in the rocker's PID namespace: any signal wakes the guard (PID 1 here; it ignores
 * what it gets), which then finds us and watches our pidfd, so the rocker ends as soon as we exit,
 * whether the exec works or not. */
static void wake_guard(void) {
    syscall(SYS_kill, 1, SIGCHLD);
}

static __attribute__((noreturn)) void exec_app(const struct child_arg *a) {
    const struct rocker_exec *e = a->e;
    if (e->cwd && syscall(SYS_chdir, e->cwd) < 0) {
        rocker_report(e->report_fd, "chdir", errno);
        syscall(SYS_exit, 127);
    }
    syscall(SYS_rt_sigprocmask, SIG_SETMASK, &a->caller_mask, NULL, _NSIG / 8);
    syscall(SYS_execve, e->path, e->argv, e->envp);
    rocker_report(e->report_fd, "exec", errno);
    syscall(SYS_exit, 127);
    __builtin_unreachable();
}

static __attribute__((noreturn)) void fail(const struct rocker_exec *e, const char *stage) {
    rocker_report(e->report_fd, stage, errno);
    syscall(SYS_exit, 127);
    __builtin_unreachable();
}

/* The whole join: namespaces, credentials, the rocker's cgroups (as the app's uid), syscall filter. */
static const char *join(const struct rocker_exec *e, int with_pid) {
    return rocker_join_ns(e->ns_fds, with_pid, e->filter, e->cgroup_fds, e->n_cgroup_fds);
}

/* Root caller: the app itself, already in the PID namespace (and on v2 in the rocker's cgroup). */
static int child(void *p) {
    const struct child_arg *a = p;
    reset_handlers();
    wake_guard();
    const char *stage = rocker_join_ns(a->e->ns_fds, 0, a->e->filter, a->cgroup_fds, a->n_cgroup_fds);
    if (stage)
        fail(a->e, stage);
    exec_app(a);
}

static int app_of_intermediate(void *p) {
    wake_guard();
    exec_app(p);
}

/* Any other caller: joins all six, then clones the app as the caller's child. */
static int intermediate(void *p) {
    struct child_arg *a = p;
    reset_handlers();
    const char *stage = join(a->e, 1);
    if (stage)
        fail(a->e, stage);
    pid_t pid = clone(app_of_intermediate, a->app_stack, CLONE_VM | CLONE_VFORK | CLONE_PARENT | SIGCHLD, a);
    if (pid < 0)
        fail(a->e, "clone app");
    a->app_pid = pid; /* it has exec'd or exited: its report, if any, is in the pipe */
    syscall(SYS_exit, 0);
    return 0;
}

/* For a forked, single-threaded child (a callable app, or its intermediate): join the rocker and
 * take the app's credentials, as an Exec child does; only ns_fds and filter of *e are read. Returns 0, or
 * -errno with *stage naming the step that failed. */
int rocker_join(const struct rocker_exec *e, int with_pid, const char **stage) {
    const char *failed = join(e, with_pid);
    if (!failed)
        return 0;
    int err = errno;
    *stage = failed;
    return -err;
}

/* Starts the app; returns 0 with its PID in *app_pid, or -errno if nothing was started. A child
 * that failed after the clone has written "E<errno> <step>" on report_fd; *app_pid is then the
 * failed app to reap, or -1 if it never existed (an intermediate that failed is reaped here).
 * Returns once the app has exec'd or exited. A root caller that cannot go back to its own PID
 * namespace gets -EREMCHG with the app started: it must not fork from this thread again. */
/* The capability set an app keeps (for the clients' tests and docs: one definition, here). */
unsigned long long rocker_app_cap_mask(void) {
    return ROCKER_APP_CAP_MASK;
}

/* The cgroup2 dir whose cgroup.procs `fd` is, opened for clone3 CLONE_INTO_CGROUP; -1 if `fd` is
 * something else (v1 `tasks`, rockerd's mover socket, the cgroup namespace) or the dir cannot be
 * found from here. Found by the fd's path and checked to be the same file: no other cgroup's. */
static int procs_dir(int fd) {
    struct statfs sf;
    struct stat st, there;
    char link[32], path[PATH_MAX];
    if (fstatfs(fd, &sf) < 0 || sf.f_type != CGROUP2_MAGIC || fstat(fd, &st) < 0 || !S_ISREG(st.st_mode))
        return -1;
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, path, sizeof path - 1);
    if (n <= 0)
        return -1;
    path[n] = 0;
    char *slash = strrchr(path, '/');
    if (!slash || strcmp(slash, "/cgroup.procs") != 0)
        return -1;
    *slash = 0;
    int dir = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dir >= 0 &&
        (fstatat(dir, "cgroup.procs", &there, 0) < 0 || there.st_ino != st.st_ino || there.st_dev != st.st_dev)) {
        close(dir);
        dir = -1;
    }
    return dir;
}

/* A root caller's app: the dir to clone it into (or -1), and in a->cgroup_fds what it joins still. */
static int cgroup_to_clone_into(const struct rocker_exec *e, struct child_arg *a) {
    int dir = -1;
    a->cgroup_fds = a->left;
    a->n_cgroup_fds = 0;
    for (int i = 0; i < e->n_cgroup_fds && i < ROCKER_MAX_CGROUPS; i++) {
        if (dir < 0 && (dir = procs_dir(e->cgroup_fds[i])) >= 0)
            continue;
        a->left[a->n_cgroup_fds++] = e->cgroup_fds[i];
    }
    if (dir < 0) {
        a->cgroup_fds = e->cgroup_fds;
        a->n_cgroup_fds = e->n_cgroup_fds;
    }
    return dir;
}

/* Root caller: clone the app, into the rocker's cgroup where the kernel can (v2). */
static pid_t clone_app(const struct rocker_exec *e, struct child_arg *a, char *top) {
    int dir = cgroup_to_clone_into(e, a);
    if (dir >= 0) {
        struct clone_args3 ca = {.flags = CLONE_VM | CLONE_VFORK | ROCKER_CLONE_INTO_CGROUP,
                                 .exit_signal = SIGCHLD,
                                 .stack = (uintptr_t)e->stack,
                                 .stack_size = (uintptr_t)(top - (char *)e->stack),
                                 .cgroup = (uint64_t)dir};
        long pid = rocker_clone3_run(&ca, child, a);
        int err = errno;
        close(dir);
        if (pid >= 0 || !rocker_clone3_unsupported(err)) {
            errno = err;
            return (pid_t)pid;
        }
        a->cgroup_fds = e->cgroup_fds; /* an older kernel: the app writes itself in, as below */
        a->n_cgroup_fds = e->n_cgroup_fds;
    }
    return clone(child, top, CLONE_VM | CLONE_VFORK | SIGCHLD, a);
}

int rocker_exec(const struct rocker_exec *e, int *app_pid) {
    if (!e->stack || e->stack_size < 2 * MIN_STACK)
        return -EINVAL;
    char *base = e->stack, *mid = base + e->stack_size / 2, *end = base + e->stack_size;
    struct child_arg a = {.e = e, .app_stack = mid - (unsigned long)mid % 16, .app_pid = -1};
    char *top = end - (unsigned long)end % 16;
    sigset_t all;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &a.caller_mask);
    int err = 0;
    *app_pid = -1;
    if (e->own_pid_ns < 0) { /* through an intermediate */
        pid_t pid = clone(intermediate, top, CLONE_VM | CLONE_VFORK | SIGCHLD, &a);
        if (pid < 0) {
            err = errno;
        } else {
            while (waitpid(pid, NULL, 0) < 0 && errno == EINTR) {}
            *app_pid = a.app_pid;
        }
    } else if (syscall(SYS_setns, e->ns_fds[ROCKER_NS_PID], CLONE_NEWPID) < 0) {
        err = errno;
    } else {
        pid_t pid = clone_app(e, &a, top);
        if (pid < 0)
            err = errno;
        else
            *app_pid = pid;
        if (syscall(SYS_setns, e->own_pid_ns, CLONE_NEWPID) < 0)
            err = EREMCHG;
    }
    pthread_sigmask(SIG_SETMASK, &a.caller_mask, NULL);
    return -err;
}
