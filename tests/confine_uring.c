/* A program that reads a file through io_uring and falls back to read(2) when io_uring is refused,
 * as real io_uring users do (tests/test_confine.py, issue 17's corpus). No liburing: the raw ABI.
 *
 *   confine_uring FILE      prints "io_uring_setup <errno>" (0: set up), "via uring|read",
 *                           then the file's first 4 KiB as read by that path
 * SPDX-License-Identifier: MIT
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/io_uring.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

static char buf[4096];

/* One IORING_OP_READ of buf from fd at offset 0; its result (bytes, or -errno). */
static int read_uring(int ring, const struct io_uring_params *p, int fd) {
    size_t sq_len = p->sq_off.array + p->sq_entries * sizeof(unsigned);
    size_t cq_len = p->cq_off.cqes + p->cq_entries * sizeof(struct io_uring_cqe);
    if (p->features & IORING_FEAT_SINGLE_MMAP)
        sq_len = cq_len = sq_len > cq_len ? sq_len : cq_len;
    char *sq = mmap(NULL, sq_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, ring, IORING_OFF_SQ_RING);
    char *cq = (p->features & IORING_FEAT_SINGLE_MMAP)
                   ? sq
                   : mmap(NULL, cq_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, ring, IORING_OFF_CQ_RING);
    struct io_uring_sqe *sqes = mmap(NULL, p->sq_entries * sizeof *sqes, PROT_READ | PROT_WRITE,
                                     MAP_SHARED | MAP_POPULATE, ring, IORING_OFF_SQES);
    if (sq == MAP_FAILED || cq == MAP_FAILED || sqes == MAP_FAILED)
        return -errno;
    unsigned *tail = (unsigned *)(sq + p->sq_off.tail), *array = (unsigned *)(sq + p->sq_off.array);
    unsigned idx = *tail & *(unsigned *)(sq + p->sq_off.ring_mask);
    memset(&sqes[idx], 0, sizeof sqes[idx]);
    sqes[idx].opcode = IORING_OP_READ;
    sqes[idx].fd = fd;
    sqes[idx].addr = (unsigned long)buf;
    sqes[idx].len = sizeof buf;
    array[idx] = idx;
    __atomic_store_n(tail, *tail + 1, __ATOMIC_RELEASE);
    if (syscall(SYS_io_uring_enter, ring, 1, 1, IORING_ENTER_GETEVENTS, NULL, 0) < 0)
        return -errno;
    unsigned *head = (unsigned *)(cq + p->cq_off.head);
    struct io_uring_cqe *cqes = (struct io_uring_cqe *)(cq + p->cq_off.cqes);
    if (*head == __atomic_load_n((unsigned *)(cq + p->cq_off.tail), __ATOMIC_ACQUIRE))
        return -EAGAIN;
    int res = cqes[*head & *(unsigned *)(cq + p->cq_off.ring_mask)].res;
    __atomic_store_n(head, *head + 1, __ATOMIC_RELEASE);
    return res;
}

int main(int argc, char **argv) {
    if (argc != 2)
        return 2;
    int fd = open(argv[1], O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        perror(argv[1]);
        return 1;
    }
    struct io_uring_params p;
    memset(&p, 0, sizeof p);
    int ring = (int)syscall(SYS_io_uring_setup, 4, &p);
    printf("io_uring_setup %d\n", ring < 0 ? errno : 0);
    int n;
    if (ring >= 0) {
        n = read_uring(ring, &p, fd);
        printf("via uring\n");
    } else if (errno == EPERM || errno == ENOSYS || errno == EACCES) { /* refused: the fallback */
        n = (int)read(fd, buf, sizeof buf);
        n = n < 0 ? -errno : n;
        printf("via read\n");
    } else {
        perror("io_uring_setup");
        return 1;
    }
    if (n < 0) {
        fprintf(stderr, "read: %s\n", strerror(-n));
        return 1;
    }
    fwrite(buf, 1, (size_t)n, stdout);
    return 0;
}
