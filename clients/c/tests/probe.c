/* Test driver for librocker_client, run by tests/test_c_client.py.
 *
 *   probe enter [key=value ...]   one ROCKER_enter_rocker; prints key=value lines
 *   probe join NAME [key=value ...]  one ROCKER_join_rocker into the live rocker NAME (exec=DIR: its
 *                                 exec dir, for in.hello); prints what `enter` prints
 *   probe guardname PID           ROCKER_get_guardname
 *
 * Request keys: app_id uid gid pkg exec data ov0..ov15 (a key left out stays NULL / 0).
 * Options:      exit=N      the app's return value
 *               pkg_pad=N   app_pkg_path is "/" and N times 'a' (a request too big to buffer)
 *               setuid=U    become uid/gid U (no groups) before the call
 *               nproc=N     RLIMIT_NPROC before the call
 *               null_req=1  null_app=1  null_name=1 (join)
 *               threads=N   N threads enter at once (exec/data get "/<i>" appended); their
 *                           apps block until every call returned
 *               hold_pipe=1 when the library forks, fork a "holder" too, which keeps a copy of
 *                           every fd open at that moment until the call returned: what an app
 *                           started by another thread does in a threaded launcher
 * SPDX-License-Identifier: MIT
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <grp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include "lib.h"

static RockerRequest req;
static char *opt_exec, *opt_data;
static int app_exit, report_w = -1, release_r = -1, release_w = -1, hold_pipe;
static pid_t holder = -1;

/* Interposes libc's fork for the library (see hold_pipe). */
pid_t fork(void) {
    pid_t (*real_fork)(void);
    *(void **)&real_fork = dlsym(RTLD_NEXT, "fork"); /* the POSIX idiom, -pedantic clean */
    pid_t pid = real_fork();
    if (pid > 0 && hold_pipe && holder < 0) {
        holder = real_fork();
        if (holder == 0) {
            char c;
            close(release_w);
            close(report_w); /* the launcher reads the app's report to EOF */
            _exit(read(release_r, &c, 1) == 0 ? 0 : 1);
        }
    }
    return pid;
}

static const char *opt(int argc, char **argv, const char *key) {
    size_t n = strlen(key);
    for (int i = 2; i < argc; i++)
        if (strncmp(argv[i], key, n) == 0 && argv[i][n] == '=')
            return argv[i] + n + 1;
    return NULL;
}

/* The open fds, as "0,1,2,..." (the listing's own fd left out). */
static void list_fds(char *out, size_t cap) {
    DIR *d = opendir("/proc/self/fd");
    size_t len = 0;
    struct dirent *e;
    out[0] = '\0';
    if (!d)
        return;
    int skip = dirfd(d);
    int fds[1024], n = 0;
    while ((e = readdir(d)) && n < 1024)
        if (e->d_name[0] != '.' && atoi(e->d_name) != skip)
            fds[n++] = atoi(e->d_name);
    closedir(d);
    for (int i = 0; i < n; i++) /* sort: readdir order is not numeric */
        for (int j = i + 1; j < n; j++)
            if (fds[j] < fds[i]) {
                int t = fds[i];
                fds[i] = fds[j];
                fds[j] = t;
            }
    for (int i = 0; i < n && len + 16 < cap; i++)
        len += (size_t)snprintf(out + len, cap - len, "%s%d", i ? "," : "", fds[i]);
}

static void status_line(const char *key, char *out, size_t cap) {
    char line[512];
    FILE *f = fopen("/proc/self/status", "r");
    out[0] = '\0';
    if (!f)
        return;
    size_t n = strlen(key);
    while (fgets(line, sizeof line, f))
        if (strncmp(line, key, n) == 0 && line[n] == ':') {
            char *v = line + n + 1;
            v += strspn(v, " \t");
            v[strcspn(v, "\n")] = '\0';
            snprintf(out, cap, "%s", v);
        }
    fclose(f);
}

static void first_line(const char *path, char *out, size_t cap) {
    FILE *f = fopen(path, "r");
    out[0] = '\0';
    if (f) {
        if (fgets(out, (int)cap, f))
            out[strcspn(out, "\n")] = '\0';
        fclose(f);
    }
}

/* The app: report what it sees, as key=value lines, wait for the launcher's release (so the
 * rocker lives meanwhile), then return app_exit. */
