/* `rocker`: `rocker run` here, in C on librocker_client; everything else by the Python CLI (front.h).
 * SPDX-License-Identifier: MIT */
#define _GNU_SOURCE
#include "front.h"
#include "lib.h"
#include "rkjson.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#ifndef ROCKER_PYTHON /* the interpreter setup.py built this with, if rocker-py is not beside us */
#define ROCKER_PYTHON "python3"
#endif
#define PYTHON_CLI "rocker-py"             /* the Python CLI's console script, installed beside this program */
#define FAILURE_VAR "ROCKER_FRONT_FAILURE" /* the front's failed Create, for rocker-py to word (run.py) */

/* The Python CLI, with our command line unchanged: the reference for all that is not done here. */
__attribute__((noreturn)) static void python_cli(int argc, char **argv) {
    char self[PATH_MAX], py[PATH_MAX + 16];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    char **args = calloc((size_t)argc + 4, sizeof *args);
    if (n > 0 && args) {
        self[n] = 0;
        char *slash = strrchr(self, '/');
        snprintf(py, sizeof py, "%.*s/" PYTHON_CLI, (int)(slash ? slash - self : 0), self);
        args[0] = py;
        memcpy(args + 1, argv + 1, (size_t)argc * sizeof *args); /* and argv's NULL */
        execv(py, args);
    }
    if (args) { /* no rocker-py beside us (a copy of this program elsewhere): python3 -m rocker_client.cli */
        args[0] = ROCKER_PYTHON, args[1] = "-m", args[2] = "rocker_client.cli";
        memcpy(args + 3, argv + 1, (size_t)argc * sizeof *args);
        execvp(args[0], args);
    }
    fprintf(stderr, "rocker: cannot start the Python CLI (%s beside this program, or %s -m rocker_client.cli): %s\n",
            PYTHON_CLI, ROCKER_PYTHON, strerror(errno));
    exit(125);
}

/* ROCKER_FRONT_FAILURE: why Create failed, for rocker-py to word without asking rockerd again
 * (rocker_client/cli/run.py reads it; one request per command). 0, or -1 if it cannot be set. */
static int hand_over_failure(ROCKER_ERR err_no) {
    RockerCause c;
    if (ROCKER_last_cause(&c) < 0) /* cannot be after a failed call; say something rather than ask again */
        memcpy(c.kind, "sys", 4), c.reason[0] = c.field[0] = c.step[0] = 0, c.errnum = 0;
    struct rkj_buf b = {0};
    rkj_puts(&b, "{\"err_no\":");
    rkj_put_int(&b, err_no);
    rkj_puts(&b, ",\"kind\":");
    rkj_put_string(&b, c.kind);
    rkj_puts(&b, ",\"reason\":");
    rkj_put_string(&b, c.reason);
    rkj_puts(&b, ",\"field\":");
    rkj_put_string(&b, c.field);
    rkj_puts(&b, ",\"step\":");
    rkj_put_string(&b, c.step);
    rkj_puts(&b, ",\"errno\":");
    rkj_put_int(&b, c.errnum);
    rkj_put(&b, "}", 2); /* and the NUL */
    int r = b.failed ? -1 : setenv(FAILURE_VAR, b.data, 1);
    rkj_free(&b);
    return r;
}

/* A JSON string, for the decisions' dump (tests compare it with the Python CLI's). */
static void json_str(const char *s) {
    putchar('"');
    for (const unsigned char *p = (const unsigned char *)s; *p; p++)
        if (*p == '"' || *p == '\\')
            printf("\\%c", *p);
        else if (*p < ' ' || *p >= 0x7f)
            printf("\\u%04x", *p);
        else
            putchar(*p);
    putchar('"');
}

static void json_list(const char *const *v, int n) {
    putchar('[');
    for (int i = 0; i < n; i++) {
        if (i)
            putchar(',');
        json_str(v[i]);
    }
    putchar(']');
}

