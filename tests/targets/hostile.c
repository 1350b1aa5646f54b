/*
 * Targets that make a snapshot hard, and bystanders that must not notice one.
 * usage: hostile MODE REPORT_FILE [ARGS]
 *
 *   innocent      a bystander: heartbeats every 50 ms; checks it never gets a
 *                 SIGSEGV or SIGCHLD, never finds a child, and that its
 *                 SIGSEGV/SIGCHLD handlers and its empty signal mask stay as set
 *   exec_loop [N] heartbeats for ~30 ms, then execve("/proc/self/exe") with
 *                 N+1 (same pid, a new address space, a new vDSO), forever.
 *                 After each exec it checks waitpid(-1, __WALL|WNOHANG) finds
 *                 no finished child; it says "ready" in incarnation 0 only
 *   exit_mid_dump [SECONDS]
 *                 300 MiB of touched heap (a dump that lasts); exits 0 SECONDS
 *                 (default 0.3) after "ready", or 50 ms after it finds it has a
 *                 child (a snapshot's copy, being dumped) if that comes first:
 *                 its pid is free while the dump goes on.  With "never": the
 *                 same heap, then like innocent
 *   seccomp_vdso [selftest]
 *                 a seccomp filter that kills the process for any syscall made
 *                 from inside its [vdso] mapping (and for any arch but x86_64),
 *                 then like innocent, reading the time with raw syscalls only.
 *                 With "selftest" it makes a syscall from its vDSO's own
 *                 `syscall` instruction right after "ready": it must die of SIGSYS
 *   attacker ROOT_CANARY LINK_CANARY TARGET_PID
 *                 (run as the target's user) attacks every new snapshot staging
 *                 directory /var/tmp/.snapcore-staging-* that is the working
 *                 directory of a copy of TARGET_PID (same command line): its
 *                 snapshot's child.  One after another, in turn: pre-create
 *                 `core` as a symlink to ROOT_CANARY; or, as soon as `core`
 *                 appears, or 0 to 8 ms after the child's dump ended, start to
 *                 replace every file in it by a symlink to ROOT_CANARY or a hard
 *                 link to LINK_CANARY, alternately, as fast as it can, until
 *                 the directory is gone (1 s at most).  Reports "attack DIR
 *                 STRATEGY" when it starts and "result DIR ..." when done, or
 *                 "skipped DIR ..."
 *   badname       names itself "\xff\xfe" (prctl PR_SET_NAME: not UTF-8) and
 *                 overwrites its argv[0] and argv[1] with those bytes too, then
 *                 like innocent
 *
 * Built with -shared -fPIC -DHOSTILE_FAT_PRELOAD instead, this file is an
 * LD_PRELOAD library that gives any target HOSTILE_FAT_MB (default 100) MiB of
 * touched heap before its main() runs.
 *
 * See report.h for how violations and heartbeats are reported.
 */
#define _GNU_SOURCE

#ifdef HOSTILE_FAT_PRELOAD

#include <stdlib.h>
#include <string.h>

char *hostile_fat_heap;

__attribute__((constructor)) static void hostile_fat(void)
{
    const char *mb = getenv("HOSTILE_FAT_MB");
    size_t size = (size_t)(mb ? atol(mb) : 100) << 20;
    hostile_fat_heap = malloc(size);
    if (hostile_fat_heap)
        memset(hostile_fat_heap, 0x5a, size);
}

#else

#include <dirent.h>
#include <errno.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>

#include "report.h"

extern char **environ;

static void on_sigsegv(int sig)
{
    (void)sig;
    report("VIOLATION SIGSEGV received by %d", getpid());
    signal(SIGSEGV, SIG_DFL); /* and die of it, once the handler returns */
    raise(SIGSEGV);
}

static void install_segv_handler(void)
{
    struct sigaction sa = {.sa_handler = on_sigsegv, .sa_flags = SA_RESTART};
    sigaction(SIGSEGV, &sa, NULL);
}

/* What a snapshot must never change: handlers, the signal mask, the children. */
static void check_self(void)
{
    struct sigaction sa;
    sigset_t mask;
    if (sigaction(SIGSEGV, NULL, &sa) == 0 && sa.sa_handler != on_sigsegv)
        report("VIOLATION SIGSEGV handler replaced in %d", getpid());
    if (sigaction(SIGCHLD, NULL, &sa) == 0 && sa.sa_handler != on_sigchld)
        report("VIOLATION SIGCHLD handler replaced in %d", getpid());
    sigemptyset(&mask);
    if (sigprocmask(SIG_BLOCK, NULL, &mask) == 0 && !sigisemptyset(&mask))
        report("VIOLATION signal mask not empty in %d", getpid());
}

