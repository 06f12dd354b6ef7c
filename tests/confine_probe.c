/* The syscall filter's probe, run as the app by tests/test_confine.py (issue 17).
 *
 *   confine_probe FD           make each probed syscall, write "name errno" lines to FD
 *   (built with -DVIA_C_CLIENT: confine_probe FD key=value...  enters a rocker through
 *    librocker_client first, and probes in its app callback: pkg= exec= data= uid= gid=, and
 *    seccomp= (RockerOptions.seccomp) and optsize= (RockerOptions.size) for ROCKER_enter_rocker_opts)
 *
 * Every probe is harmless without a filter too (bad pointers, bad fds, flags the kernel
 * refuses), so that the test can run against an unfiltered rocker and see it fail. Lines:
 *   <syscall> <errno>       0 if it succeeded
 *   status <Seccomp:> <Seccomp_filters:>
 *   clone_newuser <errno>   (a fork that tries clone(CLONE_NEWUSER); 0: the child got one)
 *   fork_child_status <n>   a forked child's view of Seccomp:, after an execve of /bin/sh -c
 * SPDX-License-Identifier: MIT
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#ifdef VIA_C_CLIENT
#include "lib.h"
#endif

static int out = -1;

static void put(const char *name, long rc) {
    dprintf(out, "%s %d\n", name, rc < 0 ? errno : 0);
}

#define TRY(name, ...) (errno = 0, put(name, syscall(__VA_ARGS__)))

static void status_line(void) {
    char buf[4096];
    int fd = open("/proc/self/status", O_RDONLY | O_CLOEXEC);
    ssize_t n = fd < 0 ? -1 : read(fd, buf, sizeof buf - 1);
    if (fd >= 0)
        close(fd);
    buf[n > 0 ? n : 0] = 0;
    char *a = strstr(buf, "\nSeccomp:"), *b = strstr(buf, "\nSeccomp_filters:");
    dprintf(out, "status %d %d\n", a ? atoi(a + 9) : -1, b ? atoi(b + 17) : -1);
}

/* i386's entry point from a 64-bit process: getpid (20) through int 0x80. */
static long int80_getpid(void) {
#ifdef __x86_64__
    long ret = 20;
    __asm__ volatile("int $0x80" : "+a"(ret) : : "memory");
    if (ret < 0 && ret > -4096) {
        errno = (int)-ret;
        return -1;
    }
    return ret;
#else
    errno = ENOSYS; /* no such entry point on this architecture */
    return -1;
#endif
}

