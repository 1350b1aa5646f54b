"""Run one syscall inside a stopped thread, and give the thread back untouched.

No code of the target is changed: the thread jumps to an existing `syscall`
instruction (see procfs.syscall_instructions, or the fork thread's own page:
engine/forkthread.py) with the number and arguments in its registers, and is
stepped with PTRACE_SYSCALL stops.
"""

from __future__ import annotations

import math
import os
import signal
import time
from dataclasses import dataclass, field

from snapcore.linux import abi, arch, heldsignals, ptrace, stops
from snapcore.linux.regsets import after_call, read as read_regsets
from snapcore.linux.ptrace import TaskGone
from snapcore.linux.stops import ENDED, Event, Execed, SignalStop, StopKind, StopLate

_U64 = (1 << 64) - 1
# How long a thread may take to come back from an injected call whose wait
# was cut short: the call must be waited out, or the thread keeps foreign
# registers.
GIVE_BACK_GRACE = 30.0


def signed(value: int) -> int:
    return value - (1 << 64) if value & (1 << 63) else value


# Options every seized target thread carries: syscall stops marked, and an
# exec reported as an event (so a thread that exec'd is never injected into).
SEIZE_OPTIONS = ptrace.O_TRACESYSGOOD | ptrace.O_TRACEEXEC


def syscall(tid: int, base: ptrace.Regs, at: int, nr: int, *args: int,
            deadline: float | None, events: list | None = None, guard=None,
            on_clone=None, stops_taken: list | None = None, late=None,
            keep_end: bool = False) -> tuple[int, list[tuple[int, int]]]:
    """Make stopped thread `tid` execute syscall `nr`; return its result and the
    ptrace events (event, message) it reported on the way.

    `guard(nr, args, at)`, when given, may refuse first (seccomp: see
    seccomp.Guard).  The kernel's copy of the syscall number (x86 orig_rax,
    arm64 syscallno: arch.REG_ORIG_NR) is set to -1 so the kernel's
    syscall-restart logic, which runs when the thread leaves its current
    stop, does not rewind its instruction pointer or overwrite its result
    register (arch/x86/kernel/signal.c: arch_do_signal_or_restart;
    arch/arm64/kernel/signal.c: do_signal, which tests in_syscall).
    `on_clone(tid)` runs for each task the call makes, while the caller is
    still stopped in its clone event.

    A SIGSTOP (the one signal an injected call's all-blocked mask cannot
    keep out) taken on the way is appended to `stops_taken` for the caller
    to give back, and suppressed meanwhile.  A call that a pending signal
    made return -ERESTARTNOINTR (fork does: kernel/fork.c) is run again.
    `late()`, when given, is called once if the deadline passes while the
    call runs, and returns how much longer to wait for it.  `keep_end`: see
    stops.wait.
    """
    if guard is not None:
        guard(nr, args, at)
    events = [] if events is None else events  # the caller's list survives an exception
    for _attempt in range(10):
        ptrace.set_regs(tid, call_regs(base, at, nr, args))
        for _ in ("entry", "exit"):
            ptrace.resume_to_syscall(tid)
            now_due = _wait_syscall_stop(tid, deadline, events, on_clone, stops_taken, late,
                                         keep_end)
            if now_due != deadline:  # late() was called: once only
                deadline, late = now_due, None
        result = signed(getattr(ptrace.get_regs(tid), arch.REG_RET))
        if result != abi.ERESTARTNOINTR:
            break
    return result, events


def call_regs(base: ptrace.Regs, at: int, nr: int, args: tuple) -> ptrace.Regs:
    """`base` set up to run syscall `nr` from the `syscall` at `at`."""
    regs = ptrace.copy_regs(base)
    setattr(regs, arch.REG_IP, at)
    setattr(regs, arch.REG_NR, nr)
    setattr(regs, arch.REG_ORIG_NR, _U64)
    for name, value in zip(arch.SYSCALL_ARGS, args):
        setattr(regs, name, value & _U64)
    return regs