static void check_wall(void)
{
    int status;
    pid_t reaped = waitpid(-1, &status, __WALL | WNOHANG);
    if (reaped > 0)
        report("VIOLATION waitpid(__WALL) reaped child %d (status 0x%x) in %d", reaped,
               status, getpid());
}

static void mode_innocent(void)
{
    ready();
    for (;;) {
        checked_sleep(50);
        check_self();
        check_wall();
        after_each_round();
    }
}

static void mode_exec_loop(char **argv, int argc)
{
    long incarnation = argc > 3 ? atol(argv[3]) : 0;
    check_self();
    check_wall(); /* a finished child the previous image left behind */
    if (incarnation == 0)
        ready();
    double until = now() + 0.030;
    while (now() < until) {
        checked_sleep(5);
        check_self();
        after_each_round();
    }
    char next[32];
    snprintf(next, sizeof next, "%ld", incarnation + 1);
    char *args[] = {argv[0], argv[1], argv[2], next, NULL};
    execve("/proc/self/exe", args, environ);
    report("VIOLATION execve in %d: %s", getpid(), strerror(errno));
    exit(2);
}

static void mode_badname(char **argv)
{
    prctl(PR_SET_NAME, "\xff\xfe", 0, 0, 0);
    for (int i = 0; i < 2; i++)
        for (char *c = argv[i]; *c; c++)
            *c = (c - argv[i]) % 2 ? '\xfe' : '\xff';
    mode_innocent();
}

static void mode_exit_mid_dump(double after)
{
    size_t size = 300UL << 20;
    char *heap = malloc(size);
    if (!heap)
        exit(2);
    memset(heap, 0x5a, size);
    if (after < 0)
        mode_innocent(); /* "never": a big innocent, to time snapshots with */
    ready();
    double until = now() + after;
    while (now() < until) {
        siginfo_t info = {0};
        /* A child of its own (WNOWAIT: looked at, not reaped; si_pid stays 0
         * while it runs) is a snapshot's copy being dumped: leave in 50 ms. */
        if (waitid(P_ALL, 0, &info, WEXITED | WNOHANG | WNOWAIT | __WALL) == 0) {
            report("child seen");
            checked_sleep(50);
            break;
        }
        checked_sleep(2);
    }
    report("exiting");
    exit(0);
}

/* The time and a sleep that never go through the vDSO. */
static double raw_now(void)
{
    struct timespec ts;
    syscall(SYS_clock_gettime, CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void raw_checked_sleep(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    double start = raw_now();
    if (syscall(SYS_nanosleep, &ts, NULL) != 0)
        report("VIOLATION nanosleep in %d: %m", getpid());
    else if (raw_now() - start < ms / 1000.0 - 0.001)
        report("VIOLATION nanosleep returned after %.3f s", raw_now() - start);
}

static void vdso_range(uintptr_t *start, uintptr_t *end)
{
    char line[512];
    FILE *maps = fopen("/proc/self/maps", "r");
    *start = *end = 0;
    while (maps && fgets(line, sizeof line, maps))
        if (strstr(line, "[vdso]"))
            sscanf(line, "%lx-%lx", start, end);
    if (maps)
        fclose(maps);
    if (!*start) {
        fprintf(stderr, "no [vdso] mapping\n");
        exit(2);
    }
}

#define IP_LOW offsetof(struct seccomp_data, instruction_pointer)
#define IP_HIGH (offsetof(struct seccomp_data, instruction_pointer) + 4)

static void mode_seccomp_vdso(int selftest)
{
    uintptr_t start, end;
    vdso_range(&start, &end);
    uint32_t high = start >> 32, low_start = start, low_end = end;
    if ((end - 1) >> 32 != high || low_end == 0) {
        fprintf(stderr, "[vdso] straddles a 4 GiB boundary\n");
        exit(2);
    }
    struct sock_filter f[] = {
        /* 0 */ BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)),
        /* 1 */ BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_X86_64, 1, 0),
        /* 2 */ BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS),
        /* 3 */ BPF_STMT(BPF_LD | BPF_W | BPF_ABS, IP_HIGH),
        /* 4 */ BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, high, 0, 4),
        /* 5 */ BPF_STMT(BPF_LD | BPF_W | BPF_ABS, IP_LOW),
        /* 6 */ BPF_JUMP(BPF_JMP | BPF_JGE | BPF_K, low_start, 0, 2),
        /* 7 */ BPF_JUMP(BPF_JMP | BPF_JGE | BPF_K, low_end, 1, 0),
        /* 8 */ BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS),
        /* 9 */ BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    struct sock_fprog prog = {.len = sizeof f / sizeof f[0], .filter = f};
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) ||
        syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &prog)) {
        perror("seccomp");
        exit(2);
    }
    report("vdso %lx-%lx", (unsigned long)start, (unsigned long)end);
    ready();
    if (selftest) {
        void *insn = memmem((void *)start, end - start, "\x0f\x05", 2);
        if (!insn) {
            fprintf(stderr, "no syscall instruction in the vDSO\n");
            exit(2);
        }
        /* getpid from inside the vDSO: the filter must kill us on entry */
        __asm__ volatile("mov %0, %%rax\n\tjmp *%1" : : "i"(SYS_getpid), "r"(insn) : "rax");
        exit(4); /* not reached */
    }
    for (;;) {
        raw_checked_sleep(50);
        check_self();
        check_wall();
        after_each_round();
    }
}

