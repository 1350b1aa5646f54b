/*
 * Targets near the limits a snapshot runs into, each checking itself.
 * usage: limits MODE REPORT_FILE [MIB]
 *
 *   spawner    four threads in a checked nanosleep loop; every 20 ms the main
 *              thread forks a child that _exits at once and reaps it by pid,
 *              then creates and joins a thread.  A failure of either is
 *              "VIOLATION fork EAGAIN" / "VIOLATION pthread_create EAGAIN"
 *              (another errno by name).  SIGCHLD is blocked in every thread
 *              and drained after each reap: one from any pid but the child
 *              just forked is a violation.
 *   sparse     maps 8 GiB private anonymous MAP_NORESERVE memory and writes 4
 *              pages far apart, each filled with its own 8-byte value; reports
 *              "addr 0xADDR 0xVALUE" per page, then sleeps like victim's sleep.
 *   forkflags  two 1 MiB private anonymous regions, one MADV_DONTFORK, one
 *              MADV_WIPEONFORK, both filled with a pattern; reports
 *              "dontfork 0xSTART 0xEND" and "wipeonfork 0xSTART 0xEND".  Each
 *              round checks that both still hold the pattern and still carry
 *              their VmFlags (dc, wf) in /proc/self/smaps.
 *   rewriter   a 200 MiB heap (MIB to change it) whose every page gets a new
 *              round number every 50 ms, after checking it still holds the
 *              previous one (so copy-on-write is paid all the time).
 *   hold       writes a heap of MIB MiB (default 300) once, then sleeps.
 *
 * See report.h for how violations and heartbeats are reported.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>

#include "report.h"

#define PAGE 4096UL
#define MIB (1UL << 20)
#define GIB (1UL << 30)

static void sleep_loop(void)
{
    for (;;) {
        checked_sleep(300);
        after_each_round();
    }
}

static const char *errno_name(int e)
{
    return e == EAGAIN ? "EAGAIN" : strerrorname_np(e) ? strerrorname_np(e) : "?";
}

/* ---- spawner ---- */

static void *idle_thread(void *arg)
{
    (void)arg;
    for (;;)
        checked_sleep(200);
    return NULL;
}

static void *short_lived(void *arg)
{
    return arg;
}

static void drain_sigchld(pid_t mine)
{
    sigset_t chld;
    siginfo_t info;
    struct timespec zero = {0, 0};
    sigemptyset(&chld);
    sigaddset(&chld, SIGCHLD);
    while (sigtimedwait(&chld, &info, &zero) == SIGCHLD)
        if (info.si_pid != mine)
            report("VIOLATION SIGCHLD from %d received by %d", (int)info.si_pid, getpid());
}

static void mode_spawner(void)
{
    sigset_t chld;
    sigemptyset(&chld);
    sigaddset(&chld, SIGCHLD);
    pthread_sigmask(SIG_BLOCK, &chld, NULL); /* inherited by every thread */
    for (int i = 0; i < 4; i++) {
        pthread_t t;
        if (pthread_create(&t, NULL, idle_thread, NULL)) {
            perror("pthread_create");
            exit(2);
        }
    }
    ready();
    for (;;) {
        pid_t pid = fork();
        if (pid == 0)
            _exit(0);
        if (pid < 0) {
            report("VIOLATION fork %s", errno_name(errno));
        } else {
            int status;
            if (waitpid(pid, &status, 0) != pid)
                report("VIOLATION waitpid(%d): %m", (int)pid);
            else if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
                report("VIOLATION own child %d ended with status 0x%x", (int)pid, status);
            drain_sigchld(pid);
        }
        pthread_t t;
        int err = pthread_create(&t, NULL, short_lived, NULL);
        if (err)
            report("VIOLATION pthread_create %s", errno_name(err));
        else if ((err = pthread_join(t, NULL)))
            report("VIOLATION pthread_join %s", errno_name(err));
        after_each_round(); /* our own child is reaped: anything else is not ours */
        checked_sleep(20);
    }
}

/* ---- sparse ---- */

