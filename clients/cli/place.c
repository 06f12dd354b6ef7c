/* `rocker run`'s decisions before rockerd is asked, as rocker_client/cli (parser.py, run.py, environ.py,
 * pack.py) makes them: the command line, the package's look, the app's ids, its dirs and CMD's environment.
 * Each returns -1 where the Python CLI would fail or decide in a way not copied here: it then runs instead,
 * and says what is wrong in its own words. SPDX-License-Identifier: MIT */
#define _GNU_SOURCE
#include "front.h"

#include <errno.h>
#include <fcntl.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

extern char **environ;

/* ---- the command line (parser.py's argparse, for `rocker [--socket PATH] run OPTIONS [--] CMD...`) ---- */

enum opt {
    O_SOCKET,
    O_PKG,
    O_EXEC_DIR,
    O_DATA_DIR,
    O_OVERLAY,
    O_UID,
    O_GID,
    O_APP_ID,
    O_SECCOMP,
    O_WORKDIR,
    O_ENV,
    O_ENV_FILE,
    O_CLEAR_ENV
};

/* The options taken here; any other (--network, --publish, --memory, --pids, --cpus, --pkg-sha256, --help,
 * an abbreviation argparse would accept) sends the command line to the Python CLI. */
static const struct {
    const char *name;
    enum opt opt;
} OPTIONS[] = {
    {"--socket", O_SOCKET},
    {"--pkg", O_PKG},
    {"--exec-dir", O_EXEC_DIR},
    {"--data-dir", O_DATA_DIR},
    {"--overlay", O_OVERLAY},
    {"--uid", O_UID},
    {"--gid", O_GID},
    {"--app-id", O_APP_ID},
    {"--seccomp", O_SECCOMP},
    {"--workdir", O_WORKDIR},
    {"-w", O_WORKDIR},
    {"--env", O_ENV},
    {"-e", O_ENV},
    {"--env-file", O_ENV_FILE},
    {"--clear-env", O_CLEAR_ENV},
};
static const char *const SECCOMP[] = {"default", "nested", "complain", "unconfined"};

/* parser.py's _id: a decimal number >= 0 (here: plain ASCII digits that fit an int). */
static long id_of(const char *s) {
    size_t n = strlen(s);
    if (n == 0 || n > 9 || strspn(s, "0123456789") != n)
        return -1;
    return strtol(s, NULL, 10);
}

static int take(struct run_args *a, enum opt o, const char *v) {
    switch (o) {
    case O_SOCKET: a->socket = v; return 0;
    case O_PKG: a->pkg = v; return 0;
    case O_EXEC_DIR: a->exec_dir = v; return 0;
    case O_DATA_DIR: a->data_dir = v; return 0;
    case O_WORKDIR: a->workdir = v; return 0;
    case O_OVERLAY:
        if (a->n_overlay == MAX_OVERLAYS)
            return -1;
        a->overlay[a->n_overlay++] = v;
        return 0;
    case O_UID: return (a->uid = id_of(v)) < 0 ? -1 : 0;
    case O_GID: return (a->gid = id_of(v)) < 0 ? -1 : 0;
    case O_APP_ID: return (a->app_id = id_of(v)) < 0 ? -1 : 0;
    case O_SECCOMP:
        for (size_t i = 0; i < sizeof SECCOMP / sizeof *SECCOMP; i++)
            if (!strcmp(v, SECCOMP[i]))
                return a->seccomp = SECCOMP[i], 0;
        return -1;
    case O_ENV:
        if (a->n_env == MAX_LIST)
            return -1;
        a->env[a->n_env++] = v;
        return 0;
    case O_ENV_FILE:
        if (a->n_env_file == MAX_LIST)
            return -1;
        a->env_file[a->n_env_file++] = v;
        return 0;
    case O_CLEAR_ENV: return -1; /* takes no value */
    }
    return -1;
}

/* One option at argv[*i], with its value (next arg, `--name=V`, `-wV` or `-w=V`); -1 if not one of ours. */
static int one_option(char **argv, int argc, int *i, struct run_args *a, int top) {
    const char *arg = argv[*i];
    for (size_t k = 0; k < sizeof OPTIONS / sizeof *OPTIONS; k++) {
        const char *name = OPTIONS[k].name;
        size_t n = strlen(name);
        enum opt o = OPTIONS[k].opt;
        if (top && o != O_SOCKET)
            continue;
        if (strncmp(arg, name, n))
            continue;
        const char *rest = arg + n;
        if (o == O_CLEAR_ENV) {
            if (*rest)
                continue;
            a->clear_env = 1;
            *i += 1;
            return 0;
        }
        if (*rest == '\0') { /* the value is the next arg: argparse refuses one that looks like an option */
            if (*i + 1 >= argc || !argv[*i + 1][0] || argv[*i + 1][0] == '-')
                return -1;
            *i += 2;
            return take(a, o, argv[*i - 1]);
        }
        if (*rest == '=' || name[1] != '-') { /* --name=V; -w=V and -wV (a short option's attached value) */
            const char *v = *rest == '=' ? rest + 1 : rest;
            if (!*v)
                return -1;
            *i += 1;
            return take(a, o, v);
        }
    }
    return -1;
}

