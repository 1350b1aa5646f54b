/*
 * A target that checks itself.  usage: victim MODE REPORT_FILE
 *
 * MODE is where the main thread blocks between heartbeats:
 *   sleep   nanosleep(300 ms), checking it never returns early or with EINTR
 *   registers  like sleep, from its own `syscall` with a known value in
 *           rbx, r12 and ymm8 (its upper half too, with AVX2), checked after
 *           each call: a thread given back its state by anything but the
 *           kernel (a rt_sigreturn snapcore's landing made) shows a
 *           difference
 *   read    read() on stdin; every line read is reported as "got LINE"
 *   accept  accept() on 127.0.0.1 (the port is reported as "port N")
 *   futex   a raw FUTEX_WAIT that a helper thread wakes per stdin line
 *   busy    a computing loop (busy_loop) that never enters the kernel
 *   seccomp-allow       an allow-all seccomp filter, then like sleep
 *   seccomp-errno-clone clone fails with EPERM, then like sleep
 *   seccomp-kill-clone  clone kills the process, then like sleep
 *   seccomp-arch        any arch but the machine's own kills the process, then like sleep
 *   seccomp-newuser     clone with CLONE_NEWUSER fails with EPERM, then like sleep
 *   seccomp-no-fork     clone without CLONE_THREAD kills the process, then like sleep
 *   seccomp-strict      strict mode; echoes "got" on stdout per byte read on stdin
 *   nodump  PR_SET_DUMPABLE 0, then like sleep
 *   subreaper  PR_SET_CHILD_SUBREAPER (orphans below it become its children,
 *           and their end its SIGCHLD), then like sleep
 *   vfork   vfork()s a child that sleeps 3 s: meanwhile the main thread is in
 *           uninterruptible sleep (D); then reaps it and behaves like sleep
 *   bigmap  maps 3 GiB private writable memory it never touches, then like sleep
 *   fat     writes 24 MiB of heap (a core of that size), then like sleep
 *   grow    writes 4 MiB more heap every 100 ms up to 96 MiB, then like sleep
 *   sparse  an 8 GiB reservation touched in 4 pages, and a 32 MiB file
 *           (REPORT_FILE.data) mapped private and written in one page: the
 *           kernel dumps that mapping whole, reading the rest from the file
 *
 * Every violation is appended to REPORT_FILE as a "VIOLATION ..." line, by
 * path (not by descriptor), so that a copy of this process with its
 * descriptors closed would still be caught.  Heartbeats are "hb PID": a copy
 * running this code would write its own pid.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/sched.h>
#include <linux/futex.h>
#include <linux/seccomp.h>
#include <netinet/in.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stddef.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "report.h"

/* The machine's own architecture, as seccomp names it: any other kills. */
#if defined(__aarch64__)
#define NATIVE_AUDIT_ARCH AUDIT_ARCH_AARCH64
#else
#define NATIVE_AUDIT_ARCH AUDIT_ARCH_X86_64
#endif

static void mode_sleep_loop(void)
{
    for (;;) {
        checked_sleep(300);
        after_each_round();
    }
}

static void mode_sleep(void)
{
    ready();
    mode_sleep_loop();
}

static void mode_read(void)
{
    char buf[256];
    ready();
    for (;;) {
        ssize_t n = read(0, buf, sizeof buf - 1);
        if (n < 0) {
            report("VIOLATION read: %s", strerror(errno));
            sleep(1);
        } else if (n == 0) {
            exit(0);
        } else {
            buf[n] = 0;
            buf[strcspn(buf, "\n")] = 0;
            report("got %s", buf);
        }
        after_each_round();
    }
}

static void mode_accept(void)
{
    int s = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof addr;
    if (s < 0 || bind(s, (struct sockaddr *)&addr, sizeof addr) || listen(s, 8) ||
        getsockname(s, (struct sockaddr *)&addr, &len)) {
        perror("socket");
        exit(2);
    }
    report("port %d", ntohs(addr.sin_port));
    ready();
    for (;;) {
        int c = accept(s, NULL, NULL);
        if (c < 0) {
            report("VIOLATION accept: %s", strerror(errno));
            sleep(1);
        } else {
            report("accepted");
            close(c);
        }
        after_each_round();
    }
}

static uint32_t futex_word;

static void *futex_waker(void *arg)
{
    char buf[256];
    (void)arg;
    while (read(0, buf, sizeof buf) > 0) {
        __atomic_store_n(&futex_word, 1, __ATOMIC_SEQ_CST);
        syscall(SYS_futex, &futex_word, FUTEX_WAKE, 1, NULL, NULL, 0);
    }
    return NULL;
}

static void mode_futex(void)
{
    pthread_t t;
    pthread_create(&t, NULL, futex_waker, NULL);
    ready();
    for (;;) {
        long r = syscall(SYS_futex, &futex_word, FUTEX_WAIT, 0, NULL, NULL, 0);
        if (r != 0 && errno != EAGAIN)
            report("VIOLATION futex: %s", strerror(errno));
        if (__atomic_exchange_n(&futex_word, 0, __ATOMIC_SEQ_CST) == 1)
            report("woken");
        after_each_round();
    }
}