static void mode_sparse(void)
{
    size_t size = 8 * GIB;
    char *map = mmap(NULL, size, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (map == MAP_FAILED) {
        perror("mmap");
        exit(2);
    }
    size_t offsets[4] = {PAGE, 2 * GIB + 7 * PAGE, 5 * GIB + 3 * PAGE, size - PAGE};
    for (int i = 0; i < 4; i++) {
        uint64_t *page = (uint64_t *)(map + offsets[i]);
        uint64_t value = 0x5350415253450000ULL + i; /* "SPARSE" and the page's number */
        for (size_t w = 0; w < PAGE / 8; w++)
            page[w] = value;
        report("addr %p 0x%016llx", (void *)page, (unsigned long long)value);
    }
    ready();
    sleep_loop();
}

/* ---- forkflags ---- */

static unsigned char *dontfork, *wipeonfork;

static unsigned char pattern_at(size_t i, int which)
{
    return (unsigned char)(i * 131 + which * 17 + 1);
}

static unsigned char *flagged_region(int advice, int which, const char *name)
{
    unsigned char *r = mmap(NULL, MIB, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                            -1, 0);
    if (r == MAP_FAILED || madvise(r, MIB, advice)) {
        perror(name);
        exit(2);
    }
    for (size_t i = 0; i < MIB; i++)
        r[i] = pattern_at(i, which);
    report("%s %p %p", name, (void *)r, (void *)(r + MIB));
    return r;
}

/* The VmFlags line of the mapping that starts at `start`, or "" */
static void vmflags_of(void *start, char *out, size_t len)
{
    char want[32], line[512];
    int found = 0;
    snprintf(want, sizeof want, "%lx-", (unsigned long)start);
    out[0] = 0;
    FILE *f = fopen("/proc/self/smaps", "r");
    if (!f)
        return;
    while (fgets(line, sizeof line, f)) {
        if (!strncmp(line, want, strlen(want)))
            found = 1;
        else if (found && !strncmp(line, "VmFlags:", 8)) {
            snprintf(out, len, "%s", line + 8);
            break;
        }
    }
    fclose(f);
}

static int has_flag(const char *flags, const char *flag)
{
    char padded[8];
    snprintf(padded, sizeof padded, " %s ", flag);
    char copy[512];
    snprintf(copy, sizeof copy, " %s", flags);
    copy[strcspn(copy, "\n")] = ' ';
    return strstr(copy, padded) != NULL;
}

static void check_region(unsigned char *r, int which, const char *name, const char *flag)
{
    char flags[512];
    for (size_t i = 0; i < MIB; i += 509)
        if (r[i] != pattern_at(i, which)) {
            report("VIOLATION %s region changed at +%zu", name, i);
            break;
        }
    vmflags_of(r, flags, sizeof flags);
    if (!has_flag(flags, flag))
        report("VIOLATION %s region lost VmFlag %s: %s", name, flag, flags);
}

static void mode_forkflags(void)
{
    dontfork = flagged_region(MADV_DONTFORK, 1, "dontfork");
    wipeonfork = flagged_region(MADV_WIPEONFORK, 2, "wipeonfork");
    ready();
    for (;;) {
        checked_sleep(300);
        check_region(dontfork, 1, "dontfork", "dc");
        check_region(wipeonfork, 2, "wipeonfork", "wf");
        after_each_round();
    }
}

/* ---- rewriter and hold ---- */

static unsigned char *heap_of(size_t mib)
{
    unsigned char *heap = malloc(mib * MIB);
    if (!heap)
        exit(2);
    memset(heap, 0x5a, mib * MIB);
    return heap;
}

static void mode_rewriter(size_t mib)
{
    size_t size = mib * MIB;
    unsigned char *heap = heap_of(mib);
    /* the first byte of each page carries the round that last wrote it */
    for (size_t at = 0; at < size; at += PAGE)
        heap[at] = 0;
    ready();
    for (unsigned round = 1;; round++) {
        unsigned char before = (unsigned char)(round - 1), now = (unsigned char)round;
        int reported = 0;
        for (size_t at = 0; at < size; at += PAGE) {
            if (heap[at] != before && !reported++)
                report("VIOLATION page +%zu holds %u, not %u", at, heap[at], before);
            heap[at] = now;
        }
        checked_sleep(50);
        if (round % 6 == 0)
            after_each_round();
    }
}

int main(int argc, char **argv)
{
    if (argc != 3 && argc != 4) {
        fprintf(stderr, "usage: limits spawner|sparse|forkflags|rewriter|hold REPORT_FILE "
                        "[MIB]\n");
        return 2;
    }
    report_path = argv[2];
    install_handlers();
    const char *mode = argv[1];
    size_t mib = argc == 4 ? strtoul(argv[3], NULL, 10) : 0;
    if (!strcmp(mode, "spawner"))
        mode_spawner();
    else if (!strcmp(mode, "sparse"))
        mode_sparse();
    else if (!strcmp(mode, "forkflags"))
        mode_forkflags();
    else if (!strcmp(mode, "rewriter"))
        mode_rewriter(mib ? mib : 200);
    else if (!strcmp(mode, "hold")) {
        heap_of(mib ? mib : 300);
        ready();
        sleep_loop();
    }
    fprintf(stderr, "unknown mode %s\n", mode);
    return 2;
}
