/*
 * A process that counts the signals it is sent, to catch one swallowed or
 * forged while snapcore holds it: SIGRTMIN is queued (every one sent is
 * delivered, none merged), caught with SA_RESTART, and must come from the
 * process that started it (SI_USER from the parent: a signal snapcore sent
 * again would name snapcore).  SIGWINCH is left to its default (ignored):
 * snapcore may discard it as the kernel would.  The main thread sleeps in
 * nanosleep, which each caught signal interrupts (EINTR whatever SA_RESTART
 * says: signal(7)), so it sleeps again for what is left.
 *
 *   sigcount sigcount REPORT_FILE   reports "count N" after each 10 ms sleep
 */
#include "report.h"

#include <errno.h>
#include <string.h>

static volatile sig_atomic_t counted, forged;
static pid_t sender;

static void on_rtmin(int sig, siginfo_t *info, void *context)
{
    (void)sig;
    (void)context;
    if (info->si_code != SI_USER || info->si_pid != sender)
        forged = 1;
    counted++;
}

int main(int argc, char **argv)
{
    if (argc != 3 || strcmp(argv[1], "sigcount")) {
        fprintf(stderr, "usage: sigcount sigcount REPORT_FILE\n");
        return 2;
    }
    report_path = argv[2];
    sender = getppid();
    install_handlers();
    (void)checked_sleep; /* report.h's: a caught signal makes nanosleep EINTR here */
    struct sigaction sa = {.sa_sigaction = on_rtmin, .sa_flags = SA_SIGINFO | SA_RESTART};
    sigaction(SIGRTMIN, &sa, NULL);
    ready();
    for (unsigned long round = 1;; round++) {
        struct timespec left = {0, 10 * 1000000L};
        while (nanosleep(&left, &left) != 0)
            if (errno != EINTR)
                report("VIOLATION nanosleep: %m");
        if (forged) {
            report("VIOLATION SIGRTMIN not from %d as sent", (int)sender);
            forged = 0;
        }
        report("count %d", (int)counted);
        if (round % 10 == 0)
            after_each_round();
    }
}
