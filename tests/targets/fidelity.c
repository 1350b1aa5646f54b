/*
 * A target in a fixed state, for comparing the cores two writers make of it.
 * usage: fidelity run|big REPORT_FILE
 *
 * Eight threads: main_busy (the main thread, computing in a loop), and
 * sleeper_thread (one long nanosleep), condvar_thread (pthread_cond_wait),
 * pipe_reader_thread (read on a pipe nobody writes), busy_thread (computing),
 * ymm_thread (in pause(2) with known values in ymm0 and xmm1), mutex_waiter_thread
 * (blocked on a mutex main holds), sleeper2_thread (another nanosleep).
 * Memory: a heap block full of a pattern, a MADV_DONTDUMP region full of
 * 0xab, and with `big` an 8 GiB reservation touched in four pages.
 * Reports "thread NAME TID" per thread, then "pattern ADDR", "dontdump ADDR",
 * "reservation ADDR", before "ready".  Violations as report.h says.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>

#include "blocked.h"

#define PATTERN_SIZE (64 * 1024)
#define DONTDUMP_SIZE (1024 * 1024)
#define RESERVATION (8ULL << 30)

static const uint8_t ymm_value[32] __attribute__((aligned(32))) = {
    0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0a, 0x0b, 0x0c, 0x0d, 0x0e, 0x0f, 0x10,
    0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18, 0x19, 0x1a, 0x1b, 0x1c, 0x1d, 0x1e, 0x1f, 0x20};

static void long_sleep(void)
{
    for (;;)
        checked_sleep(3600 * 1000L);
}

static void *sleeper_thread(void *arg)
{
    (void)arg;
    announce("sleeper_thread");
    pthread_barrier_wait(&started);
    long_sleep();
    return NULL;
}

static void *sleeper2_thread(void *arg)
{
    (void)arg;
    announce("sleeper2_thread");
    pthread_barrier_wait(&started);
    long_sleep();
    return NULL;
}

static void *ymm_thread(void *arg)
{
    (void)arg;
    announce("ymm_thread");
    pthread_barrier_wait(&started);
    /* Blocked in pause(2), called here so that no library code touches
     * the vector registers: the kernel keeps them across the syscall. */
#if defined(__aarch64__)
    /* arm64: v0 and v1 hold the 32 bytes, blocked in ppoll(NULL, 0, NULL,
     * NULL), arm64's pause(2); a syscall keeps the FP/SIMD registers. */
    __asm__ volatile("ldp q0, q1, [%0]\n\t"
                     "1: mov x8, #73\n\t"
                     "mov x0, #0\n\t"
                     "mov x1, #0\n\t"
                     "mov x2, #0\n\t"
                     "mov x3, #0\n\t"
                     "svc #0\n\t"
                     "b 1b\n\t"
                     : : "r"(ymm_value) : "x0", "x1", "x2", "x3", "x8", "v0", "v1", "memory");
#else
    __asm__ volatile("vmovdqu (%0), %%ymm0\n\t"
                     "movabs $0x1122334455667788, %%rax\n\t"
                     "movq %%rax, %%xmm1\n\t"
                     "1: mov $34, %%eax\n\t"
                     "syscall\n\t"
                     "jmp 1b\n\t"
                     : : "r"(ymm_value) : "rax", "rcx", "r11", "xmm0", "xmm1", "memory");
#endif
    return NULL;
}

__attribute__((noinline)) static void main_busy(void)
{
    uint64_t x = 7;
    for (long round = 0;; round++) {
        for (int i = 0; i < 2000000; i++)
            x = x * 2862933555777941757ULL + 3037000493ULL;
        busy_sink = x;
        if (round % 64 == 0)
            after_each_round();
    }
}

static void memory(int big_one)
{
    unsigned char *pattern = malloc(PATTERN_SIZE);
    for (int i = 0; i < PATTERN_SIZE; i++)
        pattern[i] = (unsigned char)(i * 7 + 3);
    unsigned char *dd = mmap(NULL, DONTDUMP_SIZE, PROT_READ | PROT_WRITE,
                             MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (dd == MAP_FAILED)
        exit(2);
    memset(dd, 0xab, DONTDUMP_SIZE);
    madvise(dd, DONTDUMP_SIZE, MADV_DONTDUMP);
    report("pattern %p", (void *)pattern);
    report("dontdump %p", (void *)dd);
    if (!big_one)
        return;
    unsigned char *big = mmap(NULL, RESERVATION, PROT_READ | PROT_WRITE,
                              MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (big == MAP_FAILED)
        exit(2);
    for (int i = 0; i < 4; i++)
        big[(RESERVATION / 4) * i + 4096 * i] = (unsigned char)(0x41 + i);
    report("reservation %p", (void *)big);
}

int main(int argc, char **argv)
{
    void *(*bodies[])(void *) = {sleeper_thread, condvar_thread, pipe_reader_thread,
                                 busy_thread, ymm_thread, mutex_waiter_thread, sleeper2_thread};
    int n = sizeof bodies / sizeof bodies[0];
    if (argc < 3) {
        fprintf(stderr, "usage: fidelity run|big REPORT_FILE\n");
        return 2;
    }
    report_path = argv[2];
    install_handlers();
    if (pipe(pipe_fds))
        return 2;
    memory(!strcmp(argv[1], "big"));
    pthread_mutex_lock(&held_mutex);
    pthread_barrier_init(&started, NULL, n + 1);
    for (int i = 0; i < n; i++) {
        pthread_t t;
        pthread_create(&t, NULL, bodies[i], NULL);
    }
    pthread_barrier_wait(&started);
    announce("main_busy");
    usleep(100 * 1000); /* let the waiters reach their calls */
    ready();
    main_busy();
    return 0;
}
