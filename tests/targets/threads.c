/*
 * A multithreaded target that checks itself.  usage: threads MODE REPORT_FILE [N]
 *
 *   eight  eight threads, each blocked somewhere different and identifiable:
 *          main_sleeper (main, nanosleep), sleeper_thread (nanosleep),
 *          condvar_thread (pthread_cond_wait), pipe_reader_thread (read on a
 *          pipe nobody writes), busy_thread (computing), mutex_holder_thread
 *          (sleeps holding a mutex), mutex_waiter_thread (blocked on it),
 *          xmm_thread (spins with 0x1122334455667788 in xmm0).
 *          Each reports "thread NAME TID" before "ready".
 *   churn  creates and joins short-lived threads without pause.
 *   many   N threads (default 500), each in a checked nanosleep loop.
 *
 * See report.h for how violations and heartbeats are reported.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <string.h>
#include <sys/syscall.h>

#include "blocked.h"

static void *sleeper_thread(void *arg)
{
    (void)arg;
    announce("sleeper_thread");
    pthread_barrier_wait(&started);
    for (;;)
        checked_sleep(200);
    return NULL;
}

static void *mutex_holder_thread(void *arg)
{
    (void)arg;
    announce("mutex_holder_thread");
    pthread_mutex_lock(&held_mutex);
    pthread_barrier_wait(&started);
    for (;;)
        checked_sleep(250);
    return NULL;
}

static void *xmm_thread(void *arg)
{
    (void)arg;
    announce("xmm_thread");
    pthread_barrier_wait(&started);
#if defined(__aarch64__) /* the same constant in v0 (d0), spinning */
    __asm__ volatile("movz x9, #0x7788\n\t"
                     "movk x9, #0x5566, lsl #16\n\t"
                     "movk x9, #0x3344, lsl #32\n\t"
                     "movk x9, #0x1122, lsl #48\n\t"
                     "fmov d0, x9\n\t"
                     "1: yield\n\t"
                     "b 1b\n\t"
                     : : : "x9", "v0");
#else
    __asm__ volatile("movabs $0x1122334455667788, %%rax\n\t"
                     "movq %%rax, %%xmm0\n\t"
                     "1: pause\n\t"
                     "jmp 1b\n\t"
                     : : : "rax", "xmm0");
#endif
    return NULL;
}

static void main_sleeper(void)
{
    for (;;) {
        checked_sleep(300);
        after_each_round();
    }
}

static void mode_eight(void)
{
    void *(*bodies[])(void *) = {sleeper_thread, condvar_thread, pipe_reader_thread,
                                 busy_thread, mutex_holder_thread, mutex_waiter_thread,
                                 xmm_thread};
    int n = sizeof bodies / sizeof bodies[0];
    if (pipe(pipe_fds))
        exit(2);
    pthread_barrier_init(&started, NULL, n + 1);
    for (int i = 0; i < n; i++) {
        pthread_t t;
        pthread_create(&t, NULL, bodies[i], NULL);
    }
    pthread_barrier_wait(&started);
    announce("main_sleeper");
    usleep(100 * 1000); /* let the waiter reach pthread_mutex_lock */
    ready();
    main_sleeper();
}

static void *short_lived(void *arg)
{
    return arg;
}

static void mode_churn(void)
{
    ready();
    for (long round = 0;; round++) {
        pthread_t t[4];
        for (int i = 0; i < 4; i++)
            if (pthread_create(&t[i], NULL, short_lived, NULL))
                report("VIOLATION pthread_create: %m");
        for (int i = 0; i < 4; i++)
            if (pthread_join(t[i], NULL))
                report("VIOLATION pthread_join: %m");
        if (round % 2000 == 0)
            after_each_round();
    }
}

static void *many_sleeper(void *arg)
{
    (void)arg;
    pthread_barrier_wait(&started);
    for (;;)
        checked_sleep(100);
    return NULL;
}

static void mode_many(int n)
{
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, 64 * 1024);
    pthread_barrier_init(&started, NULL, n + 1);
    for (int i = 0; i < n; i++) {
        pthread_t t;
        if (pthread_create(&t, &attr, many_sleeper, NULL)) {
            perror("pthread_create");
            exit(2);
        }
    }
    pthread_barrier_wait(&started);
    ready();
    main_sleeper();
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: threads eight|churn|many REPORT_FILE [N]\n");
        return 2;
    }
    report_path = argv[2];
    install_handlers();
    if (!strcmp(argv[1], "eight"))
        mode_eight();
    else if (!strcmp(argv[1], "churn"))
        mode_churn();
    else if (!strcmp(argv[1], "many"))
        mode_many(argc > 3 ? atoi(argv[3]) : 500);
    fprintf(stderr, "unknown mode %s\n", argv[1]);
    return 2;
}
