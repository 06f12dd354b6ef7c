/* librocker_client: the seed's C API on rockerd's varlink protocol.
 *
 * The same steps as rocker_client/enter.py, in C:
 *
 *   caller: connect, send io.rocker.Rocker.Create (ROCKER_enter_rocker) or .Join (ROCKER_join_rocker:
 *           a live rocker, `rocker exec`), receive the reply and the namespace fds (the same for both)
 *   └─ fork ──> intermediate (single-threaded): joins the rocker with rocker-join.c's
 *               rocker_join_ns, the same code the Python client runs (setgroups, setns user
 *               first, uid/gid 0 inside, the app capability set, no_new_privs)
 *               └─ clone(CLONE_PARENT) ──> app: runs app(app_args) as the caller's child
 *   The intermediate reports "P<pid>" or "E<errno> <step>" (rocker-join.h).
 *
 * Only the four ROCKER_* functions are exported (built with -fvisibility=hidden).
 * SPDX-License-Identifier: MIT
 */
#define _GNU_SOURCE
#include "lib.h"
#include "rkjson.h"
#include "rocker-join.h"
#include "rocker-seccomp.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define DEFAULT_SOCKET "/run/rocker/rockerd.sock"
#define CREATE "io.rocker.Rocker.Create"
#define JOIN "io.rocker.Rocker.Join"
#define TIMEOUT_MS 30000              /* the whole call, as rocker_client.wire */
#define MAX_REPLY (16u * 1024 * 1024) /* a larger reply means a broken server */
#define MAX_FDS 253                   /* SCM_MAX_FD */
#define CHUNK 65536
#define NNS ROCKER_NNS

/* The namespaces' names in the Create reply, in the order they are entered (rocker-join.h). */
static const char *const NS_NAME[NNS] = {"user", "mnt", "pid", "net", "uts", "ipc"};

struct fds {
    int fd[MAX_FDS];
    int n;
};

/* The parts of a Create reply (or error reply) this library reads. */
struct reply {
    char error[256];
    int is_error;
    long long guard_pid, ns[NNS], seccomp; /* seccomp: index of the app's syscall filter, if any */
    int have_pid, have_ns[NNS], have_seccomp;
    long long cgroup[ROCKER_MAX_CGROUPS]; /* indexes of the cgroup.procs fds the app joins */
    int n_cgroup;
    char pname[16];
    int have_pname;
    char field[128], step[128], parameter[128], reason[512];
    int have_field, have_errnum;
    long long errnum;
};

/* The calling thread's last failure (ROCKER_last_cause): debug() keeps its line as the reason, the
 * failing step adds kind, field, step and errno; a call starts with it cleared. initial-exec: no
 * __tls_get_addr, so the library still needs libc alone (its ~740 bytes come from glibc's static TLS surplus, also
 * after a dlopen). */
static __thread RockerCause last_cause __attribute__((tls_model("initial-exec"))); /* needs no ld.so symbol */

/* src into dst[cap], truncated, NUL-terminated. */
static void copy_str(char *dst, size_t cap, const char *src) {
    size_t n = 0;
    for (; n + 1 < cap && src[n]; n++)
        dst[n] = src[n];
    dst[n] = 0;
}

static void clear_cause(void) {
    memset(&last_cause, 0, sizeof last_cause);
}

/* kind (not replaced once set, so that the first, most precise one stays), step, errno. */
static void note_cause(const char *kind, const char *step, int errnum) {
    if (!last_cause.kind[0])
        copy_str(last_cause.kind, sizeof last_cause.kind, kind);
    if (step)
        copy_str(last_cause.step, sizeof last_cause.step, step);
    if (errnum)
        last_cause.errnum = errnum;
}

/* ROCKER_CLIENT_DEBUG=1 in the environment: say why a call failed on stderr (there is no
 * room for a reason in the seed's RockerResult). Only ever called in the caller's process. */
__attribute__((format(printf, 1, 2))) static void debug(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(last_cause.reason, sizeof last_cause.reason, fmt, ap); /* also the cause's reason */
    va_end(ap);
    const char *on = getenv("ROCKER_CLIENT_DEBUG");
    if (!on || !*on || strcmp(on, "0") == 0)
        return;
    fprintf(stderr, "librocker_client: %s\n", last_cause.reason);
}

