/*
 * One shape of memory the kernel's dump rule treats on its own (fs/coredump.c:
 * vma_dump_size, get_dump_page), MIB MiB of it, for the estimate-against-core
 * tests (tests/test_shapes.py):
 *
 *   shapes SHAPE MIB [FILE]
 *
 * anon            private anonymous, every page written
 * anon-shared     MAP_SHARED|MAP_ANONYMOUS ("/dev/zero (deleted)"), written
 * anon-shared-half   the same, only its first half written (shmem holes)
 * anon-shared-dropped   written, then MADV_DONTNEED: in shmem, not in the page tables
 * sysv            SysV shm (shmget, IPC_RMID), written
 * posix           POSIX shm: /dev/shm/snapcore-shapes-PID (the test removes it), written
 * memfd           memfd_create, written
 * hugetlb         MAP_HUGETLB private, written
 * file-private    FILE mapped MAP_PRIVATE, one page written (anon_vma: dumped whole)
 * dontdump        private anonymous, written, MADV_DONTDUMP
 *
 * Page i of the region holds the byte (i % 251) + 1 at its start.  Prints
 * "ready ADDRESS" once the shape is made; a SIGCHLD it gets is reported as
 * "SIGCHLD" on stdout (a snapshot must never show it one).
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/shm.h>
#include <unistd.h>

#define PAGE 4096

static void on_sigchld(int sig) { (void)sig; write(1, "SIGCHLD\n", 8); }

static void fill(char *p, size_t n, size_t every) {
    for (size_t i = 0; i < n; i += every)
        p[i] = (char)((i / PAGE) % 251 + 1);
}

static char *shared_anon(size_t size) {
    return mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
}

static char *shared_fd(int fd, size_t size) {
    if (fd < 0 || ftruncate(fd, size) != 0) return MAP_FAILED;
    return mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
}

static char *make(const char *shape, size_t size, const char *file) {
    char *p = MAP_FAILED;
    int private_anon = MAP_PRIVATE | MAP_ANONYMOUS;
    if (!strcmp(shape, "anon") || !strcmp(shape, "dontdump")) {
        p = mmap(NULL, size, PROT_READ | PROT_WRITE, private_anon, -1, 0);
        if (p != MAP_FAILED) fill(p, size, PAGE);
        if (p != MAP_FAILED && shape[0] == 'd') madvise(p, size, MADV_DONTDUMP);
    } else if (!strcmp(shape, "anon-shared") || !strcmp(shape, "anon-shared-dropped")) {
        p = shared_anon(size);
        if (p != MAP_FAILED) fill(p, size, PAGE);
        if (p != MAP_FAILED && strstr(shape, "dropped")) madvise(p, size, MADV_DONTNEED);
    } else if (!strcmp(shape, "anon-shared-half")) {
        p = shared_anon(size);
        if (p != MAP_FAILED) fill(p, size / 2, PAGE);
    } else if (!strcmp(shape, "sysv")) {
        int id = shmget(IPC_PRIVATE, size, IPC_CREAT | 0600);
        p = id < 0 ? MAP_FAILED : shmat(id, NULL, 0);
        if (id >= 0) shmctl(id, IPC_RMID, NULL);
        if (p != (char *)-1) fill(p, size, PAGE); else p = MAP_FAILED;
    } else if (!strcmp(shape, "posix")) {
        char name[64];
        snprintf(name, sizeof name, "/snapcore-shapes-%d", getpid());
        p = shared_fd(shm_open(name, O_RDWR | O_CREAT | O_EXCL, 0600), size);
        if (p != MAP_FAILED) fill(p, size, PAGE);
    } else if (!strcmp(shape, "memfd")) {
        p = shared_fd(memfd_create("shapes", 0), size);
        if (p != MAP_FAILED) fill(p, size, PAGE);
    } else if (!strcmp(shape, "hugetlb")) {
        p = mmap(NULL, size, PROT_READ | PROT_WRITE, private_anon | MAP_HUGETLB, -1, 0);
        if (p != MAP_FAILED) fill(p, size, PAGE);
    } else if (!strcmp(shape, "file-private") && file) {
        int fd = open(file, O_RDWR);
        p = fd < 0 ? MAP_FAILED : mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
        if (p != MAP_FAILED) p[0] = 1;
    }
    return p;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: shapes SHAPE MIB [FILE]\n");
        return 2;
    }
    signal(SIGCHLD, on_sigchld);
    char *p = make(argv[1], (size_t)atol(argv[2]) << 20, argc > 3 ? argv[3] : NULL);
    if (p == MAP_FAILED) {
        perror(argv[1]);
        return 1;
    }
    printf("ready %lx\n", (unsigned long)p);
    fflush(stdout);
    for (;;)
        pause();
}
