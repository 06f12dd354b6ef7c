/* The cost of the app's syscall filter (issue 17): bench/seccomp/run.sh builds and runs this.
 *   install PROGRAM.bpf N   N forked children each set no_new_privs and install the program with
 *                           rocker-seccomp.c (as the join does); medians of the install and of one
 *                           filtered getppid against an unfiltered one.
 * SPDX-License-Identifier: MIT
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include "rocker-seccomp.h"
static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e6 + t.tv_nsec / 1e3;
}
static int cmp(const void *a, const void *b) {
    double x = *(double *)a, y = *(double *)b;
    return x < y ? -1 : x > y;
}
int main(int argc, char **argv) {
    if (argc < 3)
        return 2;
    int fd = open(argv[1], O_RDONLY);
    struct sock_fprog p;
    if (rocker_seccomp_read(fd, &p))
        return 1;
    int n = atoi(argv[2]);
    double *t = malloc(sizeof(double) * n), *g = malloc(sizeof(double) * n);
    int pp[2];
    for (int i = 0; i < n; i++) {
        pipe(pp);
        pid_t c = fork();
        if (c == 0) {
            double a = now();
            prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
            const char *s = rocker_seccomp_install(&p);
            double b = now();
            double d[2] = {b - a, 0};
            double a2 = now();
            for (int k = 0; k < 1000; k++)
                getppid();
            d[1] = (now() - a2) / 1000;
            write(pp[1], d, sizeof d);
            _exit(s != 0);
        }
        double d[2];
        read(pp[0], d, sizeof d);
        waitpid(c, 0, 0);
        close(pp[0]);
        close(pp[1]);
        t[i] = d[0];
        g[i] = d[1];
    }
    qsort(t, n, sizeof *t, cmp);
    qsort(g, n, sizeof *g, cmp);
    double base = 0;
    {
        double a = now();
        for (int k = 0; k < 100000; k++)
            getppid();
        base = (now() - a) / 100000;
    }
    printf("install (no_new_privs + seccomp) median %.1f us, p90 %.1f us over %d; getppid filtered %.3f us vs "
           "unfiltered %.3f us\n",
           t[n / 2], t[n * 9 / 10], n, g[n / 2], base);
    return 0;
}