int parse_run(int argc, char **argv, struct run_args *a) {
    memset(a, 0, sizeof *a);
    a->uid = a->gid = -1;
    a->seccomp = "default";
    int i = 1;
    while (i < argc && argv[i][0] == '-') /* the top level: only --socket before the command */
        if (one_option(argv, argc, &i, a, 1) < 0)
            return -1;
    if (i >= argc || strcmp(argv[i], "run"))
        return -1;
    i++;
    while (i < argc && argv[i][0] == '-' && strcmp(argv[i], "--")) /* `-` alone, -5: Python's to judge */
        if (one_option(argv, argc, &i, a, 0) < 0)
            return -1;
    if (i < argc && !strcmp(argv[i], "--"))
        i++;
    a->cmd = argv + i;
    a->n_cmd = argc - i;
    return a->pkg && a->n_cmd > 0 ? 0 : -1; /* no --pkg, no CMD: a usage error to word */
}

/* ---- the package (pack.py's check_package): a squashfs image, or one we may not read (rockerd says) ---- */

int package_looks_fine(const char *pkg) {
    struct stat st;
    if (stat(pkg, &st) == 0 && S_ISDIR(st.st_mode))
        return -1;
    int fd = open(pkg, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return errno == EACCES || errno == EPERM ? 0 : -1;
    char magic[4];
    size_t got = 0;
    ssize_t n;
    while (got < sizeof magic && ((n = read(fd, magic + got, sizeof magic - got)) > 0 || (n < 0 && errno == EINTR)))
        if (n > 0)
            got += (size_t)n;
    close(fd);
    return got == sizeof magic && !memcmp(magic, "hsqs", 4) ? 0 : -1;
}

/* ---- paths: os.path.abspath ---- */

/* posixpath.normpath: `.`, `..` and repeated slashes gone; exactly two leading slashes kept. */
static char *normpath(const char *path) {
    size_t len = strlen(path);
    char *out = malloc(len + 3);
    const char **comp = malloc((len / 2 + 2) * sizeof *comp);
    size_t *clen = malloc((len / 2 + 2) * sizeof *clen), k = 0;
    if (!out || !comp || !clen) {
        free(out), free(comp), free(clen);
        return NULL;
    }
    int initial = path[0] == '/' ? (path[1] == '/' && path[2] != '/' ? 2 : 1) : 0;
    for (const char *p = path, *e; *p; p = e) {
        while (*p == '/')
            p++;
        e = strchrnul(p, '/');
        size_t n = (size_t)(e - p);
        int dotdot = n == 2 && p[0] == '.' && p[1] == '.';
        if (n == 0 || (n == 1 && p[0] == '.'))
            continue;
        if (!dotdot || (!initial && !k) || (k && clen[k - 1] == 2 && !memcmp(comp[k - 1], "..", 2)))
            comp[k] = p, clen[k++] = n;
        else if (k)
            k--;
    }
    size_t o = (size_t)initial;
    memset(out, '/', o);
    for (size_t i = 0; i < k; i++) {
        if (i)
            out[o++] = '/';
        memcpy(out + o, comp[i], clen[i]);
        o += clen[i];
    }
    if (!o)
        out[o++] = '.';
    out[o] = 0;
    free(comp), free(clen);
    return out;
}

char *abspath(const char *path) {
    if (path[0] == '/')
        return normpath(path);
    char *cwd = getcwd(NULL, 0);
    if (!cwd)
        return NULL;
    char *joined;
    int n = asprintf(&joined, "%s%s%s", cwd, cwd[strlen(cwd) - 1] == '/' ? "" : "/", path);
    free(cwd);
    if (n < 0)
        return NULL;
    char *norm = normpath(joined);
    free(joined);
    return norm;
}

/* ---- ids and dirs (run.py's default_ids, default_dirs, _prepare_own_dirs) ---- */

int app_ids(const struct run_args *a, long *uid, long *gid) {
    if (geteuid() != 0) {
        *uid = getuid(), *gid = getgid();
    } else { /* root's apps run as nobody unless --uid 0 asks for root (docs/security.md) */
        struct passwd *pw = getpwnam("nobody");
        *uid = pw ? (long)pw->pw_uid : 65534, *gid = pw ? (long)pw->pw_gid : 65534;
    }
    if (a->uid >= 0)
        *uid = a->uid;
    if (a->gid >= 0)
        *gid = a->gid;
    return 0;
}

static int default_dirs(const char *pkg, long app_uid, char **exec_dir, char **data_dir) {
    size_t len = strlen(pkg);
    while (len && pkg[len - 1] == '/')
        len--;
    const char *slash = memrchr(pkg, '/', len);
    const char *stem = slash ? slash + 1 : pkg;
    size_t n = (size_t)(pkg + len - stem);
    if (n >= 9 && !memcmp(stem + n - 9, ".squashfs", 9))
        n -= 9;
    if (!n)
        stem = "app", n = 3;
    uid_t uid = geteuid();
    if (uid == 0) {
        if (asprintf(exec_dir, "/run/rocker/apps/%.*s", (int)n, stem) < 0)
            return -1;
        int r = app_uid == 0 ? asprintf(data_dir, "/var/lib/rocker/%.*s", (int)n, stem)
                             : asprintf(data_dir, "/var/lib/rocker/uid-%ld/%.*s", app_uid, (int)n, stem);
        return r < 0 ? -1 : 0;
    }
    const char *runtime = getenv("XDG_RUNTIME_DIR"), *data = getenv("XDG_DATA_HOME");
    char *home_share = NULL;
    if (!data || !*data) { /* os.path.expanduser("~"): $HOME, else the passwd entry, less trailing slashes */
        const char *home = getenv("HOME");
        if (!home) {
            struct passwd *pw = getpwuid(getuid());
            if (!pw)
                return -1; /* the Python CLI says to pass --data-dir */
            home = pw->pw_dir;
        }
        size_t h = strlen(home);
        while (h && home[h - 1] == '/')
            h--;
        if ((h == 1 && home[0] == '~') || asprintf(&home_share, "%.*s/.local/share", (int)h, h ? home : "/") < 0)
            return -1;
        data = home_share;
    }
    int r1 = runtime && *runtime ? asprintf(exec_dir, "%s/rocker/apps/%.*s", runtime, (int)n, stem)
                                 : asprintf(exec_dir, "/run/user/%u/rocker/apps/%.*s", uid, (int)n, stem);
    int r2 = asprintf(data_dir, "%s/rocker/%.*s", data, (int)n, stem);
    free(home_share);
    return r1 < 0 || r2 < 0 ? -1 : 0;
}

static int is_dir(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

/* os.makedirs(path, mode, exist_ok=True): missing parents with 0777, then path itself with mode. */
static int makedirs(const char *path, mode_t mode) {
    char *slash = strrchr(path, '/');
    if (slash && slash != path) {
        char *head = strndup(path, (size_t)(slash - path));
        struct stat st;
        int r = !head ? -1 : stat(head, &st) == 0 ? 0 : makedirs(head, 0777);
        free(head);
        if (r < 0 && errno != EEXIST)
            return -1;
    }
    return mkdir(path, mode) == 0 || is_dir(path) ? 0 : -1;
}

int app_dirs(const struct run_args *a, long app_uid, char **exec_dir, char **data_dir) {
    char *def_exec = NULL, *def_data = NULL;
    if (!(a->exec_dir && a->data_dir) && default_dirs(a->pkg, app_uid, &def_exec, &def_data) < 0)
        return -1;
    *exec_dir = abspath(a->exec_dir ? a->exec_dir : def_exec);
    *data_dir = abspath(a->data_dir ? a->data_dir : def_data);
    free(def_exec);
    free(def_data);
    if (!*exec_dir || !*data_dir)
        return -1;
    if (geteuid() != 0) { /* rockerd makes missing dirs for root only */
        if (!a->exec_dir && makedirs(*exec_dir, 0755) < 0)
            return -1;
        if (!a->data_dir && makedirs(*data_dir, 0700) < 0)
            return -1;
    }
    return 0;
}

/* ---- CMD's environment (environ.py's command_env) ---- */

struct env {
    char **entry; /* "NAME=VALUE" */
    size_t n, cap;
};

static int env_set(struct env *e, const char *name, size_t name_len, const char *value) {
    char *kv;
    if (asprintf(&kv, "%.*s=%s", (int)name_len, name, value) < 0)
        return -1;
    for (size_t i = 0; i < e->n; i++)
        if (!strncmp(e->entry[i], kv, name_len + 1)) { /* a dict's update: same place, new value */
            free(e->entry[i]);
            e->entry[i] = kv;
            return 0;
        }
    if (e->n + 2 > e->cap) {
        size_t cap = e->cap ? 2 * e->cap : 64;
        char **grown = realloc(e->entry, cap * sizeof *grown);
        if (!grown)
            return free(kv), -1;
        e->entry = grown, e->cap = cap;
    }
    e->entry[e->n++] = kv;
    e->entry[e->n] = NULL;
    return 0;
}

static const char *env_get(const struct env *e, const char *name) {
    size_t n = strlen(name);
    for (size_t i = 0; i < e->n; i++)
        if (!strncmp(e->entry[i], name, n) && e->entry[i][n] == '=')
            return e->entry[i] + n + 1;
    return NULL;
}

/* environ.py's _entry: NAME=VALUE, or NAME alone for the caller's value (unset: nothing). A name with
 * white space (or a byte beyond ASCII, whose Unicode class is Python's to judge) is the Python CLI's. */
static int env_entry(struct env *e, const char *text) {
    const char *eq = strchr(text, '=');
    size_t n = eq ? (size_t)(eq - text) : strlen(text);
    if (!n)
        return -1;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)text[i] <= ' ' || (unsigned char)text[i] >= 0x7f)
            return -1;
    if (eq)
        return env_set(e, text, n, eq + 1);
    const char *mine = getenv(text);
    return mine ? env_set(e, text, n, mine) : 0;
}

