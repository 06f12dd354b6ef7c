/* The benchmark's launcher on the C client (clients/c, linked statically): the same whole cycles
 * as the Python launcher's, without a Python process to fork. One line per cycle on stdout:
 *   tput:   NAME T0 T_RETURN T_EXIT T_END              (the app execs the package's static `true`)
 *   start:  NAME T0 T_RETURN T_MAIN T_EXIT T_END       (the app's main() stamps CLOCK_MONOTONIC)
 * or "error ERRNO" for a failed enter. Times are CLOCK_MONOTONIC ns, which every namespace shares.
 *
 * usage: launcher MODE N PKG EXEC_DIR DATA_DIR APP UID GID READY_FD GO_FD OVERLAY...
 * It writes one byte to READY_FD, then waits for EOF on GO_FD, so that launchers start together. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "lib.h"

struct app_arg {
    const char *path;
    int stamp_fd; /* -1: exec `app` (a static true); else exec `app s` with stdout on this fd */
};

static long long now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1000000000LL + t.tv_nsec;
}

static int app(void *p) {
    const struct app_arg *a = p;
    char *const true_argv[] = {"app", NULL}, *const stamp_argv[] = {"app", "s", NULL};
    if (a->stamp_fd >= 0 && dup2(a->stamp_fd, 1) < 0)
        return 126;
    execv(a->path, a->stamp_fd >= 0 ? stamp_argv : true_argv);
    return 127;
}

static void wait_gone(int pid) {
    int pfd = (int)syscall(SYS_pidfd_open, pid, 0);
    if (pfd < 0)
        return; /* already gone */
    struct pollfd p = {.fd = pfd, .events = POLLIN};
    poll(&p, 1, 15000);
    close(pfd);
}

int main(int argc, char **argv) {
    if (argc < 11) {
        fprintf(stderr, "usage: launcher MODE N PKG EXEC_DIR DATA_DIR APP UID GID READY_FD GO_FD OVERLAY...\n");
        return 2;
    }
    int stamp = strcmp(argv[1], "start") == 0, n = atoi(argv[2]);
    RockerRequest req = ROCKER_request_new();
    req.app_id = 1;
    req.app_pkg_path = argv[3];
    req.app_exec_dir = argv[4];
    req.app_data_dir = argv[5];
    req.uid = atoi(argv[7]);
    req.gid = atoi(argv[8]);
    for (int i = 11, k = 0; i < argc && k < 16; i++, k++)
        req.app_overlay_dirs[k] = argv[i];
    int ready = atoi(argv[9]), go = atoi(argv[10]);
    char c;
    if (write(ready, "r", 1) != 1 || close(ready) < 0 || read(go, &c, 1) < 0)
        return 2;
    close(go);
    setvbuf(stdout, NULL, _IOFBF, 1 << 16); /* printed at exit, not between cycles */
    for (int i = 0; i < n; i++) {
        int p[2] = {-1, -1};
        if (stamp && pipe2(p, O_CLOEXEC) < 0)
            return 3;
        struct app_arg a = {.path = argv[6], .stamp_fd = p[1]};
        long long t0 = now_ns();
        RockerResult r = ROCKER_enter_rocker(&req, app, &a);
        long long t_ret = now_ns(), t_main = 0;
        if (stamp)
            close(p[1]);
        if (r.err_no != ROCKER_ERR_success) {
            printf("error %d\n", (int)r.err_no);
            if (stamp)
                close(p[0]);
            continue;
        }
        if (stamp) {
            char buf[32] = {0};
            ssize_t got = read(p[0], buf, sizeof buf - 1);
            t_main = got > 0 ? atoll(buf) : 0;
            close(p[0]);
        }
        waitpid(r.app_pid, NULL, 0);
        long long t_exit = now_ns();
        wait_gone(r.guard_pid);
        long long t_end = now_ns();
        if (stamp)
            printf("%s %lld %lld %lld %lld %lld\n", r.guard_pname, t0, t_ret, t_main, t_exit, t_end);
        else
            printf("%s %lld %lld %lld %lld\n", r.guard_pname, t0, t_ret, t_exit, t_end);
    }
    return 0;
}