/* ---- the attacker ---- */

static const char *root_canary, *link_canary;

/* A staging directory not attacked yet; those there at start are left alone. */
static char seen[512][80];
static int n_seen;

static int was_seen(const char *name)
{
    for (int i = 0; i < n_seen; i++)
        if (!strcmp(seen[i], name))
            return 1;
    return 0;
}

static int find_staging(char *path, size_t size, int remember_only)
{
    DIR *dir = opendir("/var/tmp");
    struct dirent *e;
    int found = 0;
    while (dir && !found && (e = readdir(dir))) {
        if (strncmp(e->d_name, ".snapcore-staging-", 18) || was_seen(e->d_name) ||
            strlen(e->d_name) >= sizeof seen[0])
            continue;
        if (n_seen < 512)
            strcpy(seen[n_seen++], e->d_name);
        snprintf(path, size, "/var/tmp/%s", e->d_name);
        found = !remember_only;
    }
    if (dir)
        closedir(dir);
    return found;
}

static char target_cmdline[4096];
static ssize_t target_cmdline_len;

static ssize_t read_file(const char *path, char *buf, size_t size)
{
    int fd = open(path, O_RDONLY);
    ssize_t n = fd < 0 ? -1 : read(fd, buf, size);
    if (fd >= 0)
        close(fd);
    return n;
}

static long read_number(const char *path)
{
    char buf[32] = "";
    return read_file(path, buf, sizeof buf - 1) > 0 ? atol(buf) : -1;
}

/* Is `dir` the working directory of a copy of the target (the snapshot's
 * child), one of the `span` processes born after pid `after`?  Then it is one
 * of our snapshots, not someone else's: its pid if so, -1 if another
 * program's, 0 if none is there (yet). */
static long copy_of_target_in(const char *dir, long after, int span)
{
    static long pid_max;
    char path[64], link[512], cmdline[sizeof target_cmdline];
    if (!pid_max)
        pid_max = read_number("/proc/sys/kernel/pid_max");
    for (long pid = after + 1; pid <= after + span; pid++) {
        long p = pid > pid_max ? pid - pid_max + 300 : pid; /* pids wrap to 300 */
        snprintf(path, sizeof path, "/proc/%ld/cwd", p);
        ssize_t n = readlink(path, link, sizeof link - 1);
        if (n < 0 || (size_t)n != strlen(dir) || memcmp(link, dir, n))
            continue;
        snprintf(path, sizeof path, "/proc/%ld/cmdline", p);
        n = read_file(path, cmdline, sizeof cmdline);
        return n == target_cmdline_len && !memcmp(cmdline, target_cmdline, n) ? p : -1;
    }
    return 0;
}

static int exists(const char *path)
{
    struct stat st;
    return lstat(path, &st) == 0;
}

/* Replace every file in `dir` (or create `core`) by a link; returns how many
 * links were made; `*flip` alternates symlink and hard link. */
static int swap_all(const char *dir, int *flip)
{
    char names[16][256], path[512];
    int n = 0, made = 0;
    DIR *d = opendir(dir);
    struct dirent *e;
    while (d && n < 16 && (e = readdir(d)))
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, ".."))
            snprintf(names[n++], sizeof names[0], "%s", e->d_name);
    if (d)
        closedir(d);
    if (!d)
        return -1;
    if (n == 0)
        strcpy(names[n++], "core");
    for (int i = 0; i < n; i++) {
        snprintf(path, sizeof path, "%s/%s", dir, names[i]);
        unlink(path);
        *flip ^= 1;
        if ((*flip ? symlink(root_canary, path) : link(link_canary, path)) == 0)
            made++;
    }
    return made;
}

/* Each wait below gives up after a while: a directory snapcore left behind. */
#define FOR_AT_MOST(seconds, cond) for (double t0_ = now(); (cond) && now() < t0_ + (seconds);)

