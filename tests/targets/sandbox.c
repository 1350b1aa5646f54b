/*
 * Targets that sandbox themselves the way real programs do, per thread or
 * late, and a userfaultfd monitor.  usage: sandbox MODE REPORT_FILE
 *
 *   thread_kill  a worker thread installs a seccomp filter of its own (no
 *                TSYNC: filters belong to threads) that kills the process
 *                on a clone without CLONE_THREAD (a fork), and sleeps in a
 *                checked nanosleep loop; the main thread computes, with a
 *                heartbeat every ~300 ms.  The other threads have no filter
 *   thread_trap  the same, but the filter answers SECCOMP_RET_TRAP, and a
 *                SIGSYS handler reports "VIOLATION SIGSYS"
 *   late_filter  two threads in checked sleeps; the first line on stdin makes
 *                the main thread install, on every thread (TSYNC), a filter
 *                that kills the process on a fork; it reports "filtered"
 *   uffd_fork    1 MiB registered with a userfaultfd that asks for fork
 *                events (UFFD_FEATURE_EVENT_FORK), read by a monitor thread;
 *                then like late_filter's sleeps, without the filter
 *
 * See report.h for how violations and heartbeats are reported.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/sched.h>
#include <linux/seccomp.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <pthread.h>
#include <stddef.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>

#include "report.h"

/* The machine's own architecture, as seccomp names it: any other kills. */
#if defined(__aarch64__)
#define NATIVE_AUDIT_ARCH AUDIT_ARCH_AARCH64
#else
#define NATIVE_AUDIT_ARCH AUDIT_ARCH_X86_64
#endif

/* Kills (or traps) a clone(2) whose flags lack CLONE_THREAD: a fork. */
static void install_fork_filter(unsigned action, unsigned tsync)
{
    struct sock_filter f[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, NATIVE_AUDIT_ARCH, 1, 0),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS),
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_clone, 0, 3),
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, args[0])),
        BPF_JUMP(BPF_JMP | BPF_JSET | BPF_K, CLONE_THREAD, 1, 0),
        BPF_STMT(BPF_RET | BPF_K, action),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    struct sock_fprog prog = {.len = sizeof f / sizeof f[0], .filter = f};
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) ||
        syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, tsync, &prog)) {
        report("VIOLATION seccomp: %s", strerror(errno));
        exit(2);
    }
}

static void on_sigsys(int sig)
{
    (void)sig;
    report("VIOLATION SIGSYS in %d", (int)gettid());
}

static pthread_barrier_t filtered;

static void *filtered_worker(void *arg)
{
    install_fork_filter(*(unsigned *)arg, 0);
    pthread_barrier_wait(&filtered);
    for (;;)
        checked_sleep(200);
    return NULL;
}

static void spin(double seconds)
{
    double until = now() + seconds;
    while (now() < until)
        ;
}

static void mode_thread_filter(unsigned action)
{
    static unsigned chosen;
    chosen = action;
    struct sigaction sa = {.sa_handler = on_sigsys};
    sigaction(SIGSYS, &sa, NULL);
    pthread_t worker;
    pthread_barrier_init(&filtered, NULL, 2);
    pthread_create(&worker, NULL, filtered_worker, &chosen);
    pthread_barrier_wait(&filtered);
    report("worker %d", (int)syscall(SYS_gettid));
    ready();
    for (;;) {
        spin(0.3);  /* clock_gettime is the vDSO's: no syscall */
        after_each_round();
    }
}

static void *sleeper(void *arg)
{
    (void)arg;
    for (;;)
        checked_sleep(100);
    return NULL;
}

static void mode_late_filter(void)
{
    pthread_t other;
    pthread_create(&other, NULL, sleeper, NULL);
    ready();
    char line[64];
    if (fgets(line, sizeof line, stdin)) {
        install_fork_filter(SECCOMP_RET_KILL_PROCESS, SECCOMP_FILTER_FLAG_TSYNC);
        report("filtered");
    }
    for (;;) {
        checked_sleep(300);
        after_each_round();
    }
}

static int uffd;

static void *monitor(void *arg)
{
    (void)arg;
    for (;;) {
        struct uffd_msg msg;
        ssize_t n = read(uffd, &msg, sizeof msg);
        if (n == sizeof msg && msg.event == UFFD_EVENT_FORK)
            report("fork event");
        else if (n < 0 && errno != EINTR && errno != EAGAIN)
            report("VIOLATION userfaultfd read: %s", strerror(errno));
    }
    return NULL;
}

static void mode_uffd_fork(void)
{
    uffd = syscall(SYS_userfaultfd, O_CLOEXEC);
    struct uffdio_api api = {.api = UFFD_API, .features = UFFD_FEATURE_EVENT_FORK};
    size_t len = 1 << 20;
    char *area = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    struct uffdio_register reg = {.range = {(unsigned long)area, len},
                                  .mode = UFFDIO_REGISTER_MODE_MISSING};
    if (uffd < 0 || ioctl(uffd, UFFDIO_API, &api) || ioctl(uffd, UFFDIO_REGISTER, &reg)) {
        fprintf(stderr, "userfaultfd: %s\n", strerror(errno));
        exit(2);
    }
    pthread_t reader;
    pthread_create(&reader, NULL, monitor, NULL);
    ready();
    for (;;) {
        checked_sleep(300);
        after_each_round();
    }
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: sandbox MODE REPORT_FILE\n");
        return 2;
    }
    const char *mode = argv[1];
    report_path = argv[2];
    install_handlers();
    if (!strcmp(mode, "thread_kill"))
        mode_thread_filter(SECCOMP_RET_KILL_PROCESS);
    else if (!strcmp(mode, "thread_trap"))
        mode_thread_filter(SECCOMP_RET_TRAP);
    else if (!strcmp(mode, "late_filter"))
        mode_late_filter();
    else if (!strcmp(mode, "uffd_fork"))
        mode_uffd_fork();
    fprintf(stderr, "unknown mode %s\n", mode);
    return 2;
}
