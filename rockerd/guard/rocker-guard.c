/*
 * rocker-guard: PID 1 of a rocker's PID namespace.
 *
 *   <name> <status-fd> [<first-entry-timeout-seconds, default 10, decimals ok>
 *                       [--setup]]
 *
 * rockerd's spawner (rocker-spawn.c) execs this as uid 0 of the rocker's new
 * user namespace (the app's uid outside), with an empty environment. With
 * --setup it first builds the rocker from inside: makes / rprivate, mounts
 * the rocker's own /proc, sets the hostname to <name>, then receives the
 * mounts on the status fd, a unix socket (see setup()) and attaches them
 * (lo is up already: rocker-spawn.c's child did it). Without it (the tests'
 * harness) that is assumed done. It writes 'R' to the status fd when ready, or
 * "E<errno> <step>" if a setup step failed, and then lives as long as
 * anything else lives in the namespace: the namespace (and every process in
 * it) ends when PID 1 exits.
 *
 * Exit codes: 0 the rocker is done (empty after an entry, nobody entered in
 * time, or 5 s after SIGTERM/SIGINT/SIGHUP); 1 bad usage or setup failed
 * before 'R' was written; 2 unexpected failure of the main loop.
 *
 * Thousands of idle rockers each have a guard, so it is small: no stdio, no
 * malloc, static buffers, one wake-up per second when idle.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/signalfd.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "rocker-guard-proto.h"

#ifndef SYS_clone3
#define SYS_clone3 435
#endif
#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif
#ifndef SYS_move_mount
#define SYS_move_mount 429
#endif
#ifndef SYS_mount_setattr
#define SYS_mount_setattr 442
#endif
#ifndef AT_RECURSIVE
#define AT_RECURSIVE 0x8000
#endif
#ifndef MOVE_MOUNT_F_EMPTY_PATH
#define MOVE_MOUNT_F_EMPTY_PATH 0x00000004
#endif

#define MAX_TRACKED 256      /* pidfds we poll; beyond that the /proc scans suffice */
#define WAIT_MIN_MS 10       /* poll timeout right after an event... */
#define WAIT_MAX_MS 1000     /* ...doubling per idle round up to this */
#define WAIT_UNENTERED_MS 20 /* until the first entry: an entry is only seen by polling */
#define GRACE_MS 5000        /* after a forwarded SIGTERM, give up waiting after this */

static int procfd, lastpidfd;
static struct pollfd pfds[1 + MAX_TRACKED]; /* [0] is the signalfd, then pidfds */
static pid_t tracked[1 + MAX_TRACKED];      /* the PID of each pidfd in pfds */
static int ntracked;

static size_t put(char *b, size_t n, const char *s) {
    while (*s && n < 190)
        b[n++] = *s++;
    return n;
}

/* "rocker-guard: <what>[: errno N]" on stderr; numbers only, as strerror would drag in locales.
 * Under rockerd, 0-2 are /dev/null (rocker-spawn.c): the app's uid may take
 * any fd of ours, so none may be the daemon's. Setup errors go on the status fd. */
static void say(const char *what, int err) {
    char b[200], num[12];
    size_t n = put(b, put(b, 0, "rocker-guard: "), what);
    if (err) {
        int i = sizeof num - 1;
        num[i] = 0;
        do
            num[--i] = (char)('0' + err % 10);
        while ((err /= 10) && i);
        n = put(b, put(b, n, ": errno "), num + i);
    }
    b[n++] = '\n';
    if (write(2, b, n) < 0) {} /* nothing better to do */
}

static void die(const char *what, int err, int code) {
    say(what, err);
    _exit(code);
}

/* A decimal number >= 0 made only of digits, else -1. */
static long parse_uint(const char *s) {
    long v = 0;
    if (!*s)
        return -1;
    for (; *s; s++) {
        if (*s < '0' || *s > '9' || v > 99999999)
            return -1;
        v = v * 10 + (*s - '0');
    }
    return v;
}

/* Seconds such as "10", "0.5" or ".25" as milliseconds (no strtod: locales again), else -1. */
static long long parse_ms(const char *s) {
    long long ms = 0, scale = 1000;
    int digits = 0, dot = 0;
    for (; *s; s++) {
        if (*s == '.' && !dot) {
            dot = 1;
            continue;
        }
        if (*s < '0' || *s > '9' || ms > 1000000000000LL)
            return -1;
        digits++;
        if (!dot)
            ms = ms * 10 + (*s - '0') * 1000;
        else if (scale > 1)
            ms += (*s - '0') * (scale /= 10);
    }
    return digits ? ms : -1;
}

