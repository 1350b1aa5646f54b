/*
 * What every test target shares: reporting by path (so that a copy of the
 * target with its descriptors closed is still caught), the handlers that
 * report a SIGCHLD or a SIGABRT handler run, and the heartbeat.
 */
#ifndef SNAPCORE_TEST_REPORT_H
#define SNAPCORE_TEST_REPORT_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif

#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static const char *report_path;

static void report(const char *fmt, ...)
{
    char line[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(line, sizeof line - 1, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if (n > (int)sizeof line - 2)
        n = sizeof line - 2;
    line[n++] = '\n';
    int fd = open(report_path, O_WRONLY | O_APPEND | O_CREAT, 0666);
    if (fd >= 0) {
        (void)!write(fd, line, n);
        close(fd);
    }
}

static void on_sigchld(int sig)
{
    (void)sig;
    report("VIOLATION SIGCHLD received by %d", getpid());
}

static void on_sigabrt(int sig)
{
    (void)sig;
    report("VIOLATION SIGABRT handler ran in %d", getpid());
}

static void after_each_round(void)
{
    int status;
    pid_t reaped = waitpid(-1, &status, WNOHANG);
    if (reaped > 0)
        report("VIOLATION reaped child %d", reaped);
    report("hb %d", getpid());
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* nanosleep that must neither fail (EINTR) nor return early. */
static void checked_sleep(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    double start = now();
    if (nanosleep(&ts, NULL) != 0)
        report("VIOLATION nanosleep in %d: %m", (int)gettid());
    else if (now() - start < ms / 1000.0 - 0.001)
        report("VIOLATION nanosleep returned after %.3f s", now() - start);
}

static void ready(void)
{
    printf("ready\n");
    fflush(stdout);
}

static void install_handlers(void)
{
    struct sigaction sa = {.sa_handler = on_sigchld, .sa_flags = SA_RESTART};
    sigaction(SIGCHLD, &sa, NULL);
    sa.sa_handler = on_sigabrt;
    sigaction(SIGABRT, &sa, NULL);
}

#endif