/* The cause's kind for a failure of this library's own (rockerd's errors set theirs first). */
static const char *own_kind(ROCKER_ERR err) {
    switch (err) {
    case ROCKER_ERR_param_invalid: return "param";
    case ROCKER_ERR_server_unaddr_invalid: return "connect";
    case ROCKER_ERR_send_req_failed: return "send";
    case ROCKER_ERR_recv_resp_failed: return "receive";
    case ROCKER_ERR_enter_rocker_failed: return "enter";
    case ROCKER_ERR_app_exec_failed: return "app";
    default: return "sys";
    }
}

static RockerResult result(ROCKER_ERR err) {
    RockerResult r;
    memset(&r, 0, sizeof r);
    r.err_no = err;
    if (err != ROCKER_ERR_success && err != ROCKER_ERR_get_guardname_failed) /* not a call to rockerd */
        note_cause(own_kind(err), NULL, 0);
    return r;
}

static void close_fds(struct fds *f) {
    for (int i = 0; i < f->n; i++)
        close(f->fd[i]);
    f->n = 0;
}

static long long now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Wait until fd is ready for `events` or the deadline passes (errno ETIMEDOUT). */
static int wait_fd(int fd, short events, long long deadline) {
    for (;;) {
        long long left = deadline - now_ms();
        if (left <= 0) {
            errno = ETIMEDOUT;
            return -1;
        }
        struct pollfd p = {.fd = fd, .events = events};
        int n = poll(&p, 1, (int)left);
        if (n > 0)
            return 0;
        if (n < 0 && errno != EINTR)
            return -1;
    }
}

/* ---- the varlink call ---- */

/* -1 (and b->failed set) on allocation failure; call_and_enter checks b->failed. */
static int encode_create(struct rkj_buf *b, const RockerRequest *req, const RockerOptions *opts) {
    rkj_puts(b, "{\"method\":\"" CREATE "\",\"parameters\":{\"app_id\":");
    rkj_put_int(b, req->app_id);
    rkj_puts(b, ",\"uid\":");
    rkj_put_int(b, req->uid);
    rkj_puts(b, ",\"gid\":");
    rkj_put_int(b, req->gid);
    rkj_puts(b, ",\"app_pkg_path\":");
    rkj_put_string(b, req->app_pkg_path); /* NULL goes as null: rockerd says which field is missing */
    rkj_puts(b, ",\"app_exec_dir\":");
    rkj_put_string(b, req->app_exec_dir);
    rkj_puts(b, ",\"app_data_dir\":");
    rkj_put_string(b, req->app_data_dir);
    rkj_puts(b, ",\"app_overlay_dirs\":[");
    int n = 0;
    for (size_t i = 0; i < sizeof req->app_overlay_dirs / sizeof req->app_overlay_dirs[0]; i++) {
        if (!req->app_overlay_dirs[i])
            continue;
        if (n++)
            rkj_put(b, ",", 1);
        rkj_put_string(b, req->app_overlay_dirs[i]);
    }
    rkj_put(b, "]", 1);
    if (opts && opts->seccomp) {
        rkj_puts(b, ",\"seccomp\":");
        rkj_put_string(b, opts->seccomp);
    }
    rkj_puts(b, "}}");
    rkj_put(b, "", 1); /* the varlink message terminator */
    return b->failed ? -1 : 0;
}

static int encode_join(struct rkj_buf *b, const char *guard_pname) {
    rkj_puts(b, "{\"method\":\"" JOIN "\",\"parameters\":{\"guard_pname\":");
    rkj_put_string(b, guard_pname);
    rkj_puts(b, "}}");
    rkj_put(b, "", 1);
    return b->failed ? -1 : 0;
}

static int connect_daemon(const char *path, ROCKER_ERR *err) {
    struct sockaddr_un addr;
    memset(&addr, 0, sizeof addr);
    addr.sun_family = AF_UNIX;
    if (strlen(path) >= sizeof addr.sun_path) {
        debug("socket path too long: %s", path);
        note_cause("connect", NULL, ENAMETOOLONG);
        *err = ROCKER_ERR_server_unaddr_invalid;
        return -1;
    }
    strcpy(addr.sun_path, path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        debug("socket: %s", strerror(errno));
        note_cause("sys", "socket", errno);
        *err = ROCKER_ERR_sys;
        return -1;
    }
    if (connect(fd, (struct sockaddr *)&addr, sizeof addr) < 0) {
        int e = errno;
        socklen_t len = sizeof e;
        /* interrupted: the connection goes on; wait for it and read its outcome */
        if (e == EINTR && wait_fd(fd, POLLOUT, now_ms() + TIMEOUT_MS) == 0 &&
            getsockopt(fd, SOL_SOCKET, SO_ERROR, &e, &len) == 0 && e == 0)
            return fd;
        debug("cannot connect to %s: %s", path, strerror(e));
        note_cause("connect", NULL, e);
        close(fd);
        *err = ROCKER_ERR_server_unaddr_invalid;
        return -1;
    }
    return fd;
}