static volatile uint64_t busy_sink;

__attribute__((noinline)) static void busy_loop(void)
{
    uint64_t x = 1;
    for (uint64_t i = 0; i < 200 * 1000 * 1000ULL; i++)
        x = x * 6364136223846793005ULL + 1442695040888963407ULL;
    busy_sink = x;
}

static void mode_busy(void)
{
    ready();
    for (;;) {
        busy_loop();
        after_each_round();
    }
}

#define LOAD(field) BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, field))
#define ARG0_LOW (offsetof(struct seccomp_data, args[0]))
#define ALLOW BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW)

static void install_filter(struct sock_filter *code, unsigned short len)
{
    struct sock_fprog prog = {.len = len, .filter = code};
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) || prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog)) {
        perror("seccomp");
        exit(2);
    }
}

/* Filters in the shape real sandboxes use; each returns whether `mode` named one. */
static int install_named_filter(const char *mode)
{
    if (!strcmp(mode, "seccomp-allow")) {
        struct sock_filter f[] = {ALLOW};
        install_filter(f, 1);
    } else if (!strcmp(mode, "seccomp-errno-clone") || !strcmp(mode, "seccomp-kill-clone")) {
        unsigned deny = mode[8] == 'e' ? SECCOMP_RET_ERRNO | EPERM : SECCOMP_RET_KILL_PROCESS;
        struct sock_filter f[] = {
            LOAD(nr),
            BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_clone, 0, 1),
            BPF_STMT(BPF_RET | BPF_K, deny),
            ALLOW,
        };
        install_filter(f, 4);
    } else if (!strcmp(mode, "seccomp-arch")) {
        struct sock_filter f[] = {
            LOAD(arch),
            BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, NATIVE_AUDIT_ARCH, 1, 0),
            BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS),
            ALLOW,
        };
        install_filter(f, 4);
    } else if (!strcmp(mode, "seccomp-newuser") || !strcmp(mode, "seccomp-no-fork")) {
        int newuser = mode[8] == 'n' && mode[9] == 'e';
        struct sock_filter f[] = {
            LOAD(nr),
            BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_clone, 0, 3),
            BPF_STMT(BPF_LD | BPF_W | BPF_ABS, ARG0_LOW),
            BPF_JUMP(BPF_JMP | BPF_JSET | BPF_K, newuser ? CLONE_NEWUSER : CLONE_THREAD,
                     newuser ? 0 : 1, newuser ? 1 : 0),
            BPF_STMT(BPF_RET | BPF_K, newuser ? SECCOMP_RET_ERRNO | EPERM
                                              : SECCOMP_RET_KILL_PROCESS),
            ALLOW,
        };
        install_filter(f, 6);
    } else {
        return 0;
    }
    return 1;
}

static void mode_strict(void)
{
    char c;
    ready();
    if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_STRICT))
        exit(2);
    for (;;) {
        if (read(0, &c, 1) == 1)
            (void)!write(1, "got\n", 4);
    }
}

#define KNOWN 0x1122334455667788ULL

#if defined(__aarch64__)
/* arm64: x19, x20 (callee-saved, the kernel's to keep) and d8 hold KNOWN
 * across a raw nanosleep; after it each must still hold it. */