/* An --env-file: NAME=VALUE lines, # comments and blank lines skipped. Only plain ASCII text with
 * \n line ends is read here (Python's splitlines and strip know more line ends and spaces). */
static int env_file(struct env *e, const char *path) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    char *text = NULL;
    size_t len = 0, cap = 0;
    for (;;) {
        if (len + 4096 + 1 > cap) {
            char *grown = realloc(text, cap = 2 * cap + 8192);
            if (!grown)
                break;
            text = grown;
        }
        ssize_t n = read(fd, text + len, cap - len - 1);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            if (n < 0)
                len = (size_t)-1;
            break;
        }
        len += (size_t)n;
    }
    close(fd);
    int r = text && len != (size_t)-1 ? 0 : -1;
    for (size_t i = 0; r == 0 && i < len; i++) {
        unsigned char c = (unsigned char)text[i];
        if (c >= 0x7f || (c < ' ' && c != '\t' && c != '\n'))
            r = -1;
    }
    if (r == 0)
        text[len] = 0;
    for (char *line = text, *next; r == 0 && line && *line; line = next) {
        char *end = strchrnul(line, '\n');
        next = *end ? end + 1 : NULL;
        while (line < end && (*line == ' ' || *line == '\t'))
            line++;
        while (end > line && (end[-1] == ' ' || end[-1] == '\t'))
            end--;
        *end = 0;
        if (*line && *line != '#')
            r = env_entry(e, line);
    }
    free(text);
    return r;
}