static int send_all(int fd, const char *data, size_t len, long long deadline) {
    size_t off = 0;
    while (off < len) {
        ssize_t n = send(fd, data + off, len - off, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n >= 0)
            off += (size_t)n;
        else if (errno == EAGAIN) {
            if (wait_fd(fd, POLLOUT, deadline) < 0)
                return -1;
        } else if (errno != EINTR)
            return -1;
    }
    return 0;
}

/* Read up to the first NUL into *frame (malloc'd, NUL-terminated there), collecting every fd
 * that comes with it. On failure nothing stays open or allocated. */
static int recv_frame(int fd, char **frame, struct fds *fds, long long deadline) {
    char *buf = NULL;
    size_t len = 0, cap = 0;
    union {
        char space[CMSG_SPACE(MAX_FDS * sizeof(int))];
        struct cmsghdr align;
    } ctl;
    fds->n = 0;
    for (;;) {
        if (cap - len < CHUNK) {
            if (cap >= MAX_REPLY) {
                debug("reply larger than %u bytes", MAX_REPLY);
                goto fail;
            }
            char *more = realloc(buf, cap + CHUNK);
            if (!more) {
                debug("out of memory for the reply");
                goto fail;
            }
            buf = more;
            cap += CHUNK;
        }
        struct iovec iov = {.iov_base = buf + len, .iov_len = cap - len};
        struct msghdr msg = {
            .msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl.space, .msg_controllen = sizeof ctl.space};
        ssize_t n = recvmsg(fd, &msg, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN && wait_fd(fd, POLLIN, deadline) == 0)
                continue;
            debug("receiving the reply failed: %s", strerror(errno));
            note_cause("receive", NULL, errno);
            goto fail;
        }
        int overflow = 0;
        for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
            if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
                continue;
            size_t k = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
            for (size_t i = 0; i < k; i++) {
                int got;
                memcpy(&got, CMSG_DATA(c) + i * sizeof(int), sizeof got);
                if (fds->n < MAX_FDS)
                    fds->fd[fds->n++] = got;
                else {
                    close(got);
                    overflow = 1;
                }
            }
        }
        if (overflow || (msg.msg_flags & MSG_CTRUNC)) {
            debug("too many file descriptors with the reply");
            goto fail;
        }
        if (n == 0) {
            debug("connection closed before a complete reply");
            goto fail;
        }
        char *nul = memchr(buf + len, '\0', (size_t)n);
        len += (size_t)n;
        if (nul) {
            *frame = buf;
            return (int)(nul - buf);
        }
    }
fail:
    free(buf);
    close_fds(fds);
    return -1;
}

/* A string value into out (cap bytes, truncated); *ok if it was a string that fit, without NUL. */
static int read_str(struct rkj_in *in, char *out, size_t cap, int *ok) {
    size_t len;
    int nul;
    if (rkj_peek(in) != '"')
        return rkj_skip(in);
    if (rkj_string(in, out, cap, &len, &nul) < 0)
        return -1;
    if (ok)
        *ok = !nul && len < cap;
    return 0;
}

static int read_int(struct rkj_in *in, long long *v, int *ok) {
    char c = rkj_peek(in);
    if (c != '-' && (c < '0' || c > '9'))
        return rkj_skip(in);
    struct rkj_in save = *in;
    if (rkj_int(in, v) == 0) {
        *ok = 1;
        return 0;
    }
    *in = save; /* a fraction or a huge number: valid JSON, just not ours */
    return rkj_skip(in);
}