static long long now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000LL + ts.tv_nsec / 1000000;
}

/* The namespace's last allocated PID: it moves whenever a process is created
 * in here, even one that entered by setns+fork and is already gone again. */
static long last_pid(void) {
    char b[24];
    ssize_t n = pread(lastpidfd, b, sizeof b - 1, 0);
    if (n <= 0)
        return -1;
    b[n - (b[n - 1] == '\n')] = 0;
    return parse_uint(b);
}

/* Is /proc/<name> a live process? A zombie counts as gone (only its parent
 * has yet to reap it), except a zombie thread-group leader whose other
 * threads still run: /proc shows it as 'Z' too, but num_threads > 1. */
static int is_alive(const char *name) {
    char path[32], b[512];
    size_t n = strlen(name); /* at most 9 digits: parse_uint accepted it */
    memcpy(path, name, n);
    memcpy(path + n, "/stat", 6);
    int fd = openat(procfd, path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return errno != ENOENT && errno != ESRCH; /* unsure: count it */
    ssize_t len = read(fd, b, sizeof b - 1);
    close(fd);
    if (len <= 0)
        return 0;
    b[len] = 0;
    char *p = strrchr(b, ')'); /* the comm in parentheses may hold anything */
    if (!p || p[1] != ' ')
        return 1;
    p += 2; /* field 3: state */
    if (*p != 'Z' && *p != 'X')
        return 1;
    for (int field = 3; field < 20 && p; field++) /* on to field 20: num_threads */
        if ((p = strchr(p, ' ')))
            p++;
    long threads = 0;
    while (p && *p >= '0' && *p <= '9')
        threads = threads * 10 + *p++ - '0';
    return threads > 1;
}

/* fork allocates the PID (ns_last_pid moves) well before it attaches the new
 * process, which only then shows in /proc: a scan in between lists nobody
 * while someone is entering. Asking for that very PID (clone3 set_tid) tells:
 * EEXIST and no /proc entry, it is being born (not empty); we got it, it came
 * and went (our stand-in exits at once); in /proc, alive unless a zombie. */
static int being_born(long pid) {
    if (pid <= 1)
        return 0;
    pid_t tid = (pid_t)pid;
    unsigned long long args[11] = {0}; /* struct clone_args */
    args[4] = SIGCHLD;                 /* exit_signal */
    args[8] = (unsigned long long)(unsigned long)&tid;
    args[9] = 1; /* set_tid, set_tid_size */
    long child = syscall(SYS_clone3, args, sizeof args);
    if (child == 0)
        syscall(SYS_exit_group, 0);
    if (child > 0) {
        while (waitpid((pid_t)child, NULL, 0) < 0 && errno == EINTR) {}
        return 0;
    }
    if (errno != EEXIST)
        return 0; /* cannot tell: as before */
    char name[24];
    int i = sizeof name - 6;
    memcpy(name + i, "/stat", 6);
    do
        name[--i] = (char)('0' + pid % 10);
    while ((pid /= 10) && i);
    int fd = openat(procfd, name + i, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return errno == ENOENT || errno == ESRCH;
    close(fd);
    name[sizeof name - 6] = 0;
    return is_alive(name + i);
}

static int is_tracked(long pid) {
    for (int i = 1; i <= ntracked; i++)
        if (tracked[i] == pid)
            return 1;
    return 0;
}

/* Count live processes other than us; watch new ones through pidfds so
 * their exit wakes us at once. Sets *event when it started watching one.
 * Returns -1 if /proc could not be read (then nobody is assumed gone). */
static int scan(long self, int *event) {
    char buf[2048];
    int live = 0;
    if (lseek(procfd, 0, SEEK_SET) < 0)
        return -1;
    for (;;) {
        ssize_t n = getdents64(procfd, buf, sizeof buf);
        if (n <= 0)
            return n < 0 ? -1 : live;
        for (ssize_t off = 0; off < n;) {
            struct dirent64 *d = (struct dirent64 *)(buf + off);
            off += d->d_reclen;
            long pid = parse_uint(d->d_name);
            if (pid <= 0 || pid == self)
                continue;
            /* a watched pidfd that has not fired means alive: skip the read */
            if (is_tracked(pid)) {
                live++;
                continue;
            }
            if (!is_alive(d->d_name))
                continue;
            live++;
            if (ntracked == MAX_TRACKED)
                continue;
            int fd = (int)syscall(SYS_pidfd_open, (pid_t)pid, 0);
            if (fd < 0)
                continue; /* just exited, or out of fds: the scans cover it */
            ntracked++;
            pfds[ntracked] = (struct pollfd){.fd = fd, .events = POLLIN};
            tracked[ntracked] = (pid_t)pid;
            *event = 1;
        }
    }
}

/* Setup failed before 'R': tell the daemon which step and why, as "E<errno> <step>". */
static void setup_failed(int status, const char *step, const char *detail, int err) {
    char b[ROCKER_GUARD_REPORT_MAX], num[12];
    size_t n = 0;
    int i = sizeof num - 1, e = err;
    num[i] = 0;
    do
        num[--i] = (char)('0' + e % 10);
    while ((e /= 10) && i);
    b[n++] = ROCKER_GUARD_FAILED;
    for (const char *p = num + i; *p;)
        b[n++] = *p++;
    b[n++] = ' ';
    for (const char *p = step; *p && n < sizeof b - 1;)
        b[n++] = *p++;
    for (const char *p = detail ? ": " : ""; *p && n < sizeof b - 1;)
        b[n++] = *p++;
    for (const char *p = detail ? detail : ""; *p && n < sizeof b - 1;)
        b[n++] = *p++;
    if (write(status, b, n) < 0) {} /* the daemon sees EOF without 'R' either way */
    die(step, err, 1);
}

/* What the app must not write or read in the rocker's fresh /proc (and the host's /sys it sees),
 * whatever its uid: Docker's readonlyPaths and maskedPaths (moby oci/defaults.go), which runc
 * applies to every container, root or not. A uid-0 rocker's user namespace maps root to host
 * root, so without this a write to /proc/sys/kernel/core_pattern runs a program as host root.
 * Read-only: bind-mounted onto itself, then remounted read-only. Masked: /dev/null bound over a
 * file, an empty read-only tmpfs over a directory. A path this kernel lacks is skipped. The app
 * keeps no CAP_SYS_ADMIN (rocker-join.h), so it cannot unmount any of them, and a fresh proc
 * mount is refused while these cover parts of this one (the kernel's mount_too_revealing). */
static const char *const PROC_READONLY[] = {
    "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger",
};
static const char *const PROC_MASKED[] = {
    "/proc/acpi",
    "/proc/asound",
    "/proc/interrupts",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/sys/devices/virtual/powercap",
    "/sys/firmware",
};
#define LOCKED_FLAGS (MS_NOSUID | MS_NODEV | MS_NOEXEC) /* proc's own: a remount must keep them */

static void harden_proc(int status) {
    struct stat st;
    for (size_t i = 0; i < sizeof PROC_READONLY / sizeof *PROC_READONLY; i++) {
        const char *p = PROC_READONLY[i];
        if (mount(p, p, NULL, MS_BIND | MS_REC, NULL) < 0) {
            if (errno == ENOENT)
                continue;
            setup_failed(status, "bind /proc path read-only", p, errno);
        }
        if (mount(NULL, p, NULL, MS_BIND | MS_REMOUNT | MS_RDONLY | LOCKED_FLAGS, NULL) < 0)
            setup_failed(status, "remount /proc path read-only", p, errno);
    }
    for (size_t i = 0; i < sizeof PROC_MASKED / sizeof *PROC_MASKED; i++) {
        const char *p = PROC_MASKED[i];
        if (stat(p, &st) < 0) {
            if (errno == ENOENT)
                continue;
            setup_failed(status, "mask /proc path", p, errno);
        }
        int r = S_ISDIR(st.st_mode) ? mount("tmpfs", p, "tmpfs", MS_RDONLY | LOCKED_FLAGS, "size=0,mode=0555")
                                    : mount("/dev/null", p, NULL, MS_BIND, NULL);
        if (r < 0)
            setup_failed(status, "mask /proc path", p, errno);
    }
    /* /sys is the host's sysfs, with cgroup2, securityfs, ... below it: read-only, all of it, as
     * Docker's /sys is (its root-owned files are a uid-0 app's own otherwise: /sys/power/state...). */
    struct {
        unsigned long long set, clr, propagation, userns_fd;
    } ro = {1 /* MOUNT_ATTR_RDONLY */, 0, 0, 0};
    if (syscall(SYS_mount_setattr, AT_FDCWD, "/sys", AT_RECURSIVE, &ro, sizeof ro) < 0 && errno != ENOENT)
        setup_failed(status, "make /sys read-only", "/sys", errno);
}

#define MAX_MOUNTS ROCKER_GUARD_MAX_MOUNTS
static char targets[MAX_MOUNTS * (ROCKER_GUARD_TARGET_MAX + 1)]; /* NUL-separated paths; only what arrives is touched */

/* --setup: build the rocker from inside its fresh namespaces, as their root.
 * What needs no mount comes first, while rockerd still builds them; then one
 * message on the status socket brings the targets (NUL-separated) and, as
 * SCM_RIGHTS, the detached mounts to attach there, in that order: the
 * overlays first, then the package (an exec dir may lie inside an overlay dir). */
static void setup(int status, const char *name) {
    if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0)
        setup_failed(status, "make / rprivate", NULL, errno);
    if (mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) < 0)
        setup_failed(status, "mount /proc", NULL, errno);
    harden_proc(status);
    if (sethostname(name, strlen(name)) < 0)
        setup_failed(status, "set hostname", name, errno);

    union {
        struct cmsghdr h;
        char b[CMSG_SPACE(MAX_MOUNTS * sizeof(int))];
    } ctl;
    struct iovec iov = {.iov_base = targets, .iov_len = sizeof targets - 1};
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl.b, .msg_controllen = sizeof ctl.b};
    ssize_t len;
    while ((len = recvmsg(status, &msg, MSG_CMSG_CLOEXEC)) < 0 && errno == EINTR) {}
    if (len < 0)
        setup_failed(status, "receive the mounts", NULL, errno);
    if (len == 0)
        die("rockerd went away before sending the mounts", 0, 1);
    struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
    int nfds = 0, *fds = NULL;
    if (c && c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
        fds = (int *)CMSG_DATA(c);
        nfds = (int)((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
    }
    if (msg.msg_flags & (MSG_TRUNC | MSG_CTRUNC))
        setup_failed(status, "receive the mounts", NULL, EMSGSIZE);
    targets[len] = 0;
    const char *t = targets;
    for (int i = 0; i < nfds; i++) {
        if (t >= targets + len)
            setup_failed(status, "receive the mounts", "fewer targets than mounts", EPROTO);
        if (syscall(SYS_move_mount, fds[i], "", AT_FDCWD, t, MOVE_MOUNT_F_EMPTY_PATH) < 0)
            setup_failed(status, "attach package and overlays", t, errno);
        close(fds[i]);
        t += strlen(t) + 1;
    }
    if (t < targets + len)
        setup_failed(status, "receive the mounts", "more targets than mounts", EPROTO);
}

int main(int argc, char **argv) {
    /* First of all: not dumpable, so processes of the same uid inside the
     * rocker cannot ptrace us or open our /proc files (fds, ns, mem). */
    if (prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) < 0)
        die("prctl(PR_SET_DUMPABLE)", errno, 1);
    int do_setup = argc == ROCKER_GUARD_ARGC && !strcmp(argv[3], ROCKER_GUARD_SETUP);
    if (argc < 2 || (argc > 3 && !do_setup))
        die("usage: <name> <status-fd> [<first-entry-timeout-seconds> [--setup]]", 0, 1);
    int status = (int)parse_uint(argv[1]); /* <= 999999999 */
    long long first_ms = argc > 2 ? parse_ms(argv[2]) : 10000;
    if (status < 0 || first_ms < 0)
        die("bad status fd or timeout", 0, 1);
    /* kill(-1) below would reach the whole host if we were not a namespace's init */
    if (getpid() != 1)
        die("must run as PID 1 of a new PID namespace", 0, 1);
    if (prctl(PR_SET_NAME, argv[0], 0, 0, 0) < 0)
        die("prctl(PR_SET_NAME)", errno, 1);
    if (do_setup)
        setup(status, argv[0]);

    /* Signals arrive through a signalfd. Blocked signals also get past the
     * kernel's "init ignores unhandled signals" filter. SIG_IGN survives
     * exec, so reset them: an ignored SIGCHLD would auto-reap and never wake us.
     * The mask survives exec too: the spawner blocks everything; set ours. */
    sigset_t set;
    sigemptyset(&set);
    int sigs[] = {SIGCHLD, SIGTERM, SIGINT, SIGHUP};
    struct sigaction sa = {.sa_handler = SIG_DFL};
    for (int i = 0; i < 4; i++) {
        sigaddset(&set, sigs[i]);
        sigaction(sigs[i], &sa, NULL);
    }
    sa.sa_handler = SIG_IGN;
    if (sigprocmask(SIG_SETMASK, &set, NULL) < 0 || sigaction(SIGPIPE, &sa, NULL) < 0)
        die("signal setup", errno, 1);
    pfds[0].fd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
    pfds[0].events = POLLIN;
    if (pfds[0].fd < 0)
        die("signalfd", errno, 1);

    /* This /proc is the rocker's own, mounted for our PID namespace. */
    procfd = open("/proc", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (procfd < 0)
        die("open /proc", errno, 1);
    lastpidfd = open("/proc/sys/kernel/ns_last_pid", O_RDONLY | O_CLOEXEC);
    if (lastpidfd < 0)
        die("open /proc/sys/kernel/ns_last_pid", errno, 1);
    long initial = last_pid(), last = initial;
    if (initial < 0)
        die("read /proc/sys/kernel/ns_last_pid", errno, 1);

    if (write(status, &(char){ROCKER_GUARD_READY}, 1) != 1)
        die("write status fd", errno, 1);
    close(status);

    long long start = now_ms(), first_deadline = start + first_ms, grace_deadline = 0;
    int entered = 0, event = 1, wait_ms = WAIT_MIN_MS; /* start counts as an event */
    for (;;) {
        struct signalfd_siginfo si;
        while (read(pfds[0].fd, &si, sizeof si) == sizeof si) {
            event = 1;
            /* SIGCHLD only wakes us. A sender inside the rocker has a PID in
             * our namespace; like the kernel for an unhandled init, ignore it:
             * only the daemon, outside (ssi_pid 0), may stop the rocker. */
            if (si.ssi_signo == SIGCHLD || si.ssi_pid != 0)
                continue;
            kill(-1, (int)si.ssi_signo); /* everyone in the namespace but us */
            if (!grace_deadline)
                grace_deadline = now_ms() + GRACE_MS;
        }
        while (waitpid(-1, NULL, WNOHANG) > 0)
            event = 1; /* our children and all orphans */

        long cur = last_pid();
        if (cur >= 0 && cur != last) {
            last = cur;
            event = 1;
        }
        if (last != initial)
            entered = 1;

        int live = scan(1, &event);
        /* The listing can miss a process forked while it ran (its parent
         * gone before being listed); the PID counter cannot. Look again. */
        if (live == 0 && (last_pid() != last || being_born(last)))
            live = -1, event = 1;
        long long now = now_ms();
        if (live == 0 && (entered || grace_deadline))
            _exit(0);
        if (!entered && now >= first_deadline)
            _exit(0);
        if (grace_deadline && now >= grace_deadline)
            _exit(0);

        /* Back off while idle: quick to notice short-lived apps, about one
         * wake-up per second for an idle rocker; never sleep past a deadline. */
        int max_ms = entered ? WAIT_MAX_MS : WAIT_UNENTERED_MS;
        wait_ms = event ? WAIT_MIN_MS : (wait_ms * 2 > max_ms ? max_ms : wait_ms * 2);
        long long timeout = wait_ms;
        if (!entered && first_deadline - now < timeout)
            timeout = first_deadline - now;
        if (grace_deadline && grace_deadline - now < timeout)
            timeout = grace_deadline - now;

        int n = poll(pfds, (nfds_t)(1 + ntracked), (int)timeout);
        if (n < 0 && errno != EINTR)
            die("poll", errno, 2);
        event = n > 0;
        /* A pidfd that fired is an exited process: stop watching it. */
        for (int i = 1; n > 0 && i <= ntracked;) {
            if (!pfds[i].revents) {
                i++;
                continue;
            }
            close(pfds[i].fd);
            pfds[i] = pfds[ntracked];
            tracked[i] = tracked[ntracked--];
        }
    }
}
