/*
 * A thread that lives inside an rseq critical section (glibc registers the
 * rseq area; the section is the kernel selftests' x86_64 layout, and its
 * aarch64 one: the time read from cntvct_el0, RSEQ_SIG 0xd428bc00).  The
 * kernel must abort the section whenever the thread is preempted, stopped
 * or signalled inside it (kernel/rseq.c: rseq_ip_fixup, on the way back to
 * user space).
 *
 * The one way a tracer cancels that abort is to let the thread go back to
 * user space outside the section (injected registers: the kernel then sees
 * an instruction pointer outside the range and clears rseq_cs, as the ABI
 * says it does "when it is preempting or delivering a signal outside of the
 * range") and to put it back inside afterwards: with rseq_cs cleared, the
 * kernel has nothing left to abort.  So the section's last read, just
 * before its commit, is rseq_cs itself: a commit that saw it cleared (or
 * pointing elsewhere) is the violation.  Nothing else clears it while the
 * thread is inside: the store that arms it is the instruction right before
 * the section's first, a preemption or signal inside aborts, and a return
 * to user space with no rseq event inside (an interrupt, task work) leaves
 * it alone (rseq_need_restart returns 0 before clear_rseq_cs).  So a stall
 * the thread's kernel never saw (an emulator, a descheduled vCPU) cannot
 * read as one, where a timing could.
 *
 *   rseq REPORT_FILE   single-threaded, so the busy main thread is the only
 *                      thread snapcore can run its injected calls in; it
 *                      reports the address of `outside_spin`, a loop outside
 *                      any section, for the test that plays the wrong
 *                      tracer (tests/test_rseq.py)
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

/* A loop outside any section: where the test's wrong tracer parks the thread. */
void outside_spin(void);
__asm__(".text\n\t"
        ".globl outside_spin\n\t"
        ".hidden outside_spin\n"
        "outside_spin:\n\t"
#if defined(__aarch64__)
        "b outside_spin\n\t"
#else
        "jmp outside_spin\n\t"
#endif
);

/* 0: committed, with the section's length in cycles in *elapsed and the
 * rseq_cs its last read saw in *armed; 1: aborted by the kernel.  Not
 * inlined: one section, one descriptor (its address is *descriptor). */
__attribute__((noinline)) static int critical_section(uint64_t spins, uint64_t *elapsed,
                                                      uint64_t *armed, uint64_t *descriptor)
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
        "str x9, %[descriptor]\n\t"
        "str x9, %[cs]\n\t" /* armed: the section starts at the next instruction */
        "1:\n\t"
        "mrs x10, cntvct_el0\n\t"
        "mov x11, %[spins]\n\t"
        "5:\n\t"
        "subs x11, x11, #1\n\t"
        "b.ne 5b\n\t"
        "mrs x9, cntvct_el0\n\t"
        "sub x9, x9, x10\n\t"
        "str x9, %[elapsed]\n\t"
        "ldr x9, %[cs]\n\t"
        "str x9, %[armed]\n\t" /* the commit: the section's last instruction */
        "2:\n\t"
        ".pushsection __rseq_failure, \"ax\"\n\t"
        ".long 0xd428bc00\n\t" /* RSEQ_SIG, just before the abort handler */
        "4:\n\t"
        "b %l[aborted]\n\t"
        ".popsection\n\t"
        :
        : [cs] "m"(rs->rseq_cs), [spins] "r"(spins), [elapsed] "m"(*elapsed),
          [armed] "m"(*armed), [descriptor] "m"(*descriptor)
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
        "movq %%rax, %[descriptor]\n\t"
        "movq %%rax, %[cs]\n\t" /* armed: the section starts at the next instruction */
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
        "movq %%rax, %[elapsed]\n\t"
        "movq %[cs], %%rax\n\t"
        "movq %%rax, %[armed]\n\t" /* the commit: the section's last instruction */
        "2:\n\t"
        ".pushsection __rseq_failure, \"ax\"\n\t"
        ".byte 0x0f, 0xb9, 0x3d\n\t"
        ".long 0x53053053\n\t" /* RSEQ_SIG, just before the abort handler */
        "4:\n\t"
        "jmp %l[aborted]\n\t"
        ".popsection\n\t"
        :
        : [cs] "m"(rs->rseq_cs), [spins] "r"(spins), [elapsed] "m"(*elapsed),
          [armed] "m"(*armed), [descriptor] "m"(*descriptor)
        : "memory", "cc", "rax", "rcx", "rdx", "r8"
        : aborted);
#endif
    return 0;
aborted:
    return 1;
}

static long switches(void)
{
    struct rusage ru;
    getrusage(RUSAGE_THREAD, &ru);
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
    uint64_t usual = UINT64_MAX, elapsed = 0, armed = 0, descriptor = 0;
    for (int i = 0; i < 50; i++)
        if (critical_section(SPINS, &elapsed, &armed, &descriptor) == 0 && elapsed < usual)
            usual = elapsed;
    report("rseq outside_spin %p", (void *)outside_spin);
    ready();
    /* Long: a section that took over 3 times its usual length and around
     * which the thread was switched out, which a missed abort also gives but
     * so does a stall of the thread right after a switch outside the section:
     * counted for the notes, not a verdict. */
    unsigned long commits = 0, aborts = 0, long_ones = 0, round = 0;
    for (;;) {
        long before = switches();
        armed = 0;
        if (critical_section(SPINS, &elapsed, &armed, &descriptor) == 0) {
            commits++;
            if (armed != descriptor)
                report("VIOLATION rseq commit with rseq_cs %#llx, not its section's %#llx: "
                       "resumed inside a section the kernel had seen it leave "
                       "(%llu cycles, usual %llu)",
                       (unsigned long long)armed, (unsigned long long)descriptor,
                       (unsigned long long)elapsed, (unsigned long long)usual);
            else if (elapsed > 3 * usual && switches() != before)
                long_ones++;
        } else {
            aborts++;
        }
        if (++round % 2000 == 0) {
            checked_sleep(1);
            report("rseq commits %lu aborts %lu long %lu", commits, aborts, long_ones);
            after_each_round();
        }
    }
}