/* "cgroups": [i, ...]: where the rocker's cgroup.procs fds are among those received. */
static int read_cgroup_indexes(struct rkj_in *in, struct reply *r) {
    if (rkj_peek(in) != '[')
        return rkj_skip(in);
    in->p++;
    if (rkj_peek(in) == ']') {
        in->p++;
        return 0;
    }
    for (;;) {
        if (r->n_cgroup >= ROCKER_MAX_CGROUPS || rkj_int(in, &r->cgroup[r->n_cgroup++]) < 0)
            return -1;
        char c = rkj_peek(in);
        in->p++;
        if (c == ']')
            return 0;
        if (c != ',')
            return -1;
    }
}

static int parse_parameters(struct rkj_in *in, struct reply *r) {
    char key[32];
    int count = 0, k;
    if (rkj_peek(in) == 'n')
        return rkj_skip(in); /* null */
    if (rkj_obj_begin(in) < 0)
        return -1;
    while ((k = rkj_obj_key(in, &count, key, sizeof key)) == 1) {
        int rc;
        if (strcmp(key, "guard_pid") == 0)
            rc = read_int(in, &r->guard_pid, &r->have_pid);
        else if (strcmp(key, "guard_pname") == 0)
            rc = read_str(in, r->pname, sizeof r->pname, &r->have_pname);
        else if (strcmp(key, "field") == 0) {
            r->have_field = 1;
            rc = read_str(in, r->field, sizeof r->field, NULL);
        } else if (strcmp(key, "step") == 0)
            rc = read_str(in, r->step, sizeof r->step, NULL);
        else if (strcmp(key, "parameter") == 0)
            rc = read_str(in, r->parameter, sizeof r->parameter, NULL);
        else if (strcmp(key, "errno") == 0)
            rc = read_int(in, &r->errnum, &r->have_errnum);
        else if (strcmp(key, "reason") == 0)
            rc = read_str(in, r->reason, sizeof r->reason, NULL);
        else if (strcmp(key, "cgroups") == 0)
            rc = read_cgroup_indexes(in, r);
        else if (strcmp(key, "seccomp") == 0)
            rc = read_int(in, &r->seccomp, &r->have_seccomp); /* null: unconfined */
        else if (strcmp(key, "namespaces") == 0 && rkj_peek(in) == '{') {
            char name[8];
            int n = 0, kk;
            rkj_obj_begin(in);
            while ((kk = rkj_obj_key(in, &n, name, sizeof name)) == 1) {
                int i = 0;
                while (i < NNS && strcmp(name, NS_NAME[i]) != 0)
                    i++;
                if ((i < NNS ? read_int(in, &r->ns[i], &r->have_ns[i]) : rkj_skip(in)) < 0)
                    return -1;
            }
            rc = kk;
        } else
            rc = rkj_skip(in);
        if (rc < 0)
            return -1;
    }
    return k;
}

static int parse_reply(const char *frame, size_t len, struct reply *r) {
    struct rkj_in in = {.p = frame, .end = frame + len};
    char key[32];
    int count = 0, k;
    memset(r, 0, sizeof *r);
    if (rkj_obj_begin(&in) < 0)
        return -1;
    while ((k = rkj_obj_key(&in, &count, key, sizeof key)) == 1) {
        int rc;
        if (strcmp(key, "parameters") == 0)
            rc = parse_parameters(&in, r);
        else if (strcmp(key, "error") == 0 && rkj_peek(&in) == '"') {
            rc = read_str(&in, r->error, sizeof r->error, NULL);
            r->is_error = 1;
        } else if (strcmp(key, "error") == 0 && rkj_peek(&in) != 'n')
            return -1; /* error is a string or nothing */
        else
            rc = rkj_skip(&in);
        if (rc < 0)
            return -1;
    }
    return k < 0 ? -1 : rkj_end(&in);
}

/* The seed's number for a varlink error, as rocker_client.enter._remote_err. */
static ROCKER_ERR remote_err(const char *name) {
    const char *dot = strrchr(name, '.');
    const char *s = dot ? dot + 1 : name;
    if (!strcmp(s, "InvalidRequest") || !strcmp(s, "PermissionDenied") || !strcmp(s, "InvalidParameter") ||
        !strcmp(s, "ProtocolViolation"))
        return ROCKER_ERR_param_invalid;
    if (!strcmp(s, "BuildFailed") || !strcmp(s, "LimitReached"))
        return ROCKER_ERR_build_rocker_failed;
    if (!strcmp(s, "NoSuchRocker")) /* Join: the rocker has ended, or never was */
        return ROCKER_ERR_enter_rocker_failed;
    return ROCKER_ERR_unknown;
}

