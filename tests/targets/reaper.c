/*
 * A reaper above the target, as a container's pid 1 or a service manager is.
 * usage: reaper MODE LOG CMD [ARGS...]
 *
 * It starts CMD (the target, a child of its own) and then:
 *   log    reaps every child that ends, with waitpid(-1, __WALL) (which sees
 *          children whatever their exit signal), and appends "reaped PID
 *          STATUS" to LOG for each; it is a child subreaper (unless it is the
 *          init of its pid namespace, which adopts orphans anyway), so every
 *          orphan below it comes to it.
 *   never  is a child subreaper too, and never waits at all: whatever ends
 *          below it stays a zombie (a pid 1 that does not reap).
 * A snapshot of CMD must leave no line in LOG and no zombie below it.  It
 * reports "reaper PID" (its own pid as its namespace sees it) to LOG first.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

static void append(const char *log, const char *fmt, long a, long b)
{
    FILE *f = fopen(log, "a");
    if (!f)
        return;
    fprintf(f, fmt, a, b);
    fclose(f);
}

int main(int argc, char **argv)
{
    if (argc < 4 || (strcmp(argv[1], "log") && strcmp(argv[1], "never"))) {
        fprintf(stderr, "usage: reaper log|never LOG CMD [ARGS...]\n");
        return 2;
    }
    const char *log = argv[2];
    if (getpid() != 1 && prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)) {
        perror("PR_SET_CHILD_SUBREAPER");
        return 2;
    }
    append(log, "reaper %ld%.0ld\n", (long)getpid(), 0);
    pid_t cmd = fork();
    if (cmd == 0) {
        execv(argv[3], argv + 3);
        _exit(127);
    }
    if (!strcmp(argv[1], "never"))
        for (;;)
            pause();
    for (;;) {
        int status;
        pid_t pid = waitpid(-1, &status, __WALL);
        if (pid > 0)
            append(log, "reaped %ld %ld\n", (long)pid, (long)status);
        else if (errno == ECHILD)
            pause();
    }
}