def _wait_syscall_stop(tid: int, deadline: float | None, events: list, on_clone,
                       stops_taken: list | None, late=None,
                       keep_end: bool = False) -> float | None:
    """Wait for the next syscall stop; returns the deadline now in force."""
    while True:
        try:
            stop = stops.wait(tid, deadline, keep_end)
        except StopLate:
            if late is None:
                raise
            deadline, late = late(), None
            continue
        if stop.kind is StopKind.SYSCALL:
            return deadline
        if stop.kind is StopKind.EVENT:
            if stop.event == ptrace.EVENT_EXEC:
                raise Execed(tid, "syscall")
            # PTRACE_EVENT_CLONE arrives between clone's entry and exit.
            event = Event(stop.event, ptrace.event_msg(tid))
            events.append(event)
            if on_clone is not None and event.kind == ptrace.EVENT_CLONE:
                on_clone(event.message)
            ptrace.resume_to_syscall(tid)
        elif stop.kind is StopKind.GROUP:
            # A group stop began meanwhile: finish first (the kernel puts the
            # thread back into it when it is detached).
            ptrace.resume_to_syscall(tid)
        elif stop.kind is StopKind.SIGNAL and stop.sig == signal.SIGSTOP:
            # Job control: the one signal the mask cannot block.  It is held
            # back, and given back by the caller once the thread is its own.
            if stops_taken is not None:
                stops_taken.append(stop.sig)
            ptrace.resume_to_syscall(tid)
        elif stop.kind is StopKind.SIGNAL:
            # Every other signal is blocked while snapcore injects: this is a
            # synchronous fault caused by the injection itself.
            raise SignalStop(tid, "syscall", stop.sig)
        else:
            raise TaskGone(None, tid, "syscall", ended=True)


def wait_for_interrupt_stop(tid: int, deadline: float | None, group_ok: bool = False,
                            keep_end: bool = False) -> int:
    """Wait for the PTRACE_INTERRUPT stop, passing on signals that arrive first.
    Returns the stop signal of a group stop when `group_ok` (else refuses
    one: a stopped process must stay stopped), 0 for a plain interrupt stop.
    `keep_end`: see stops.wait."""
    while True:
        stop = stops.wait(tid, deadline, keep_end)
        if stop.kind is StopKind.EVENT:
            if stop.event == ptrace.EVENT_EXEC:
                # The exec event stop came first; the interrupt stop follows,
                # but the program snapcore checked is gone.
                raise Execed(tid, "interrupt")
            return 0
        if stop.kind is StopKind.SIGNAL:
            # A signal-delivery stop came first: deliver it as the kernel would
            # have; the interrupt stays pending and stops the thread next.
            ptrace.cont(tid, stop.sig)
        elif stop.kind is StopKind.GROUP:
            if group_ok:
                return stop.sig
            raise SignalStop(tid, "interrupt", stop.sig)  # it must stay stopped
        else:
            raise TaskGone(None, tid, "interrupt", ended=True)


def finite_deadline(deadline: float | None) -> float:
    """A deadline to wait for a thread's return by, whatever the caller's was."""
    now = time.monotonic()
    if deadline is None or not math.isfinite(deadline):
        return now + GIVE_BACK_GRACE
    return max(deadline, now) + 5.0


