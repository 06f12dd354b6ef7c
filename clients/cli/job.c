/* `rocker run`'s command as a job: process group, terminal, signals, exit status.
 * rocker_client/_job.py in C, decision for decision (its docstring says why each is so): job mode when
 * `rocker run` is alone in the terminal's foreground group, else shared mode; signals sent to
 * `rocker run` itself go on to CMD through a pidfd; those that come while the rocker is built are held.
 * SPDX-License-Identifier: MIT */
#define _GNU_SOURCE
#include "front.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef P_PIDFD
#define P_PIDFD 3
#endif
#define SI_KERNEL_CODE 0x80 /* si_code of a signal the kernel sent, e.g. the terminal's ^C */

/* Passed on to CMD; the stop signals stay at their default here (see _job.py). */
static const int FORWARDED[] = {SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2, SIGWINCH, SIGCONT, SIGALRM};
static const int RESET[] = {SIGINT,  SIGTERM, SIGHUP,  SIGQUIT, SIGUSR1, SIGUSR2, SIGWINCH,
                            SIGCONT, SIGALRM, SIGTSTP, SIGTTIN, SIGTTOU, SIGCHLD};
#define COUNT(a) (sizeof a / sizeof *a)

static volatile sig_atomic_t held[64], n_held;
static pid_t front_pid;
static struct sigaction saved[NSIG];
static int have_saved[NSIG];

static int terminating(int sig) {
    return sig == SIGINT || sig == SIGTERM || sig == SIGHUP || sig == SIGQUIT;
}

static void say(const char *prog, const char *fmt, const char *a, const char *b) {
    char line[8192];
    int n = snprintf(line, sizeof line, "%s: ", prog);
    n += snprintf(line + n, sizeof line - (size_t)n, fmt, a, b);
    if (n > (int)sizeof line - 2)
        n = (int)sizeof line - 2;
    line[n++] = '\n';
    (void)!write(2, line, (size_t)n);
}

/* A signal before CMD exists: hold it; a second terminating one gives up at once. */
static void hold(int sig) {
    if (getpid() != front_pid)
        return; /* a copy in the process that enters the rocker: not ours to act on */
    for (int i = 0; i < n_held && terminating(sig); i++)
        if (held[i] == sig) {
            static const char msg[] = "rocker: interrupted while the rocker was being set up\n";
            (void)!write(2, msg, sizeof msg - 1);
            _exit(128 + sig);
        }
    if (n_held < (int)COUNT(held))
        held[n_held++] = sig;
}

static int foreground_is(const struct job *j, pid_t pgrp) {
    return j->tty >= 0 && tcgetpgrp(j->tty) == pgrp;
}

/* Make pgrp the foreground group; works from the background too (SIGTTOU blocked). */
static void give(const struct job *j, pid_t pgrp) {
    sigset_t ttou, old;
    sigemptyset(&ttou);
    sigaddset(&ttou, SIGTTOU);
    sigprocmask(SIG_BLOCK, &ttou, &old);
    (void)tcsetpgrp(j->tty, pgrp);
    sigprocmask(SIG_SETMASK, &old, NULL);
}

static void restore_modes(const struct job *j) {
    if (!j->have_attrs)
        return;
    sigset_t ttou, old;
    sigemptyset(&ttou);
    sigaddset(&ttou, SIGTTOU);
    sigprocmask(SIG_BLOCK, &ttou, &old);
    (void)tcsetattr(j->tty, TCSADRAIN, &j->attrs);
    sigprocmask(SIG_SETMASK, &old, NULL);
}

static int alone_in_process_group(void) {
    pid_t pgrp = getpgrp(), me = getpid();
    DIR *d = opendir("/proc");
    if (!d)
        return 1;
    int alone = 1;
    struct dirent *de;
    while (alone && (de = readdir(d))) {
        if (!isdigit((unsigned char)de->d_name[0]) || atoi(de->d_name) == me)
            continue;
        char path[300], stat[1024];
        snprintf(path, sizeof path, "/proc/%s/stat", de->d_name);
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
            continue;
        ssize_t n = read(fd, stat, sizeof stat - 1);
        close(fd);
        if (n <= 0)
            continue;
        stat[n] = 0;
        char *paren = strrchr(stat, ')');
        int state_pgrp = 0;
        char state;
        int ppid;
        if (paren && sscanf(paren + 2, "%c %d %d", &state, &ppid, &state_pgrp) == 3 && state_pgrp == pgrp)
            alone = 0;
    }
    closedir(d);
    return alone;
}

static void set_handler(int sig, void (*handler)(int)) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = handler;
    sa.sa_flags = SA_RESTART;
    sigemptyset(&sa.sa_mask);
    if (!have_saved[sig])
        have_saved[sig] = sigaction(sig, &sa, &saved[sig]) == 0;
    else
        sigaction(sig, &sa, NULL);
}

