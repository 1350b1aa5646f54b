/*
 * Benchmark target: sees its own pause.  usage: heartbeat MB THREADS [K]
 *
 * Maps MB of anonymous memory and writes every page (no holes), starts
 * THREADS-1 extra threads sleeping in pause(), then spins in a heartbeat loop
 * that records the longest gap between two iterations: a stop from outside
 * shows up as that gap.  Each iteration also writes K random pages (default
 * 0): copy-on-write pressure while a snapshot child lives.  Signals drive it:
 *   SIGUSR1  reset the longest gap and the iteration count
 *   SIGUSR2  print "gap SECONDS iters N" (since the reset)
 *   SIGWINCH fork() itself, _exit the child at once, print "fork SECONDS"
 *            (how long the fork() call took: the physical limit of snapcore)
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t want_reset, want_report, want_fork;

static void on_signal(int sig)
{
    if (sig == SIGUSR1)
        want_reset = 1;
    else if (sig == SIGUSR2)
        want_report = 1;
    else
        want_fork = 1;
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void *sleeper(void *arg)
{
    (void)arg;
    for (;;)
        pause();
    return NULL;
}

int main(int argc, char **argv)
{
    if (argc != 3 && argc != 4) {
        fprintf(stderr, "usage: heartbeat MB THREADS [K]\n");
        return 2;
    }
    size_t size = (size_t)atol(argv[1]) << 20;
    int threads = atoi(argv[2]);
    int dirty_per_iteration = argc == 4 ? atoi(argv[3]) : 0;
    size_t pages = size / 4096;
    unsigned long long iters = 0, seed = 88172645463325252ULL;
    char *mem = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED) {
        perror("mmap");
        return 1;
    }
    for (size_t i = 0; i < size; i += 4096)
        memset(mem + i, (int)(i / 4096 % 251) + 1, 4096);
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, 64 * 1024);
    for (int i = 1; i < threads; i++) {
        pthread_t t;
        if (pthread_create(&t, &attr, sleeper, NULL)) {
            perror("pthread_create");
            return 1;
        }
    }
    struct sigaction sa = {.sa_handler = on_signal, .sa_flags = SA_RESTART};
    sigaction(SIGUSR1, &sa, NULL);
    sigaction(SIGUSR2, &sa, NULL);
    sigaction(SIGWINCH, &sa, NULL);
    printf("ready\n");
    fflush(stdout);
    double last = now(), max_gap = 0;
    for (;;) {
        double t = now();
        if (t - last > max_gap)
            max_gap = t - last;
        last = t;
        iters++;
        for (int i = 0; i < dirty_per_iteration && pages; i++) {
            seed ^= seed << 13, seed ^= seed >> 7, seed ^= seed << 17; /* xorshift64 */
            mem[(seed % pages) * 4096 + i % 4096]++;
        }
        if (want_reset) {
            want_reset = 0;
            max_gap = 0;
            iters = 0;
            last = now();
        }
        if (want_report) {
            want_report = 0;
            printf("gap %.6f iters %llu\n", max_gap, iters);
            fflush(stdout);
            last = now();
        }
        if (want_fork) {
            want_fork = 0;
            double t0 = now();
            pid_t pid = fork();
            if (pid == 0)
                _exit(0);
            double t1 = now();
            waitpid(pid, NULL, 0);
            printf("fork %.6f\n", t1 - t0);
            fflush(stdout);
            last = now();
        }
    }
}