/* ROCKER_FRONT_DUMP=1: print what would be asked and run, as JSON, instead of doing it (tests). */
static int dump(const RockerRequest *req, const char *seccomp, const struct run_args *a, char **envp) {
    printf("{\"params\":{\"app_id\":%d,\"uid\":%d,\"gid\":%d,\"app_pkg_path\":", req->app_id, req->uid, req->gid);
    json_str(req->app_pkg_path);
    printf(",\"app_exec_dir\":");
    json_str(req->app_exec_dir);
    printf(",\"app_data_dir\":");
    json_str(req->app_data_dir);
    printf(",\"app_overlay_dirs\":");
    json_list((const char *const *)req->app_overlay_dirs, a->n_overlay);
    printf(",\"seccomp\":");
    json_str(seccomp);
    printf("},\"socket\":");
    const char *sock = getenv("ROCKER_SOCKET");
    json_str(sock && *sock ? sock : "/run/rocker/rockerd.sock");
    printf(",\"cmd\":");
    json_list((const char *const *)a->cmd, a->n_cmd);
    printf(",\"workdir\":");
    if (a->workdir)
        json_str(a->workdir);
    else
        printf("null");
    printf(",\"env\":[");
    for (char **e = envp; *e; e++) {
        char *eq = strchr(*e, '=');
        *eq = 0;
        printf("%s[", e == envp ? "" : ",");
        json_str(*e);
        putchar(',');
        json_str(eq + 1);
        putchar(']');
        *eq = '=';
    }
    printf("]}\n");
    return 0;
}

int main(int argc, char **argv) {
    struct run_args a;
    const char *dumping = getenv("ROCKER_FRONT_DUMP");
    int dry = dumping && !strcmp(dumping, "1");
    unsetenv(FAILURE_VAR); /* only ever set by us, for the one handover below: never an inherited one */
    if (parse_run(argc, argv, &a) < 0 || package_looks_fine(a.pkg) < 0)
        goto python;
    long uid, gid;
    char *exec_dir, *data_dir;
    if (app_ids(&a, &uid, &gid) < 0 || uid > INT_MAX || gid > INT_MAX || app_dirs(&a, uid, &exec_dir, &data_dir) < 0)
        goto python;
    RockerRequest req = ROCKER_request_new();
    req.app_id = a.app_id < 0 ? 0 : (int)a.app_id;
    req.uid = (int)uid, req.gid = (int)gid;
    req.app_exec_dir = exec_dir, req.app_data_dir = data_dir;
    if (!(req.app_pkg_path = abspath(a.pkg))) /* rockerd follows symlinks as the caller, where it opens it */
        goto python;
    for (int i = 0; i < a.n_overlay; i++)
        if (!(req.app_overlay_dirs[i] = abspath(a.overlay[i])))
            goto python;
    char **envp = command_env(&a, exec_dir);
    if (!envp)
        goto python;
    const char *caller_socket = getenv("ROCKER_SOCKET"); /* the Python CLI gets the caller's environment */
    char *kept = caller_socket ? strdup(caller_socket) : NULL;
    if (a.socket && setenv("ROCKER_SOCKET", a.socket, 1) < 0) /* after CMD's environment: not in it */
        goto python;
    RockerOptions opts = ROCKER_OPTIONS_INIT;
    opts.seccomp = a.seccomp;
    if (dry)
        return dump(&req, a.seccomp, &a, envp);

    struct job job;
    struct launch launch = {.argv = a.cmd, .envp = envp, .workdir = a.workdir};
    job_prepare(&job);
    job_launch(&job, &launch);
    RockerResult res = ROCKER_enter_rocker_opts(&req, &opts, run_command, &launch);
    if (res.err_no != ROCKER_ERR_success || job_started(&job, res.app_pid) < 0) {
        /* Nothing started: the Python CLI says what went wrong in its words, from the cause we hand it
         * (it does not ask rockerd again: one request per command). */
        job_close(&job);
        if (res.err_no == ROCKER_ERR_success) { /* pidfd_open failed: CMD runs, unwatched; wait for it */
            perror("rocker: pidfd_open");
            return 125;
        }
        if (kept)
            setenv("ROCKER_SOCKET", kept, 1);
        else
            unsetenv("ROCKER_SOCKET");
        if (hand_over_failure(res.err_no) < 0) {
            fprintf(stderr, "rocker: rockerd's request failed (error %d) and the front cannot hand that over: %s\n",
                    (int)res.err_no, strerror(errno));
            return 125;
        }
        goto python;
    }
    int code = job_wait(&job);
    job_close(&job);
    return code;

python:
    if (dry) {
        puts("python");
        return 0;
    }
    python_cli(argc, argv);
}