@dataclass
class HeldThread:
    """A seized thread snapcore holds stopped, with what it needs to give it back."""

    tid: int
    stopped: bool = False
    saved_regs: ptrace.Regs | None = None  # as it stopped: save()
    xstate: bytes = b""  # its FPU state (arch.FP_REGSET): save(with_xstate=True)
    regsets: tuple = ()  # its other register sets, (NT_ type, bytes) (arch.OTHER_REGSETS)
    again: ptrace.Regs | None = None  # its interrupted call from the start (linux/restart.py)
    sigmask: int = 0
    pending_sig: int = 0  # a signal it stopped to take while parked: delivered at release
    delivered: int = 0  # a caught signal delivered inside the window (restart._deliver_now)
    # Stop signals it took during injected calls (suppressed then): given back at release.
    stops_taken: list = field(default_factory=list)

    @property
    def regs(self) -> ptrace.Regs:
        """Its registers as it stopped (save() first: holding a thread saves them)."""
        if self.saved_regs is None:
            raise RuntimeError(f"thread {self.tid}'s registers were never saved")
        return self.saved_regs

    def save(self, with_xstate: bool) -> None:
        self.saved_regs = ptrace.get_regs(self.tid)
        self.sigmask = ptrace.get_sigmask(self.tid)
        if with_xstate:  # the FPU state and every other register set (linux/regsets.py)
            self.xstate, self.regsets = read_regsets(self.tid)

    @property
    def in_syscall(self) -> bool:
        return signed(getattr(self.regs, arch.REG_ORIG_NR)) >= 0

    @property
    def free(self) -> bool:
        """Whether it may run an injected call now: stopped, saved, and not
        held in a signal's delivery stop (injecting there would drop it)."""
        return self.stopped and not self.pending_sig and self.saved_regs is not None

    def inject(self, at: int, nr: int, *args: int, deadline: float,
               guard=None, events: list | None = None, on_clone=None,
               landing=None) -> tuple[int, list]:
        """Run one syscall in this held thread, then park it again with its own
        registers and signal mask.  Whatever ends the call (an error, a
        refusal, a stop request), the thread is given back here.

        Should snapcore die before it has given the thread back, the thread
        must not run on with registers or a mask that are not its own.  With
        a `landing` (linux/landing.py) the call runs from the landing's site
        with the stack pointer at its frame: let go, the thread returns to
        itself.  Without one, PTRACE_O_EXITKILL is set before anything of the
        thread is changed and cleared only once all of it is back: the
        target dies rather than run on."""
        tid = self.tid
        if not self.free:
            raise SignalStop(tid, "inject", self.pending_sig)
        if guard is not None:
            guard(nr, args, at)  # a refusal before anything of the thread changes
        if landing is not None and landing.allows(guard, nr, args):
            return landing.run(self, nr, args, deadline, events, on_clone)
        ptrace.set_options(tid, SEIZE_OPTIONS | ptrace.O_TRACECLONE | ptrace.O_EXITKILL)
        events = [] if events is None else events
        try:
            ptrace.set_sigmask(tid, ptrace.ALL_SIGNALS_MASK)
            return syscall(tid, self.regs, at, nr, *args, deadline=deadline, events=events,
                           on_clone=on_clone, stops_taken=self.stops_taken)
        finally:
            self.park(finite_deadline(deadline))

    def _give_back(self, deadline: float, mask_first: bool = False) -> None:
        """Its own registers and mask, then (only then) no EXITKILL.  A call cut
        short while the thread still runs it must be waited out first: it
        stops at the call's exit, and is put back there.  `mask_first`: a
        landed call's thread, whose frame holds its own mask."""
        tid = self.tid
        if mask_first:
            ptrace.set_sigmask(tid, self.sigmask)
        try:
            ptrace.set_regs(tid, self.regs)
        except TaskGone:
            if stops.wait(tid, deadline).kind in ENDED:
                self.stopped = False
                raise
            ptrace.set_regs(tid, self.regs)
        after_call(tid, self.regsets)  # what the call changed of them (arm64: SVE)
        if not mask_first:
            ptrace.set_sigmask(tid, self.sigmask)
        ptrace.set_options(tid, SEIZE_OPTIONS)  # only now: drop EXITKILL and TRACECLONE

    def park(self, deadline: float, mask_first: bool = False) -> None:
        """Put the thread's own registers and mask back, then hold it in an
        interrupt stop.

        A thread that ran an injected syscall sits in a syscall-exit stop.
        Detaching from there skips the kernel's syscall-restart step (it runs on
        the signal path only), so an interrupted nanosleep or read would return
        -ERESTART* to the program.  An interrupt stop is on the signal path:
        detached from there, the kernel restarts the call as if nothing
        happened.  A signal the thread may now take stops it first, in its
        delivery stop: it is held there, and the signal delivered at release
        (unless linux/heldsignals.py can take it as the kernel would).
        """
        tid = self.tid
        self._give_back(deadline, mask_first)
        ptrace.interrupt(tid)
        ptrace.cont(tid)
        while True:
            stop = stops.wait(tid, deadline)
            if stop.kind in (StopKind.EVENT, StopKind.GROUP):
                return
            if stop.kind is StopKind.SIGNAL and not heldsignals.absorbed(self, stop.sig):
                self.pending_sig = stop.sig
                return
            if stop.kind in ENDED:
                self.stopped = False
                raise TaskGone(None, tid, "interrupt", ended=True)
            ptrace.cont(tid)  # a syscall stop, or a signal absorbed: go on to the interrupt

    def release(self) -> None:
        """Detach; a signal that reached the thread while it was held is
        delivered now, as the kernel would have, and a stop signal it took is
        given back (a group stop, as meant)."""
        if not self.stopped:
            return
        self.stopped = False
        # PTRACE_DETACH delivers a signal only from a delivery stop (pending_sig's);
        # an interrupt stop drops it.  So a stop taken is sent again first: taken
        # untraced once let go, cancelled by a SIGCONT sent later (prepare_signal).
        for sig in self.stops_taken[-1:]:  # one group stop, as all of them make
            try:
                os.kill(self.tid, sig)
            except ProcessLookupError:
                pass
        ptrace.detach(self.tid, self.pending_sig)