void job_prepare(struct job *j) {
    memset(j, 0, sizeof *j);
    j->tty = j->pidfd = -1;
    front_pid = getpid();
    sigset_t chld;
    sigemptyset(&chld);
    sigaddset(&chld, SIGCHLD);
    sigprocmask(SIG_BLOCK, &chld, &j->initial_mask);
    sigemptyset(&j->ignored);
    sigemptyset(&j->forwarded);
    for (size_t i = 0; i < COUNT(RESET); i++) {
        struct sigaction sa;
        if (sigaction(RESET[i], NULL, &sa) == 0 && !(sa.sa_flags & SA_SIGINFO) && sa.sa_handler == SIG_IGN)
            sigaddset(&j->ignored, RESET[i]);
    }
    for (size_t i = 0; i < COUNT(FORWARDED); i++)
        if (!sigismember(&j->ignored, FORWARDED[i]))
            sigaddset(&j->forwarded, FORWARDED[i]);
    if (sigismember(&j->ignored, SIGCHLD)) /* the kernel would reap CMD before we could wait for it */
        set_handler(SIGCHLD, SIG_DFL);
    j->tty = open("/dev/tty", O_RDWR | O_NOCTTY | O_CLOEXEC);
    if (j->tty >= 0)
        j->have_attrs = tcgetattr(j->tty, &j->attrs) == 0;
    j->job_mode = foreground_is(j, getpgrp()) && alone_in_process_group();
    if (j->job_mode) {
        for (size_t i = 0; i < COUNT(FORWARDED); i++)
            if (sigismember(&j->forwarded, FORWARDED[i]))
                set_handler(FORWARDED[i], hold);
    } else {
        /* Shared mode: pending until CMD exists, so that wait reads each one's si_code (_job.py) */
        sigprocmask(SIG_BLOCK, &j->forwarded, NULL);
    }
}

void job_launch(const struct job *j, struct launch *l) {
    char *cwd = getcwd(NULL, 0);
    l->fallback_workdir = cwd ? cwd : "/";
    l->own_group = j->job_mode;
    l->tty_fd = j->job_mode ? j->tty : -1;
    l->ignored = j->ignored;
    l->mask = j->initial_mask;
}

static void on_signal(struct job *j, int sig, int si_code) {
    if (si_code == SI_KERNEL_CODE && !j->job_mode)
        return; /* the terminal sent it to the whole group, CMD included */
    if (sig == SIGCONT && j->job_mode && !j->ended) {
        if (foreground_is(j, getpgrp()))
            give(j, j->app_pid); /* `fg`: the terminal goes back to CMD */
        (void)killpg(j->app_pid, SIGCONT);
        return;
    }
    (void)syscall(SYS_pidfd_send_signal, j->pidfd, sig, NULL, 0);
}

int job_started(struct job *j, pid_t app_pid) {
    j->app_pid = app_pid;
    j->pidfd = (int)syscall(SYS_pidfd_open, app_pid, 0);
    if (j->pidfd < 0)
        return -1;
    if (j->job_mode) {
        (void)setpgid(app_pid, app_pid); /* the app does the same; whoever is first wins the race */
        give(j, app_pid);
    }
    sigprocmask(SIG_BLOCK, &j->forwarded, NULL);
    /* Handlers for signals caught before the block above have run by now. */
    int n = n_held;
    for (int i = 0; i < n; i++)
        on_signal(j, held[i], 0);
    n_held = 0;
    return 0;
}

static void app_stopped(struct job *j) {
    if (!j->job_mode || j->tty < 0)
        return; /* nobody to show the stop to: wait until someone continues CMD */
    give(j, getpgrp());
    kill(getpid(), SIGSTOP);
    /* `fg` or `bg` continued us; the SIGCONT that did it waits in the set job_wait takes from */
}

/* CMD's exit status, 128+N if signal N killed it; -1 while it runs. */
static int check_app(struct job *j) {
    siginfo_t si;
    memset(&si, 0, sizeof si);
    if (waitid(P_PIDFD, (id_t)j->pidfd, &si, WEXITED | WSTOPPED | WNOHANG | WNOWAIT) < 0 || si.si_pid == 0)
        return -1;
    if (si.si_code == CLD_STOPPED) {
        siginfo_t consumed;
        (void)waitid(P_PIDFD, (id_t)j->pidfd, &consumed, WSTOPPED | WNOHANG); /* this stop report */
        app_stopped(j);
        return -1;
    }
    j->ended = 1; /* before reaping: nothing may signal the PID (or group) once it can be reused */
    siginfo_t done;
    while (waitid(P_PIDFD, (id_t)j->pidfd, &done, WEXITED) < 0 && errno == EINTR)
        ;
    if (j->job_mode && j->tty >= 0)
        give(j, getpgrp());
    if (si.si_code == CLD_EXITED)
        return si.si_status;
    if (foreground_is(j, getpgrp()))
        restore_modes(j);
    return 128 + si.si_status;
}