/* The cause of an error reply, as rocker_client.enter.wire_failure reads it. */
static void remote_cause(const struct reply *r) {
    const char *where = r->field[0] ? r->field : r->step[0] ? r->step : r->parameter;
    debug("%s: %s%s%s", r->error, where, where[0] ? ": " : "", r->reason);
    const char *dot = strrchr(r->error, '.');
    const char *kind = dot ? dot + 1 : r->error;
    if (!strcmp(kind, "NoSuchRocker"))
        snprintf(last_cause.reason, sizeof last_cause.reason, "no live rocker is called '%s'", r->pname);
    else
        copy_str(last_cause.reason, sizeof last_cause.reason,
                 r->reason[0]      ? r->reason
                 : r->parameter[0] ? r->parameter
                                   : r->error);
    copy_str(last_cause.field, sizeof last_cause.field, r->field[0] || !r->have_field ? r->field : "request");
    note_cause(kind, r->step, r->have_errnum && r->errnum > 0 && r->errnum <= INT32_MAX ? (int)r->errnum : 0);
}

/* ---- entering ---- */

/* The forked intermediate: plain syscalls only, no locks, no malloc (the caller may have threads).
 * Never returns. */
/* The reply's `cgroups` fds, picked from the received ones (rocker_join_ns). */
struct cgroups {
    int fd[ROCKER_MAX_CGROUPS];
    int n;
};

__attribute__((noreturn)) static void intermediate(const int ns_fd[NNS], const struct cgroups *cg,
                                                   const struct sock_fprog *filter, struct fds *all, int w,
                                                   int (*app)(void *), void *app_args) {
    const char *step = rocker_join_ns(ns_fd, 1, filter, cg->fd, cg->n);
    if (step) {
        rocker_report(w, step, errno);
        _exit(1);
    }
    close_fds(all); /* the app gets no handle on the namespaces */
    /* Raw clone, no new stack: fork semantics, but the app is the caller's child. */
    long pid = syscall(SYS_clone, (unsigned long)(CLONE_PARENT | SIGCHLD), 0, 0, 0, 0);
    if (pid == 0) {
        close(w);
        /* Any signal wakes the guard (PID 1; it ignores what comes from inside), and a woken
         * guard watches our pidfd: it ends the rocker as soon as we exit, not at its next poll. */
        kill(1, SIGCHLD);
        int code = app(app_args);
        fflush(stdout); /* as enter.py does: the app's own buffered output is not lost */
        fflush(stderr);
        _exit(code);
    }
    if (pid < 0) {
        rocker_report(w, "clone app", errno);
        _exit(1);
    }
    char ok[24];
    int n = snprintf(ok, sizeof ok, "P%ld", pid);
    (void)!write(w, ok, (size_t)n);
    _exit(0);
}

/* Fork the intermediate, collect its report. Closes every fd in `all`. */
static ROCKER_ERR start_inside(const int ns_fd[NNS], const struct cgroups *cg, const struct sock_fprog *filter,
                               struct fds *all, int (*app)(void *), void *app_args, int *app_pid) {
    int p[2];
    if (pipe2(p, O_CLOEXEC) < 0) {
        debug("pipe2: %s", strerror(errno));
        note_cause("sys", "pipe2", errno);
        close_fds(all);
        return ROCKER_ERR_sys;
    }
    pid_t pid = fork();
    if (pid == 0) {
        close(p[0]);
        intermediate(ns_fd, cg, filter, all, p[1], app, app_args);
    }
    int fork_errno = errno;
    close_fds(all);
    close(p[1]);
    if (pid < 0) {
        close(p[0]);
        debug("fork: %s", strerror(fork_errno));
        note_cause("sys", "fork", fork_errno);
        return ROCKER_ERR_sys;
    }
    /* Reap first, then read without waiting for EOF: in a threaded caller, apps started
     * meanwhile by other threads hold copies of the write end. The one report is written
     * before the intermediate exits. */
    while (waitpid(pid, NULL, 0) < 0 && errno == EINTR)
        ;
    char rep[160];
    ssize_t n;
    fcntl(p[0], F_SETFL, O_NONBLOCK);
    do
        n = read(p[0], rep, sizeof rep - 1);
    while (n < 0 && errno == EINTR);
    close(p[0]);
    if (n <= 0) {
        debug("the process entering the rocker died");
        note_cause("enter", NULL, 0);
        return ROCKER_ERR_enter_rocker_failed;
    }
    rep[n] = 0;
    if (rep[0] == 'P') {
        *app_pid = atoi(rep + 1);
        return ROCKER_ERR_success;
    }
    /* "E<errno> <step>": the one report format (rocker-join.h) */
    char *step = strchr(rep, ' ');
    int err = atoi(rep + 1);
    step = step ? step + 1 : rep;
    /* ESRCH/ENOMEM/ENOENT: the guard died, the rocker is gone; not the app's fault */
    int gone = err == ESRCH || err == ENOMEM || err == ENOENT;
    debug("%s: %s%s", step, strerror(err), gone ? " (the rocker is gone: its guard exited)" : "");
    ROCKER_ERR failed =
        !gone && !strcmp(step, "clone app") ? ROCKER_ERR_app_exec_failed : ROCKER_ERR_enter_rocker_failed;
    snprintf(last_cause.reason, sizeof last_cause.reason, "%s%s", strerror(err),
             gone ? " (the rocker is gone: its guard exited)" : "");
    note_cause(gone ? "gone" : own_kind(failed), step, err);
    return failed;
}