static int probe(void *unused) {
    (void)unused;
    char c = 0;
    TRY("keyctl", SYS_keyctl, 0 /* KEYCTL_GET_KEYRING_ID */, -3 /* session */, 0);
    TRY("add_key", SYS_add_key, NULL, NULL, NULL, 0, 0);
    TRY("request_key", SYS_request_key, NULL, NULL, NULL, 0);
    TRY("userfaultfd", SYS_userfaultfd, 0xffffffffL);
    TRY("perf_event_open", SYS_perf_event_open, NULL, 0, -1, -1, 0);
    TRY("bpf", SYS_bpf, -1, NULL, 0);
    TRY("io_uring_setup", SYS_io_uring_setup, 0, NULL);
    TRY("io_uring_enter", SYS_io_uring_enter, -1, 0, 0, 0, NULL, 0);
    TRY("io_uring_register", SYS_io_uring_register, -1, 0, NULL, 0);
    TRY("kexec_load", SYS_kexec_load, 0, 0, NULL, 0xffffffffL);
    TRY("kexec_file_load", SYS_kexec_file_load, -1, -1, 0, NULL, 0xffffffffL);
    TRY("open_by_handle_at", SYS_open_by_handle_at, -1, NULL, 0);
    TRY("name_to_handle_at", SYS_name_to_handle_at, AT_FDCWD, "/", NULL, NULL, 0);
    TRY("personality_no_randomize", SYS_personality, 0x0040000L);
    TRY("personality_read_implies_exec", SYS_personality, 0x0400000L);
    TRY("personality_high_bits", SYS_personality, 0x100040000L); /* the kernel reads 32 bits: ADDR_NO_RANDOMIZE */
    TRY("personality_other", SYS_personality, 0x0001L);          /* a persona Docker does not allow either */
    TRY("unshare_newuser", SYS_unshare, CLONE_NEWUSER | 0x80000000L /* invalid bit: EINVAL unfiltered */);
    TRY("unshare_newnet", SYS_unshare, CLONE_NEWNET | 0x80000000L);
    TRY("clone3", SYS_clone3, NULL, 0);
    TRY("setns", SYS_setns, -1, 0);
    TRY("ioctl_tiocsti", SYS_ioctl, -1, 0x5412L, &c);
    TRY("ioctl_tiocsti_high_bits", SYS_ioctl, -1, 0x100005412L, &c);
    TRY("ioctl_tioclinux", SYS_ioctl, -1, 0x541cL, &c);
    TRY("mount", SYS_mount, NULL, NULL, NULL, 0, NULL);
    TRY("fsopen", SYS_fsopen, NULL, 0);
    TRY("get_mempolicy", SYS_get_mempolicy, NULL, NULL, 0, NULL, 0);
    TRY("syslog", SYS_syslog, 10 /* SYSLOG_ACTION_SIZE_BUFFER */, NULL, 0);
    TRY("unknown_463", 463, -1, NULL, NULL, 0); /* setxattrat (6.13): newer than the policy */
    TRY("x32_getpid", 0x40000000L | 39);
    errno = 0;
    put("int80_getpid", int80_getpid());
    /* still allowed */
    TRY("getpid", SYS_getpid);
    TRY("ioctl_other", SYS_ioctl, -1, 0x5413L /* TIOCGWINSZ */, &c);
    TRY("personality_linux32", SYS_personality, 0x0008L);
    TRY("personality_uname26", SYS_personality, 0x20000L);
    TRY("personality_linux32_uname26", SYS_personality, 0x20008L);
    TRY("personality_query", SYS_personality, 0xffffffffL);
    TRY("personality_back", SYS_personality, 0L);
    /* clone(CLONE_NEWUSER) for real, in a child that exits at once if it got one */
    errno = 0;
    long pid = syscall(SYS_clone, (long)(CLONE_NEWUSER | SIGCHLD), 0, 0, 0, 0);
    if (pid == 0)
        _exit(0);
    put("clone_newuser", pid);
    if (pid > 0)
        waitpid((pid_t)pid, NULL, 0);
    status_line();
    /* the filter survives execve and applies to children: a child's shell reads its own status */
    pid_t child = fork();
    if (child == 0) {
        dup2(out, 1);
        execl("/bin/sh", "sh", "-c", "echo fork_child_status $(grep '^Seccomp:' /proc/self/status | cut -f2)",
              (char *)NULL);
        _exit(127);
    }
    waitpid(child, NULL, 0);
    return 0;
}

#ifdef AS_LIBRARY
int confine_probe(int fd); /* the callable app's entry: in the process that runs the Python callable */
int confine_probe(int fd) {
    out = fd;
    return probe(NULL);
}
#else
int main(int argc, char **argv) {
    if (argc < 2)
        return 2;
    out = atoi(argv[1]);
#ifdef VIA_C_CLIENT
    RockerRequest req = ROCKER_request_new();
    struct {
        RockerOptions o;
        char newer[8]; /* what a caller built against a later lib.h might send */
    } opts = {ROCKER_OPTIONS_INIT, {0}};
    for (int i = 2; i < argc; i++) {
        char *v = strchr(argv[i], '=');
        if (!v)
            return 2;
        *v++ = 0;
        if (!strcmp(argv[i], "pkg"))
            req.app_pkg_path = v;
        else if (!strcmp(argv[i], "exec"))
            req.app_exec_dir = v;
        else if (!strcmp(argv[i], "data"))
            req.app_data_dir = v;
        else if (!strcmp(argv[i], "uid"))
            req.uid = atoi(v);
        else if (!strcmp(argv[i], "gid"))
            req.gid = atoi(v);
        else if (!strcmp(argv[i], "seccomp"))
            opts.o.seccomp = v;
        else if (!strcmp(argv[i], "optsize"))
            opts.o.size = (unsigned)atoi(v);
        else if (!strcmp(argv[i], "newer"))
            opts.newer[0] = (char)atoi(v);
    }
    RockerResult res = ROCKER_enter_rocker_opts(&req, &opts.o, probe, NULL);
    if (res.err_no != ROCKER_ERR_success) {
        fprintf(stderr, "enter_rocker: %d\n", res.err_no);
        return 1;
    }
    int st;
    waitpid(res.app_pid, &st, 0);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 1;
#else
    return probe(NULL);
#endif
}
#endif
