/* The seed's usage example (docs/c-client.md), made a whole program.
 *
 *   cc example.c $(pkg-config --cflags --libs rocker_client) -o example
 *   ./example /srv/apps/your_APP.squashfs /srv/rocker        # rockerd running, as root
 *
 * Adapted from the seed only where it does not compile: paths come from argv, the overlay
 * dirs are assigned one by one (C cannot assign an array), the callback is start_my_APP with
 * my_args, the result field is guard_pname (the seed wrote guard_name / guard.name), and the
 * guard is killed only after its name was checked (the seed also kills it unchecked first).
 * The app reports what it sees inside the rocker through a pipe; the launcher prints it.
 * SPDX-License-Identifier: MIT
 */
#define _POSIX_C_SOURCE 200809L /* dprintf, gethostname, kill */
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "lib.h"

struct my_args {
    int report_fd; /* write end of a pipe to the launcher */
};

static void read_line(const char *path, char *out, size_t cap) {
    FILE *f = fopen(path, "r");
    out[0] = '\0';
    if (f) {
        if (fgets(out, (int)cap, f))
            out[strcspn(out, "\n")] = '\0';
        fclose(f);
    }
}

// Callback function and its arguments, defined by the caller, to be executed inside ROCKER
static int start_my_APP(void *args) {
    struct my_args *a = args;
    char comm[64], host[256] = "";
    read_line("/proc/1/comm", comm, sizeof comm); /* the rocker's PID 1 is its guard */
    gethostname(host, sizeof host);
    dprintf(a->report_fd, "comm=%s\nhostname=%s\npid=%d\nuid=%d\n", comm, host, (int)getpid(), (int)getuid());
    close(a->report_fd);
    return 0;
}

int main(int argc, char **argv) {
    char exec_dir[4096], data_dir[4096], report[4096];
    if (argc != 3) {
        fprintf(stderr, "usage: %s PACKAGE.squashfs BASE_DIR\n", argv[0]);
        return 2;
    }
    snprintf(exec_dir, sizeof exec_dir, "%s/your_APP/execdir", argv[2]);
    snprintf(data_dir, sizeof data_dir, "%s/your_APP/datadir", argv[2]);

    int pipefd[2];
    if (pipe(pipefd) < 0)
        return 2;
    struct my_args my_args = {.report_fd = pipefd[1]};

    // Initialize a blank RockerRequest struct
    RockerRequest req = ROCKER_request_new();

    // Assign values to the RockerRequest struct
    req.app_id = 1000;
    req.uid = 1000;
    req.gid = 1000;
    req.app_pkg_path = argv[1];
    req.app_exec_dir = exec_dir;
    req.app_data_dir = data_dir;
    req.app_overlay_dirs[0] = "/usr";
    req.app_overlay_dirs[1] = "/var";
    req.app_overlay_dirs[2] = "/etc";
    req.app_overlay_dirs[3] = "/home";
    req.app_overlay_dirs[4] = "/root";

    // Attempt to run APP inside ROCKER
    RockerResult res = ROCKER_enter_rocker(&req, start_my_APP, &my_args);
    close(pipefd[1]);

    if (ROCKER_ERR_success != res.err_no) {
        // Handle error
        fprintf(stderr, "ROCKER_enter_rocker failed: err_no %d\n", res.err_no);
        close(pipefd[0]);
        return 1;
    }

    size_t len = 0;
    ssize_t n;
    while (len < sizeof report - 1 && (n = read(pipefd[0], report + len, sizeof report - 1 - len)) > 0)
        len += (size_t)n;
    report[len] = '\0';
    close(pipefd[0]);

    int status = 0;
    if (waitpid(res.app_pid, &status, 0) != res.app_pid)
        return 1;
    printf("err_no=%d\nguard_pid=%d\nguard_pname=%s\napp_pid=%d\napp_status=%d\n%s", res.err_no, res.guard_pid,
           res.guard_pname, res.app_pid, status, report);

    // APP finished running, clean up the environment. The seed kills res.guard_pid right
    // away here too; we keep only its "more robust cleanup": the guard leaves by itself once
    // its last app is gone, so by now its PID may belong to another process.
    RockerResult res2 = ROCKER_get_guardname(res.guard_pid);
    if (ROCKER_ERR_success == res2.err_no && 0 == strcmp(res.guard_pname, res2.guard_pname)) {
        kill(res.guard_pid, SIGKILL);
    }
    return 0;
}
