/* A program that retitles itself the way redis, PostgreSQL and nginx do
 * (setproctitle: the argv area and the environment strings after it are
 * overwritten with a new title and padded), and forks children without
 * exec (PostgreSQL backends, nginx workers) that retitle themselves too.
 *
 *   title PAD [ARGS...]      PAD: "nul" or "space", what pads a title
 *
 * Prints "ready PID".  Then reads commands on stdin, one a line:
 *   t TEXT    retitle itself to TEXT
 *   f TEXT    fork a child titled TEXT; prints "child PID", the child "done"
 *   c TEXT    retitle the last child to TEXT; prints "done" once it has
 * It exits when stdin closes; its children exit with it.
 */
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <unistd.h>

static char *area;
static size_t area_len;
static int pad;

static void retitle(const char *text)
{
    size_t n = strlen(text);
    if (n >= area_len)
        n = area_len - 1;
    memset(area, pad, area_len);
    memcpy(area, text, n);
    if (pad == 0)
        area[n] = 0;
    area[area_len - 1] = 0;
}

/* The area setproctitle takes: argv[0] to the end of the last environment
 * string contiguous with it. */
static void find_area(int argc, char **argv, char **envp)
{
    char *end = argv[argc - 1] + strlen(argv[argc - 1]);
    for (int i = 0; envp[i]; i++)
        if (envp[i] == end + 1)
            end = envp[i] + strlen(envp[i]);
    area = argv[0];
    area_len = end - argv[0] + 1;
}


/* One write a line: the parent and its child share the pipe, and stdio on
 * an unbuffered stream writes a line's text and its newline apart. */
static void say(const char *fmt, ...)
{
    char buf[256];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    if (write(1, buf, n) != n)
        _exit(3);
}

static void child_loop(int commands)
{
    char line[512];
    FILE *in = fdopen(commands, "r");
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    while (fgets(line, sizeof line, in)) {
        line[strcspn(line, "\n")] = 0;
        retitle(line);
        say("done\n");
    }
    _exit(0);
}

int main(int argc, char **argv, char **envp)
{
    char line[512];
    FILE *child_in = NULL;
    pad = argc > 1 && !strcmp(argv[1], "space") ? ' ' : 0;
    find_area(argc, argv, envp);
    setvbuf(stdout, NULL, _IONBF, 0);
    say("ready %d\n", getpid());
    while (fgets(line, sizeof line, stdin)) {
        line[strcspn(line, "\n")] = 0;
        if (line[0] == 't') {
            retitle(line + 2);
            say("done\n");
        } else if (line[0] == 'f') {
            int fds[2];
            if (pipe(fds))
                return 1;
            pid_t pid = fork();
            if (pid == 0) {
                close(fds[1]);
                retitle(line + 2);
                say("done\n");
                child_loop(fds[0]);
            }
            close(fds[0]);
            child_in = fdopen(fds[1], "w");
            say("child %d\n", pid);
        } else if (line[0] == 'c' && child_in) {
            fprintf(child_in, "%s\n", line + 2);
            fflush(child_in);
        }
    }
    return 0;
}
