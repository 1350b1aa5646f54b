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

So, before its first call, the runner is let go from that first stop, with
its own registers and mask, just until it enters the kernel again
(PTRACE_SYSCALL: its next instruction is the `svc`): the kernel has
decided, and x8 says what (restart_syscall's number, or the call's own).
At that entry the call is skipped (syscallno -1) with pc back at the `svc`:
the thread's registers are then exactly as before, the decision kept.
Should snapcore die at any moment of this, the thread, detached, runs its
own call as decided: nothing here carries anything but its own state.
"""

from __future__ import annotations

from snapcore.linux import arch, heldsignals, procfs, ptrace, stops
from snapcore.linux.inject import HeldThread, finite_deadline, wait_for_interrupt_stop
from snapcore.linux.stops import ENDED, StopKind

_SKIP = (1 << 64) - 1  # syscallno -1: the entry's call is not run (el0_svc_common)


def settle(pid: int, thread: HeldThread, guard, deadline: float) -> bool:
    """Make the runner's saved registers the kernel's decision (see above);
    whether it was let go for it.  Nothing to do where the kernel decides
    after the stop (x86_64), when the thread is not at an `svc` (nothing
    was rewound), or when its filters would not let the skipped entry by
    (seccomp judges it after the tracer, with number -1)."""
    if not arch.RESTART_DECIDED_AFTER_STOP or not thread.free:
        return False
    own = thread.regs
    at = getattr(own, arch.REG_IP)
    args = tuple(getattr(own, r) for r in arch.SYSCALL_ARGS)
    if not procfs.is_syscall_instruction(pid, at) or \
            (guard is not None and not guard.runs(((-1, args, at),))):
        return False
    tid = thread.tid
    ptrace.resume_to_syscall(tid)
    if not _entered(thread, deadline):
        return True  # a signal it must take stopped it first (_entered)
    entry = ptrace.get_regs(tid)
    decided = ptrace.copy_regs(own)
    setattr(decided, arch.REG_NR, getattr(entry, arch.REG_NR))
    setattr(decided, arch.REG_ORIG_NR, _SKIP)
    ptrace.set_regs(tid, decided)  # pc back at the svc, its call skipped
    ptrace.resume_to_syscall(tid)
    _entered(thread, deadline)
    if getattr(entry, arch.REG_NR) != getattr(own, arch.REG_NR):  # restart_syscall: a
        thread.again = ptrace.copy_regs(own)  # landing's frame cannot keep it, it runs
        setattr(own, arch.REG_NR, getattr(entry, arch.REG_NR))  # the call again instead
    thread.park(finite_deadline(deadline))
    return True


def _entered(thread: HeldThread, deadline: float) -> bool:
    """Wait for the thread's next syscall stop; False when a signal it must
    take stopped it first (linux/heldsignals.py absorbs the others): a caught
    one is delivered there and then, and the thread held again at its
    handler (_deliver_now); any other is held in its delivery stop, its x8
    (decided by then) saved, the signal delivered at its release."""
    tid = thread.tid
    while True:
        stop = stops.wait(tid, finite_deadline(deadline))
        if stop.kind is StopKind.SYSCALL:
            return True
        if stop.kind is StopKind.SIGNAL and not heldsignals.absorbed(thread, stop.sig):
            if procfs.disposition(tid, stop.sig) == "catch":
                _deliver_now(thread, stop.sig, deadline)
            else:
                thread.pending_sig = stop.sig
                setattr(thread.regs, arch.REG_NR, getattr(ptrace.get_regs(tid), arch.REG_NR))
            return False
        if stop.kind in ENDED:
            thread.stopped = False
            raise ptrace.TaskGone(None, tid, "syscall", ended=True)
        # A group stop or an event on the way, or a signal absorbed: go on.
        ptrace.resume_to_syscall(tid)


def _deliver_now(thread: HeldThread, sig: int, deadline: float) -> None:
    """Let the kernel deliver a caught signal from its delivery stop, inside
    the do_signal that stopped the thread: it decides the interrupted call
    by the handler's SA_RESTART, as untraced, and frames the handler.  The
    interrupt asked first is taken before any other signal is dequeued
    (get_signal: the jobctl trap comes first), so the thread is held again
    at the handler's first instruction, where its state is saved anew: the
    snapshot shows it entering its handler, the window goes on with a thread
    free for the calls (and the handler's mask blocks the same signal)."""
    tid = thread.tid
    ptrace.interrupt(tid)
    ptrace.cont(tid, sig)
    wait_for_interrupt_stop(tid, finite_deadline(deadline))
    thread.save(with_xstate=True)
    thread.delivered = sig
