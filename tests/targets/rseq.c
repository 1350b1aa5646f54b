/*
 * A thread that lives inside an rseq critical section (glibc registers the
 * rseq area; the section is the kernel selftests' x86_64 layout, and its
 * aarch64 one: the time read from cntvct_el0, RSEQ_SIG 0xd428bc00).  The
 * kernel must abort the section whenever the thread is preempted or stopped
 * inside it (kernel/rseq.c: rseq_ip_fixup).  The target reports a commit
 * that happened although the thread was switched out during the section:
 * the section took far longer than its spin, and the thread's context
 * switch count went up around it.
 *
 *   rseq REPORT_FILE   single-threaded, so the busy main thread is the only
 *                      thread snapcore can run its injected calls in
 */
#include "report.h"

#include <stdint.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/rseq.h>

#define SPINS 200000ULL

static inline volatile struct rseq *rseq_area(void)
{
    return (volatile struct rseq *)((char *)__builtin_thread_pointer() + __rseq_offset);
}

/* 0: committed (elapsed cycles stored), 1: aborted by the kernel. */
static int critical_section(uint64_t spins, uint64_t *elapsed)
{
    volatile struct rseq *rs = rseq_area();
#if defined(__aarch64__)
    __asm__ __volatile__ goto(
        ".pushsection __rseq_cs, \"aw\"\n\t"
        ".balign 32\n\t"
        "3:\n\t"
        ".long 0x0, 0x0\n\t"
        ".quad 1f, (2f - 1f), 4f\n\t"
        ".popsection\n\t"
        "adrp x9, 3b\n\t"
        "add x9, x9, :lo12:3b\n\t"
        "str x9, %[cs]\n\t"
        "1:\n\t"
        "mrs x10, cntvct_el0\n\t"
        "mov x11, %[spins]\n\t"
        "5:\n\t"
        "subs x11, x11, #1\n\t"
        "b.ne 5b\n\t"
        "mrs x9, cntvct_el0\n\t"
        "sub x9, x9, x10\n\t"
        "str x9, %[elapsed]\n\t" /* the commit: the section's last instruction */
        "2:\n\t"
        ".pushsection __rseq_failure, \"ax\"\n\t"
        ".long 0xd428bc00\n\t" /* RSEQ_SIG, just before the abort handler */
        "4:\n\t"
        "b %l[aborted]\n\t"
        ".popsection\n\t"
        :
        : [cs] "m"(rs->rseq_cs), [spins] "r"(spins), [elapsed] "m"(*elapsed)
        : "memory", "cc", "x9", "x10", "x11"
        : aborted);
#else
    __asm__ __volatile__ goto(
        ".pushsection __rseq_cs, \"aw\"\n\t"
        ".balign 32\n\t"
        "3:\n\t"
        ".long 0x0, 0x0\n\t"
        ".quad 1f, (2f - 1f), 4f\n\t"
        ".popsection\n\t"
        "leaq 3b(%%rip), %%rax\n\t"
        "movq %%rax, %[cs]\n\t"
        "1:\n\t"
        "rdtsc\n\t"
        "shlq $32, %%rdx\n\t"
        "orq %%rdx, %%rax\n\t"
        "movq %%rax, %%r8\n\t"
        "movq %[spins], %%rcx\n\t"
        "5:\n\t"
        "decq %%rcx\n\t"
        "jnz 5b\n\t"
        "rdtsc\n\t"
        "shlq $32, %%rdx\n\t"
        "orq %%rdx, %%rax\n\t"
        "subq %%r8, %%rax\n\t"
        "movq %%rax, %[elapsed]\n\t" /* the commit: the section's last instruction */
        "2:\n\t"
        ".pushsection __rseq_failure, \"ax\"\n\t"
        ".byte 0x0f, 0xb9, 0x3d\n\t"
        ".long 0x53053053\n\t" /* RSEQ_SIG, just before the abort handler */
        "4:\n\t"
        "jmp %l[aborted]\n\t"
        ".popsection\n\t"
        :
        : [cs] "m"(rs->rseq_cs), [spins] "r"(spins), [elapsed] "m"(*elapsed)
        : "memory", "cc", "rax", "rcx", "rdx", "r8"
        : aborted);
#endif
    return 0;
aborted:
    return 1;
}

static long faults; /* minor faults (copy-on-write ones among them), at the last switches() */

static long switches(void)
{
    struct rusage ru;
    getrusage(RUSAGE_THREAD, &ru);
    faults = ru.ru_minflt;
    return ru.ru_nvcsw + ru.ru_nivcsw;
}

int main(int argc, char **argv)
{
    if (argc != 3 || strcmp(argv[1], "rseq")) {
        fprintf(stderr, "usage: rseq rseq REPORT_FILE\n");
        return 2;
    }
    report_path = argv[2];
    if (__rseq_size == 0) {
        report("VIOLATION glibc did not register rseq");
        return 1;
    }
    install_handlers();
    /* The usual length of the section, in cycles: the fastest of a few. */
    uint64_t usual = UINT64_MAX, elapsed = 0;
    for (int i = 0; i < 50; i++)
        if (critical_section(SPINS, &elapsed) == 0 && elapsed < usual)
            usual = elapsed;
    ready();
    unsigned long commits = 0, aborts = 0, round = 0;
    for (;;) {
        long before = switches(), faults_before = faults;
        if (critical_section(SPINS, &elapsed) == 0) {
            commits++;
            long after = switches();
            if (elapsed > 3 * usual && after != before)
                report("VIOLATION rseq commit after a switch: %llu cycles (usual %llu); "
                       "%ld switches, %ld minor faults",
                       (unsigned long long)elapsed, (unsigned long long)usual,
                       after - before, faults - faults_before);
        } else {
            aborts++;
        }
        if (++round % 2000 == 0) {
            checked_sleep(1);
            report("rseq commits %lu aborts %lu", commits, aborts);
            after_each_round();
        }
    }
}