int job_wait(struct job *j) {
    sigset_t waited = j->forwarded;
    sigaddset(&waited, SIGCHLD);
    for (;;) {
        int code = check_app(j);
        if (code >= 0)
            return code;
        siginfo_t si;
        struct timespec second = {1, 0};
        int sig = sigtimedwait(&waited, &si, &second);
        if (sig > 0 && sig != SIGCHLD)
            on_signal(j, sig, si.si_code);
    }
}

/* Back to how `rocker run` started; safe after any failure. */
void job_close(struct job *j) {
    if (j->job_mode && j->tty >= 0)
        give(j, getpgrp());
    for (int sig = 1; sig < NSIG; sig++)
        if (have_saved[sig]) {
            sigaction(sig, &saved[sig], NULL);
            have_saved[sig] = 0;
        }
    /* Signals that came after CMD ended are dropped. */
    sigset_t late = j->forwarded;
    sigaddset(&late, SIGCHLD);
    for (int sig = 1; sig < NSIG; sig++)
        if (sigismember(&j->initial_mask, sig))
            sigdelset(&late, sig);
    struct timespec zero = {0, 0};
    while (sigtimedwait(&late, NULL, &zero) > 0)
        ;
    sigprocmask(SIG_SETMASK, &j->initial_mask, NULL);
    if (j->pidfd >= 0)
        close(j->pidfd);
    if (j->tty >= 0)
        close(j->tty);
    j->pidfd = j->tty = -1;
    n_held = 0;
}

/* ---- the app process, already inside the rocker (_job.py's run_command) ---- */

/* os.execvpe: CMD with a '/' as it is, else each dir of the new environment's PATH in turn; the error
 * told is the first that is not "no such file" (ENOENT, ENOTDIR), else the last. */
static int exec_search(char **argv, char **envp) {
    const char *file = argv[0];
    if (strchr(file, '/')) {
        execve(file, argv, envp);
        return errno;
    }
    const char *path = NULL;
    for (char **e = envp; *e && !path; e++)
        if (!strncmp(*e, "PATH=", 5))
            path = *e + 5;
    if (!path)
        path = "/bin:/usr/bin";
    int saved_err = 0, last = ENOENT;
    size_t flen = strlen(file);
    for (const char *dir = path, *end;; dir = end + 1) {
        end = strchrnul(dir, ':');
        size_t dlen = (size_t)(end - dir);
        char full[8192];
        if (dlen + flen + 2 <= sizeof full) {
            int slash = dlen && dir[dlen - 1] != '/';
            memcpy(full, dir, dlen);
            if (slash)
                full[dlen] = '/';
            memcpy(full + dlen + (size_t)slash, file, flen + 1);
            execve(full, argv, envp);
            last = errno;
        } else {
            last = ENAMETOOLONG;
        }
        if (last != ENOENT && last != ENOTDIR && !saved_err)
            saved_err = last;
        if (!*end)
            break;
    }
    return saved_err ? saved_err : last;
}

int run_command(void *arg) {
    const struct launch *l = arg;
    const char *prog = "rocker run";
    if (l->own_group)
        (void)setpgid(0, 0);
    if (l->tty_fd >= 0) { /* a background group now: a blocked SIGTTOU lets tcsetpgrp through */
        sigset_t ttou;
        sigemptyset(&ttou);
        sigaddset(&ttou, SIGTTOU);
        sigprocmask(SIG_BLOCK, &ttou, NULL);
        (void)tcsetpgrp(l->tty_fd, getpgrp());
    }
    for (size_t i = 0; i < COUNT(RESET); i++)
        signal(RESET[i], sigismember(&l->ignored, RESET[i]) ? SIG_IGN : SIG_DFL);
    signal(SIGPIPE, SIG_DFL);
    signal(SIGXFSZ, SIG_DFL);
    if (l->workdir) {
        if (chdir(l->workdir) < 0) {
            say(prog, "--workdir %s: %s in the rocker: name a directory that exists there", l->workdir,
                strerror(errno));
            return 125;
        }
    } else if (chdir(l->fallback_workdir) < 0) {
        (void)!chdir("/");
    }
    sigprocmask(SIG_SETMASK, &l->mask, NULL);
    const char *cmd = l->argv[0];
    int err = exec_search(l->argv, l->envp);
    if (err == ENOENT) {
        say(prog,
            strchr(cmd, '/') ? "%s: no such file in the rocker: check the path (see --exec-dir for where the package "
                               "is)%s"
                             : "%s: command not found in the rocker: give its path, or put it in the package's bin/%s",
            cmd, "");
        return 127;
    }
    say(prog, "%s: cannot execute in the rocker: %s: check that it is an executable file the app's uid may run", cmd,
        strerror(err));
    return 126;
}
