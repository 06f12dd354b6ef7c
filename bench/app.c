/* The benchmark's app, built static (cc -static -Os) into the benchmark's package.
 *   app        exit 0 at once (a static `true`)
 *   app s      write CLOCK_MONOTONIC in ns and a newline to fd 1, exit 0
 *   app s w    the same, then block reading fd 0 until EOF, exit 0
 *   app w      block reading fd 0 until EOF, exit 0 (an idle app that keeps its rocker alive)
 * The stamp goes to the fd named by $STAMP_FD instead of fd 1 when that is set.
 * No stdio: the binary stays the size of a static glibc `true`. */
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv) {
    int stamp = argc > 1 && argv[1][0] == 's', hold = (argc > 1 && argv[1][0] == 'w') || argc > 2;
    if (stamp) {
        struct timespec t;
        clock_gettime(CLOCK_MONOTONIC, &t);
        unsigned long long v = (unsigned long long)t.tv_sec * 1000000000ULL + (unsigned long long)t.tv_nsec;
        char b[24];
        int i = sizeof b;
        b[--i] = '\n';
        do
            b[--i] = (char)('0' + v % 10);
        while ((v /= 10) && i);
        const char *fd = getenv("STAMP_FD");
        if (write(fd ? atoi(fd) : 1, b + i, sizeof b - i) < 0)
            return 1;
    }
    if (hold) {
        char c;
        while (read(0, &c, 1) > 0) {}
    }
    return 0;
}