/* ---- the API ---- */

/* RockerOptions as the caller sized it: what this library knows of it, or -1 (a newer caller set a
 * field this library lacks, or an older size than any version had). */
static int known_options(const RockerOptions *in, RockerOptions *out) {
    memset(out, 0, sizeof *out);
    if (!in)
        return 0;
    if (in->size < offsetof(RockerOptions, seccomp) + sizeof in->seccomp || in->size > 4096)
        return -1;
    for (size_t i = sizeof *out; i < in->size; i++) /* as the kernel's clone3 and openat2 do */
        if (((const unsigned char *)in)[i])
            return -1;
    memcpy(out, in, in->size < sizeof *out ? in->size : sizeof *out);
    return 0;
}

/* Send one encoded call (Create or Join: `what`), and start the app in the rocker its reply
 * names; both replies have the same shape (rockerd/entry.py). Frees msg. */
static RockerResult call_and_enter(struct rkj_buf *msg, const char *what, int (*app)(void *), void *app_args) {
    if (msg->failed) {
        rkj_free(msg);
        debug("out of memory for the request");
        return result(ROCKER_ERR_sys);
    }
    const char *path = getenv("ROCKER_SOCKET");
    if (!path || !*path)
        path = DEFAULT_SOCKET;
    ROCKER_ERR err = ROCKER_ERR_unknown;
    int sock = connect_daemon(path, &err);
    if (sock < 0) {
        rkj_free(msg);
        return result(err);
    }
    long long deadline = now_ms() + TIMEOUT_MS;
    int sent = send_all(sock, msg->data, msg->len, deadline);
    rkj_free(msg);
    if (sent < 0) {
        int e = errno;
        debug("sending the call failed: %s", strerror(e));
        note_cause("send", NULL, e);
        close(sock);
        return result(ROCKER_ERR_send_req_failed);
    }
    struct fds fds;
    char *frame = NULL;
    int len = recv_frame(sock, &frame, &fds, deadline);
    close(sock);
    if (len < 0)
        return result(ROCKER_ERR_recv_resp_failed);
    struct reply r;
    int parsed = parse_reply(frame, (size_t)len, &r);
    free(frame); /* nothing stays allocated across the fork */
    if (parsed < 0) {
        debug("malformed reply");
        close_fds(&fds);
        return result(ROCKER_ERR_recv_resp_failed);
    }
    if (r.is_error) {
        remote_cause(&r);
        close_fds(&fds);
        return result(remote_err(r.error));
    }
    int ns_fd[NNS];
    int ok = r.have_pid && r.guard_pid > 0 && r.guard_pid <= INT32_MAX && r.have_pname;
    for (int i = 0; i < NNS; i++) {
        if (i == ROCKER_NS_NET && !r.have_ns[i]) { /* network "host": no net namespace to join */
            ns_fd[i] = -1;
            continue;
        }
        ok = ok && r.have_ns[i] && r.ns[i] >= 0 && r.ns[i] < fds.n;
        ns_fd[i] = ok ? fds.fd[r.ns[i]] : -1;
    }
    struct cgroups cg = {.n = r.n_cgroup};
    for (int i = 0; i < r.n_cgroup; i++) {
        ok = ok && r.cgroup[i] >= 0 && r.cgroup[i] < fds.n;
        cg.fd[i] = ok ? fds.fd[r.cgroup[i]] : -1;
    }
    if (!ok) {
        debug("malformed %s reply: guard_pid, guard_pname (at most 15 bytes), namespaces or cgroups "
              "missing or wrong (%d fds received)",
              what, fds.n);
        close_fds(&fds);
        return result(ROCKER_ERR_recv_resp_failed);
    }
    struct sock_fprog filter = {0, NULL}; /* read before the fork: the child only installs it */
    if (r.have_seccomp) {
        int rc = r.seccomp >= 0 && r.seccomp < fds.n ? rocker_seccomp_read(fds.fd[r.seccomp], &filter) : -EBADF;
        if (rc < 0) {
            debug("cannot read the app's syscall filter from the %s reply: %s", what, strerror(-rc));
            close_fds(&fds);
            return result(ROCKER_ERR_recv_resp_failed);
        }
    }
    RockerResult res = result(ROCKER_ERR_success);
    res.guard_pid = (int)r.guard_pid;
    memcpy(res.guard_pname, r.pname, sizeof res.guard_pname);
    res.err_no = start_inside(ns_fd, &cg, r.have_seccomp ? &filter : NULL, &fds, app, app_args, &res.app_pid);
    free(filter.filter);
    return res;
}