static int app(void *arg) {
    const char *exec_dir = arg;
    char buf[512], path[4200];
    FILE *out = fdopen(report_w, "w");
    if (!out)
        return 100;
    first_line("/proc/1/comm", buf, sizeof buf);
    fprintf(out, "in.comm=%s\n", buf);
    gethostname(buf, sizeof buf);
    fprintf(out, "in.hostname=%s\n", buf);
    fprintf(out, "in.pid=%d\nin.ppid=%d\n", (int)getpid(), (int)getppid());
    ssize_t ns_len = readlink("/proc/self/ns/pid", buf, sizeof buf - 1);
    buf[ns_len > 0 ? ns_len : 0] = '\0';
    fprintf(out, "in.pidns=%s\n", buf);
    uid_t r, e, s;
    getresuid(&r, &e, &s);
    fprintf(out, "in.uids=%d,%d,%d\n", (int)r, (int)e, (int)s);
    getresgid(&r, &e, &s);
    fprintf(out, "in.gids=%d,%d,%d\n", (int)r, (int)e, (int)s);
    fprintf(out, "in.ngroups=%d\n", getgroups(0, NULL));
    static const char *const keys[] = {"CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb", "NoNewPrivs"};
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) {
        status_line(keys[i], buf, sizeof buf);
        fprintf(out, "in.%s=%s\n", keys[i], buf);
    }
    snprintf(path, sizeof path, "%s/bin/hello", exec_dir ? exec_dir : "");
    first_line(path, buf, sizeof buf);
    fprintf(out, "in.hello=%s\n", buf);
    int procs = 0;
    DIR *d = opendir("/proc");
    struct dirent *de;
    while (d && (de = readdir(d)))
        procs += de->d_name[0] >= '1' && de->d_name[0] <= '9';
    if (d)
        closedir(d);
    fprintf(out, "in.procs=%d\n", procs);
    list_fds(buf, sizeof buf);
    fprintf(out, "in.fds=%s\n", buf);
    FILE *cg = fopen("/proc/self/cgroup", "r"); /* its cgroups, one line: "N:ctrl:/path;..." */
    fprintf(out, "in.cgroup=");
    while (cg && fgets(buf, sizeof buf, cg)) {
        buf[strcspn(buf, "\n")] = '\0';
        fprintf(out, "%s;", buf);
    }
    fprintf(out, "\n");
    if (cg)
        fclose(cg);
    fclose(out);
    close(release_w);
    char c;
    return read(release_r, &c, 1) == 0 ? app_exit : 101;
}

static void print_result(const char *prefix, RockerResult res) {
    printf("%serr_no=%d\n%sguard_pid=%d\n%sguard_pname=%s\n%sapp_pid=%d\n", prefix, res.err_no, prefix, res.guard_pid,
           prefix, res.guard_pname, prefix, res.app_pid);
}

/* ---- threads=N ---- */

struct job {
    pthread_t t;
    RockerRequest req;
    char exec[4200], data[4200];
    RockerResult res;
};

static int blocked_app(void *arg) {
    char c;
    (void)arg;
    close(release_w); /* the app's copy; the launcher keeps its own */
    return read(release_r, &c, 1) == 0 ? 0 : 1;
}

static void *thread_main(void *arg) {
    struct job *j = arg;
    j->res = ROCKER_enter_rocker(&j->req, blocked_app, NULL);
    return NULL;
}

