/*
 * Threads blocked in known places, shared by the targets that compare cores
 * and stacks (threads.c, fidelity.c).  Each thread reports "thread NAME TID"
 * (announce) and waits on `started` before blocking; see report.h.
 */
#ifndef SNAPCORE_TEST_BLOCKED_H
#define SNAPCORE_TEST_BLOCKED_H

#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <string.h>

#include "report.h"

static pthread_barrier_t started;
static pthread_mutex_t held_mutex = PTHREAD_MUTEX_INITIALIZER;
static pthread_mutex_t cond_mutex = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t never = PTHREAD_COND_INITIALIZER;
static int pipe_fds[2];
static volatile uint64_t busy_sink;

static void announce(const char *name)
{
    report("thread %s %d", name, (int)gettid());
}

static void *condvar_thread(void *arg)
{
    (void)arg;
    announce("condvar_thread");
    pthread_mutex_lock(&cond_mutex);
    pthread_barrier_wait(&started);
    for (;;)
        pthread_cond_wait(&never, &cond_mutex);
    return NULL;
}

static void *pipe_reader_thread(void *arg)
{
    char c;
    (void)arg;
    announce("pipe_reader_thread");
    pthread_barrier_wait(&started);
    for (;;) {
        ssize_t n = read(pipe_fds[0], &c, 1);
        report("VIOLATION pipe read returned %zd: %s", n, n < 0 ? strerror(errno) : "data");
        sleep(1);
    }
    return NULL;
}

__attribute__((noinline)) static void busy_thread_loop(void)
{
    uint64_t x = 1;
    for (;;) {
        for (int i = 0; i < 1000000; i++)
            x = x * 6364136223846793005ULL + 1442695040888963407ULL;
        busy_sink = x;
    }
}

static void *busy_thread(void *arg)
{
    (void)arg;
    announce("busy_thread");
    pthread_barrier_wait(&started);
    busy_thread_loop();
    return NULL;
}

/* Blocked on held_mutex, which its owner (a thread, or main) never lets go. */
static void *mutex_waiter_thread(void *arg)
{
    (void)arg;
    announce("mutex_waiter_thread");
    pthread_barrier_wait(&started);
    pthread_mutex_lock(&held_mutex);
    report("VIOLATION mutex_waiter got the mutex");
    return NULL;
}

#endif