__attribute__((visibility("default"))) RockerResult ROCKER_enter_rocker(RockerRequest *req, int (*app)(void *),
                                                                        void *app_args) {
    return ROCKER_enter_rocker_opts(req, NULL, app, app_args);
}

__attribute__((visibility("default"))) RockerResult
ROCKER_enter_rocker_opts(RockerRequest *req, const RockerOptions *opts, int (*app)(void *), void *app_args) {
    RockerOptions known;
    clear_cause();
    if (!req || !app || known_options(opts, &known) < 0) {
        debug("%s", !req ? "req is NULL" : !app ? "app is NULL" : "opts: a size or a field this library does not know");
        return result(ROCKER_ERR_param_invalid);
    }
    struct rkj_buf msg = {0};
    encode_create(&msg, req, opts ? &known : NULL);
    return call_and_enter(&msg, "Create", app, app_args);
}

__attribute__((visibility("default"))) RockerResult ROCKER_join_rocker(const char *guard_pname, int (*app)(void *),
                                                                       void *app_args) {
    clear_cause();
    if (!guard_pname || !app) {
        debug("%s is NULL", guard_pname ? "app" : "guard_pname");
        return result(ROCKER_ERR_param_invalid);
    }
    struct rkj_buf msg = {0};
    encode_join(&msg, guard_pname);
    return call_and_enter(&msg, "Join", app, app_args);
}

__attribute__((visibility("default"))) int ROCKER_last_cause(RockerCause *out) {
    if (!out)
        return -1;
    *out = last_cause;
    if (last_cause.kind[0])
        return 0;
    memset(out, 0, sizeof *out);
    return -1;
}

__attribute__((visibility("default"))) RockerResult ROCKER_get_guardname(int pid) {
    RockerResult res = result(ROCKER_ERR_get_guardname_failed);
    char path[32], buf[4096];
    if (pid <= 0)
        return res;
    res.guard_pid = pid;
    snprintf(path, sizeof path, "/proc/%d/stat", pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return res;
    size_t len = 0;
    ssize_t n;
    while (len < sizeof buf && ((n = read(fd, buf + len, sizeof buf - len)) > 0 || (n < 0 && errno == EINTR)))
        if (n > 0)
            len += (size_t)n;
    close(fd);
    /* comm sits between the first '(' and the last ')': it may itself hold ')' */
    char *open_ = memchr(buf, '(', len), *close_ = memrchr(buf, ')', len);
    if (!open_ || !close_ || close_ < open_)
        return res;
    size_t k = (size_t)(close_ - open_ - 1);
    if (k >= sizeof res.guard_pname)
        k = sizeof res.guard_pname - 1;
    memcpy(res.guard_pname, open_ + 1, k);
    res.err_no = ROCKER_ERR_success;
    return res;
}

__attribute__((visibility("default"))) RockerRequest ROCKER_request_new(void) {
    RockerRequest req;
    memset(&req, 0, sizeof req);
    return req;
}
