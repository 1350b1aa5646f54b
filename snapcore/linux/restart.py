"""The runner's interrupted syscall restarted as the kernel would: arm64.

arm64's do_signal rewinds an interrupted syscall *before* the stop a tracer
sees (pc back at the `svc`, x0 from orig_x0, the syscall number forgotten)
and decides only *after* the stop whether the call runs again or becomes
restart_syscall (-ERESTART_RESTARTBLOCK: a relative nanosleep or
clock_nanosleep, a futex wait with a timeout), from the return value it
alone kept: x0 no longer holds it (arch/arm64/kernel/signal.c: do_signal,
setup_restart_syscall).  A thread detached from that stop gets the
kernel's decision.  The runner leaves it for its injected calls and is
given back from a later stop, where the decision is lost: its wait would
start over with its whole timeout, late by what it had already waited.

So, before its first call, the runner is let go from that first stop just
until it enters the kernel again (PTRACE_SYSCALL: its next instruction is
the `svc`): the kernel has decided, and x8 says what (restart_syscall's
number, or the call's own).  That entry is turned into getpid, which
changes nothing of the thread, whose registers go back at once with x8 as
decided: released, it runs restart_syscall, the rest of its wait, as on
x86_64, where the kernel decides after the stop from registers the tracer
gives back (arch_do_signal_or_restart).
"""

from __future__ import annotations

import struct

from snapcore.linux import arch, procfs, ptrace
from snapcore.linux.inject import SEIZE_OPTIONS, HeldThread, _wait_syscall_stop, finite_deadline


def settle(pid: int, thread: HeldThread, guard, deadline: float) -> bool:
    """Make the runner's saved registers the kernel's decision (see above);
    whether it was let go for it.  Nothing to do where the kernel decides
    after the stop (x86_64), or when the thread is not at an `svc` (nothing
    was rewound), or its filters would not let getpid run there."""
    if not arch.RESTART_DECIDED_AFTER_STOP or not thread.free:
        return False
    at = getattr(thread.regs, arch.REG_IP)
    getpid = arch.NR["getpid"]
    if not procfs.is_syscall_instruction(pid, at) or \
            (guard is not None and not guard.runs(((getpid, (), at),))):
        return False
    tid = thread.tid
    # Until its registers are back, a snapcore killed must not leave it to
    # run on from a call it did not make: EXITKILL, as inject does.
    ptrace.set_options(tid, SEIZE_OPTIONS | ptrace.O_EXITKILL)
    try:
        ptrace.set_sigmask(tid, ptrace.ALL_SIGNALS_MASK)
        ptrace.resume_to_syscall(tid)
        _wait_syscall_stop(tid, deadline, [], None, thread.stops_taken)
        entry = ptrace.get_regs(tid)
        if getattr(entry, arch.REG_IP) != at + len(arch.SYSCALL_INSN):
            return True  # not the entry it was at (cannot be): its own registers go back
        ptrace.set_regset(tid, arch.NR_REGSET or 0, struct.pack("<i", getpid))
        ptrace.resume_to_syscall(tid)
        _wait_syscall_stop(tid, deadline, [], None, thread.stops_taken)
        decided = getattr(entry, arch.REG_NR)
        if decided != getattr(thread.regs, arch.REG_NR):  # restart_syscall: a landing's
            thread.again = ptrace.copy_regs(thread.regs)  # frame cannot keep it (see
            setattr(thread.regs, arch.REG_NR, decided)  # landing._own_registers)
        return True
    finally:
        thread.park(finite_deadline(deadline))