static void mode_registers(void)
{
    struct timespec ts = {0, 300 * 1000000L};
    ready();
    for (;;) {
        unsigned long long x19, x20, low;
        long ret;
        double start = now();
        register long x0 asm("x0") = (long)&ts;
        register long x1 asm("x1") = 0;
        register long x8 asm("x8") = SYS_nanosleep;
        asm volatile("movz x19, #0x7788\n\t"
                     "movk x19, #0x5566, lsl #16\n\t"
                     "movk x19, #0x3344, lsl #32\n\t"
                     "movk x19, #0x1122, lsl #48\n\t"
                     "mov x20, x19\n\t"
                     "fmov d8, x19\n\t"
                     "svc #0\n\t"
                     "str x19, %[x19]\n\t"
                     "str x20, %[x20]\n\t"
                     "str d8, %[low]"
                     : "+r"(x0), [x19] "=m"(x19), [x20] "=m"(x20), [low] "=m"(low)
                     : "r"(x1), "r"(x8)
                     : "x19", "x20", "v8", "memory");
        ret = x0;
        if (ret != 0)
            report("VIOLATION nanosleep in %d returned %ld", (int)gettid(), ret);
        else if (now() - start < 0.299)
            report("VIOLATION nanosleep returned after %.3f s", now() - start);
        if (x19 != KNOWN || x20 != KNOWN || low != KNOWN)
            report("VIOLATION registers after a syscall: x19 %llx x20 %llx d8 %llx",
                   x19, x20, low);
        after_each_round();
    }
}
#else
static void mode_registers(void)
{
    struct timespec ts = {0, 300 * 1000000L};
    int avx2 = __builtin_cpu_supports("avx2");
    ready();
    for (;;) {
        unsigned long long rbx, r12, low, high = KNOWN;
        long ret;
        double start = now();
        if (avx2)
            asm volatile("movabs $0x1122334455667788, %%rbx\n\t"
                         "mov %%rbx, %%r12\n\t"
                         "movq %%rbx, %%xmm8\n\t"
                         "vpbroadcastq %%xmm8, %%ymm8\n\t"
                         "syscall\n\t"
                         "mov %%rbx, %[rbx]\n\t"
                         "mov %%r12, %[r12]\n\t"
                         "movq %%xmm8, %[low]\n\t"
                         "vextracti128 $1, %%ymm8, %%xmm9\n\t"
                         "movq %%xmm9, %[high]\n\t"
                         "vzeroupper"
                         : "=a"(ret), [rbx] "=m"(rbx), [r12] "=m"(r12), [low] "=m"(low),
                           [high] "=m"(high)
                         : "a"(SYS_nanosleep), "D"(&ts), "S"(0)
                         : "rbx", "r12", "rcx", "r11", "xmm8", "xmm9", "memory");
        else
            asm volatile("movabs $0x1122334455667788, %%rbx\n\t"
                         "mov %%rbx, %%r12\n\t"
                         "movq %%rbx, %%xmm8\n\t"
                         "syscall\n\t"
                         "mov %%rbx, %[rbx]\n\t"
                         "mov %%r12, %[r12]\n\t"
                         "movq %%xmm8, %[low]"
                         : "=a"(ret), [rbx] "=m"(rbx), [r12] "=m"(r12), [low] "=m"(low)
                         : "a"(SYS_nanosleep), "D"(&ts), "S"(0)
                         : "rbx", "r12", "rcx", "r11", "xmm8", "memory");
        if (ret != 0)
            report("VIOLATION nanosleep in %d returned %ld", (int)gettid(), ret);
        else if (now() - start < 0.299)
            report("VIOLATION nanosleep returned after %.3f s", now() - start);
        if (rbx != KNOWN || r12 != KNOWN || low != KNOWN || high != KNOWN)
            report("VIOLATION registers after a syscall: rbx %llx r12 %llx ymm8 %llx:%llx",
                   rbx, r12, high, low);
        after_each_round();
    }
}
#endif

static void mode_vfork(void)
{
    ready();
    signal(SIGCHLD, SIG_DFL); /* this child's SIGCHLD is expected */
    pid_t pid = vfork();
    if (pid == 0) {
        struct timespec ts = {3, 0};
        syscall(SYS_nanosleep, &ts, NULL);
        _exit(0);
    }
    if (pid < 0 || waitpid(pid, NULL, 0) != pid)
        report("VIOLATION vfork child not reaped");
    install_handlers();
    mode_sleep_loop();
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: victim sleep|read|accept|futex|busy REPORT_FILE\n");
        return 2;
    }
    report_path = argv[2];
    install_handlers();
    const char *mode = argv[1];
    if (!strcmp(mode, "sleep"))
        mode_sleep();
    else if (!strcmp(mode, "registers"))
        mode_registers();
    else if (!strcmp(mode, "read"))
        mode_read();
    else if (!strcmp(mode, "accept"))
        mode_accept();
    else if (!strcmp(mode, "futex"))
        mode_futex();
    else if (!strcmp(mode, "busy"))
        mode_busy();
    else if (!strcmp(mode, "seccomp-strict"))
        mode_strict();
    else if (!strcmp(mode, "nodump")) {
        prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
        mode_sleep();
    } else if (!strcmp(mode, "subreaper")) {
        prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
        mode_sleep();
    } else if (!strcmp(mode, "vfork"))
        mode_vfork();
    else if (!strcmp(mode, "fat")) {
        char *heap = malloc(24 << 20);
        if (!heap)
            exit(2);
        memset(heap, 0x5a, 24 << 20);
        mode_sleep();
    } else if (!strcmp(mode, "grow")) {
        ready();
        for (int i = 0; i < 24; i++) {
            char *chunk = malloc(4 << 20);
            if (!chunk)
                exit(2);
            memset(chunk, 0x5a, 4 << 20);
            checked_sleep(100);
        }
        mode_sleep_loop();
    } else if (!strcmp(mode, "sparse")) {
        char *reserve = mmap(NULL, 8UL << 30, PROT_READ | PROT_WRITE,
                             MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        char data[4096];
        snprintf(data, sizeof data, "%s.data", report_path);
        int fd = open(data, O_RDWR | O_CREAT | O_TRUNC, 0600);
        if (reserve == MAP_FAILED || fd < 0 || ftruncate(fd, 32 << 20) != 0)
            exit(2);
        char *file = mmap(NULL, 32 << 20, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
        if (file == MAP_FAILED)
            exit(2);
        for (int i = 0; i < 4; i++)
            reserve[(size_t)i << 30] = 1;
        file[0] = 1; /* one copied page: the mapping gets an anon_vma */
        mode_sleep();
    } else if (!strcmp(mode, "bigmap")) {
        if (mmap(NULL, 3UL << 30, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0) ==
            MAP_FAILED)
            exit(2);
        mode_sleep();
    }
    else if (install_named_filter(mode))
        mode_sleep();
    fprintf(stderr, "unknown mode %s\n", mode);
    return 2;
}
