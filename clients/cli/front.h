/* The `rocker` command's C front: `rocker run` in C on librocker_client, the rest by the Python CLI.
 *
 * Why: a Python CLI cannot start in less than ~10 ms (interpreter and site), and shell scripts and
 * CI runners call `rocker run` in loops (issue 21: at most 3x bubblewrap's whole run). The Python
 * CLI (rocker_client/cli, installed as `rocker-py`) stays the reference: this front decides as it
 * does for the command lines it fully understands, and hands every other one to it unchanged by
 * exec, as well as any failure before CMD starts (with its cause in $ROCKER_FRONT_FAILURE: the Python CLI
 * words it without asking rockerd again, one request per command).
 * docs/cli.md says which options the front takes.
 * SPDX-License-Identifier: MIT */
#ifndef ROCKER_FRONT_H
#define ROCKER_FRONT_H

#include <signal.h>
#include <sys/types.h>
#include <termios.h>

#define MAX_OVERLAYS 16 /* RockerRequest's app_overlay_dirs; more go to the Python CLI */
#define MAX_LIST 256    /* --env, --env-file given more often than this: the Python CLI */

/* `rocker run`'s command line, as rocker_client/cli/parser.py's argparse would read it. */
struct run_args {
    const char *socket, *pkg, *exec_dir, *data_dir, *workdir, *seccomp;
    const char *overlay[MAX_OVERLAYS];
    int n_overlay;
    long uid, gid, app_id; /* -1: not given (app_id defaults to 0) */
    const char *env[MAX_LIST], *env_file[MAX_LIST];
    int n_env, n_env_file, clear_env;
    char **cmd; /* CMD [ARG...], without the `--` before it */
    int n_cmd;
};

/* What the app process needs, prepared before the fork (run.py's Launch). */
struct launch {
    char **argv, **envp;
    const char *workdir;          /* --workdir: failing to enter it is an error */
    const char *fallback_workdir; /* the caller's cwd if it exists inside, else / */
    int own_group, tty_fd;
    sigset_t ignored, mask;
};

/* The parent's side of the job (rocker_client/_job.py's Job). */
struct job {
    int tty, have_attrs, job_mode, pidfd, ended;
    struct termios attrs;
    sigset_t initial_mask, ignored, forwarded;
    pid_t app_pid;
};

/* place.c: what cmd_run works out before asking rockerd; 0, or -1: let the Python CLI do it (and say why). */
int parse_run(int argc, char **argv, struct run_args *a);
int package_looks_fine(const char *pkg);
char *abspath(const char *path);
int app_ids(const struct run_args *a, long *uid, long *gid);
int app_dirs(const struct run_args *a, long app_uid, char **exec_dir, char **data_dir);
char **command_env(const struct run_args *a, const char *exec_dir);

/* job.c */
void job_prepare(struct job *j);
void job_launch(const struct job *j, struct launch *l);
int job_started(struct job *j, pid_t app_pid);
int job_wait(struct job *j);
void job_close(struct job *j);
int run_command(void *launch);

#endif