static int threaded(int n) {
    int p[2];
    if (n < 1 || n > 64 || pipe(p) < 0)
        return 2;
    release_r = p[0];
    release_w = p[1];
    struct job *jobs = calloc((size_t)n, sizeof *jobs);
    for (int i = 0; i < n; i++) {
        jobs[i].req = req;
        snprintf(jobs[i].exec, sizeof jobs[i].exec, "%s/%d", opt_exec, i);
        snprintf(jobs[i].data, sizeof jobs[i].data, "%s/%d", opt_data, i);
        jobs[i].req.app_exec_dir = jobs[i].exec;
        jobs[i].req.app_data_dir = jobs[i].data;
    }
    for (int i = 0; i < n; i++)
        pthread_create(&jobs[i].t, NULL, thread_main, &jobs[i]);
    for (int i = 0; i < n; i++)
        pthread_join(jobs[i].t, NULL);
    /* every call returned while all apps (holding copies of each other's pipes) still run */
    printf("all_returned=1\n");
    fflush(stdout);
    close(release_w);
    close(release_r);
    for (int i = 0; i < n; i++) {
        char prefix[16];
        int status = -1;
        snprintf(prefix, sizeof prefix, "t%d.", i);
        print_result(prefix, jobs[i].res);
        if (jobs[i].res.err_no == ROCKER_ERR_success && waitpid(jobs[i].res.app_pid, &status, 0) < 0)
            status = -2;
        printf("%sapp_status=%d\n", prefix, status);
    }
    free(jobs);
    return 0;
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc >= 3 && strcmp(argv[1], "guardname") == 0) {
        print_result("", ROCKER_get_guardname(atoi(argv[2])));
        return 0;
    }
    int joining = argc >= 3 && strcmp(argv[1], "join") == 0;
    if (argc < 2 || (strcmp(argv[1], "enter") != 0 && !joining)) {
        fprintf(stderr, "usage: probe enter [key=value ...] | probe join NAME [key=value ...] | probe guardname PID\n");
        return 2;
    }
    const char *v;
    req = ROCKER_request_new();
    if ((v = opt(argc, argv, "app_id")))
        req.app_id = atoi(v);
    if ((v = opt(argc, argv, "uid")))
        req.uid = atoi(v);
    if ((v = opt(argc, argv, "gid")))
        req.gid = atoi(v);
    req.app_pkg_path = (char *)opt(argc, argv, "pkg");
    req.app_exec_dir = opt_exec = (char *)opt(argc, argv, "exec");
    req.app_data_dir = opt_data = (char *)opt(argc, argv, "data");
    for (int i = 0; i < 16; i++) {
        char key[8];
        snprintf(key, sizeof key, "ov%d", i);
        req.app_overlay_dirs[i] = (char *)opt(argc, argv, key);
    }
    hold_pipe = opt(argc, argv, "hold_pipe") != NULL;
    if ((v = opt(argc, argv, "exit")))
        app_exit = atoi(v);
    if ((v = opt(argc, argv, "pkg_pad"))) {
        size_t n = (size_t)atol(v);
        char *pad = malloc(n + 2);
        if (!pad)
            return 2;
        pad[0] = '/';
        memset(pad + 1, 'a', n);
        pad[n + 1] = '\0';
        req.app_pkg_path = pad; /* left for exit to free */
    }
    if ((v = opt(argc, argv, "nproc"))) {
        struct rlimit rl = {(rlim_t)atoi(v), (rlim_t)atoi(v)};
        if (setrlimit(RLIMIT_NPROC, &rl) < 0)
            return perror("setrlimit"), 2;
    }
    if ((v = opt(argc, argv, "setuid"))) {
        int id = atoi(v);
        if (setgroups(0, NULL) < 0 || setresgid(id, id, id) < 0 || setresuid(id, id, id) < 0)
            return perror("drop privileges"), 2;
    }
    if ((v = opt(argc, argv, "threads")))
        return threaded(atoi(v));

    char before[4096], after[4096], report[8192];
    int p[2], rel[2];
    list_fds(before, sizeof before);
    if (pipe(p) < 0 || pipe(rel) < 0)
        return 2;
    report_w = p[1];
    release_r = rel[0];
    release_w = rel[1];
    int (*the_app)(void *) = opt(argc, argv, "null_app") ? NULL : app;
    RockerResult res = joining ? ROCKER_join_rocker(opt(argc, argv, "null_name") ? NULL : argv[2], the_app, opt_exec)
                               : ROCKER_enter_rocker(opt(argc, argv, "null_req") ? NULL : &req, the_app, opt_exec);
    RockerCause cause;
    int have_cause = ROCKER_last_cause(&cause) == 0;
    close(p[1]);
    close(rel[0]);
    print_result("", res);
    printf("cause=%d\ncause.kind=%s\ncause.field=%s\ncause.step=%s\ncause.errnum=%d\ncause.reason=%s\n", have_cause,
           cause.kind, cause.field, cause.step, cause.errnum, cause.reason);
    size_t len = 0;
    ssize_t n;
    while (len < sizeof report - 1 && (n = read(p[0], report + len, sizeof report - 1 - len)) > 0)
        len += (size_t)n;
    report[len] = '\0';
    close(p[0]);
    fputs(report, stdout);
    if (res.err_no == ROCKER_ERR_success) { /* the app waits: the guard is alive */
        RockerResult gn = ROCKER_get_guardname(res.guard_pid);
        printf("gn.err_no=%d\ngn.guard_pname=%s\n", gn.err_no, gn.guard_pname);
    }
    close(rel[1]);
    if (res.err_no == ROCKER_ERR_success) {
        int status;
        pid_t w = waitpid(res.app_pid, &status, 0);
        printf("waited=%d\napp_exited=%d\napp_exit=%d\n", w == res.app_pid, WIFEXITED(status), WEXITSTATUS(status));
    }
    if (holder > 0)
        printf("holder_reaped=%d\n", waitpid(holder, NULL, 0) == holder);
    /* nothing else may be left: no child besides the app (already reaped) */
    printf("children_left=%d\n", waitpid(-1, NULL, WNOHANG) < 0 && errno == ECHILD ? 0 : 1);
    list_fds(after, sizeof after);
    printf("fds_before=%s\nfds_after=%s\n", before, after);
    return 0;
}