char **command_env(const struct run_args *a, const char *exec_dir) {
    struct env e = {0};
    if (env_set(&e, "PATH", 4, "") < 0) /* a first entry, so that entry is never NULL; dropped below */
        return NULL;
    free(e.entry[0]);
    e.n = 0;
    e.entry[0] = NULL;
    for (char **p = a->clear_env ? NULL : environ; p && *p; p++) { /* os.environ: the first of a name wins */
        const char *eq = strchr(*p, '=');
        if (!eq || !strncmp(*p, "ROCKER_", 7))
            continue;
        size_t n = (size_t)(eq - *p);
        int seen = 0;
        for (size_t i = 0; i < e.n && !seen; i++)
            seen = !strncmp(e.entry[i], *p, n + 1);
        if (!seen && env_set(&e, *p, n, eq + 1) < 0)
            return NULL;
    }
    for (int i = 0; i < a->n_env_file; i++)
        if (env_file(&e, a->env_file[i]) < 0)
            return NULL;
    for (int i = 0; i < a->n_env; i++)
        if (env_entry(&e, a->env[i]) < 0)
            return NULL;
    const char *path = env_get(&e, "PATH");
    char *new_path;
    if (asprintf(&new_path, "%s/bin:%s", exec_dir, path && *path ? path : "/bin:/usr/bin") < 0)
        return NULL;
    int r = env_set(&e, "PATH", 4, new_path);
    free(new_path);
    return r < 0 ? NULL : e.entry;
}
