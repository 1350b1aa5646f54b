/* A server that sets its title as PostgreSQL does on Linux: the title is
 * written over the argv area from argv[0] on and the rest padded with NULs,
 * so /proc/PID/cmdline (and ps -o args) shows the title alone, while comm
 * stays the executable's name.  Usage: titled TITLE; prints "ready", sleeps. */
#include <stdio.h>
#include <string.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    if (argc < 2)
        return 2;
    char title[256];
    snprintf(title, sizeof title, "%s", argv[1]);
    char *end = argv[argc - 1] + strlen(argv[argc - 1]);
    size_t room = (size_t)(end - argv[0]);
    memset(argv[0], 0, room);
    memcpy(argv[0], title, strlen(title) < room ? strlen(title) : room - 1);
    printf("ready\n");
    fflush(stdout);
    for (;;)
        pause();
}