/* The attacks, in turn, one per staging directory. */
enum { PRECREATE, AT_ONCE, AFTER_DUMP_SYMLINK, AFTER_DUMP_HARDLINK, STRATEGIES };
static const char *strategy_names[] = {"precreate", "at-once", "after-dump-symlink",
                                       "after-dump-hardlink"};

static int attack(const char *dir, int index, long last_pid)
{
    char core[512], cwd[64], link[512];
    snprintf(core, sizeof core, "%s/core", dir);
    int strategy = index % STRATEGIES, rc = -1, tries = 0, err = 0;
    const char *name = strategy_names[strategy];
    long child = 0;
    /* Leave other snapshots alone (another test run may be going on). */
    for (double t0 = now(); !child && exists(dir) && now() < t0 + 2; usleep(50))
        child = copy_of_target_in(dir, last_pid, 256);
    if (child <= 0) {
        report("skipped %s: %s", dir, child ? "another program's snapshot" : "no copy of the "
               "target in it");
        return 0;
    }
    report("attack %s %s", dir, name);
    if (strategy == PRECREATE) {
        FOR_AT_MOST(3, exists(dir) && (rc = symlink(root_canary, core)) != 0) {
            err = errno;
            tries++;
        }
        report("result %s %s: %s after %d tries", dir, name, rc ? strerror(err) : "ok", tries);
        FOR_AT_MOST(2, exists(dir))
            usleep(1000);
        return 1;
    }
    double delay = 0;
    if (strategy == AT_ONCE) {
        struct stat st;
        FOR_AT_MOST(3, exists(dir) && !(lstat(core, &st) == 0 && S_ISREG(st.st_mode)))
            ; /* spin: the kernel creates it at some moment */
    } else {
        /* Once the dump is over (the child's cwd is gone with it), snapcore
         * looks at the core, checks it and moves it: swap at some moment then. */
        static const double delays_ms[] = {0, 0.25, 0.5, 1, 2, 4, 8};
        static int after_dumps;
        delay = delays_ms[after_dumps++ % 7] / 1000;
        snprintf(cwd, sizeof cwd, "/proc/%ld/cwd", child);
        FOR_AT_MOST(3, readlink(cwd, link, sizeof link) > 0)
            ;
        for (double t0 = now(); now() < t0 + delay;)
            ;
    }
    int flip = strategy == AFTER_DUMP_HARDLINK, links = 0, rounds = 0, made = 0;
    FOR_AT_MOST(1, made >= 0) {
        made = swap_all(dir, &flip);
        links += made > 0 ? made : 0;
        rounds++;
    }
    report("result %s %s: %.2f ms, %d links in %d rounds%s", dir, name, delay * 1000, links,
           rounds, made >= 0 ? " (directory still there after 1 s)" : "");
    return 1;
}

static void mode_attacker(char **argv, int argc)
{
    if (argc < 6) {
        fprintf(stderr, "usage: hostile attacker REPORT ROOT_CANARY LINK_CANARY TARGET_PID\n");
        exit(2);
    }
    root_canary = argv[3];
    link_canary = argv[4];
    char path[64];
    snprintf(path, sizeof path, "/proc/%s/cmdline", argv[5]);
    target_cmdline_len = read_file(path, target_cmdline, sizeof target_cmdline);
    if (target_cmdline_len <= 0) {
        fprintf(stderr, "cannot read %s\n", path);
        exit(2);
    }
    char dir[512];
    find_staging(dir, sizeof dir, 1); /* those there already are not ours */
    ready();
    for (int index = 0;; ) {
        long last_pid = read_number("/proc/sys/kernel/ns_last_pid");
        if (!find_staging(dir, sizeof dir, 0)) {
            usleep(1000);
            continue;
        }
        index += attack(dir, index, last_pid);
    }
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: hostile innocent|exec_loop|exit_mid_dump|seccomp_vdso|attacker|badname "
                        "REPORT_FILE [ARGS]\n");
        return 2;
    }
    report_path = argv[2];
    install_handlers();
    install_segv_handler();
    const char *mode = argv[1];
    if (!strcmp(mode, "innocent"))
        mode_innocent();
    else if (!strcmp(mode, "exec_loop"))
        mode_exec_loop(argv, argc);
    else if (!strcmp(mode, "exit_mid_dump"))
        mode_exit_mid_dump(argc < 4 ? 0.3 : strcmp(argv[3], "never") ? atof(argv[3]) : -1);
    else if (!strcmp(mode, "seccomp_vdso"))
        mode_seccomp_vdso(argc > 3 && !strcmp(argv[3], "selftest"));
    else if (!strcmp(mode, "attacker"))
        mode_attacker(argv, argc);
    else if (!strcmp(mode, "badname"))
        mode_badname(argv);
    fprintf(stderr, "unknown mode %s\n", mode);
    return 2;
}

#endif
