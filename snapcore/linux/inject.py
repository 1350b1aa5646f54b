"""Run one syscall inside a stopped thread, and give the thread back untouched.

No code is written into the target: the thread jumps to an existing
`syscall` instruction (see procfs.syscall_instructions) with the number
and arguments in its registers, and is stepped with PTRACE_SYSCALL stops.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from snapcore.errors import InternalError, NoSuchProcess, Stage, Unsupported
from snapcore.linux import arch, ptrace, stops
from snapcore.linux.stops import ENDED, Event, StopKind

_U64 = (1 << 64) - 1


def signed(value: int) -> int:
    return value - (1 << 64) if value & (1 << 63) else value


# Options every seized target thread carries: syscall stops marked, and an
# exec reported as an event (so a thread that exec'd is never injected into).
SEIZE_OPTIONS = ptrace.O_TRACESYSGOOD | ptrace.O_TRACEEXEC


class TargetReplaced(NoSuchProcess):
    """The target exec'd a new program: the process snapcore checked is gone."""


def syscall(tid: int, base: ptrace.Regs, at: int, nr: int, *args: int,
            deadline: float | None, events: list | None = None,
            guard=None) -> tuple[int, list[tuple[int, int]]]:
    """Make stopped thread `tid` execute syscall `nr`; return its result and the
    ptrace events (event, message) it reported on the way.

    `guard(nr, args, at)`, when given, may refuse first (seccomp: see
    seccomp.Guard): the filter is evaluated with the real address and arguments.
    orig_rax is set to -1 so the kernel's syscall-restart logic, which runs when
    the thread leaves its current stop, does not rewind rip or overwrite rax
    (arch/x86/kernel/signal.c: arch_do_signal_or_restart).
    """
    if guard is not None:
        guard(nr, args, at)
    regs = ptrace.copy_regs(base)
    setattr(regs, arch.REG_IP, at)
    setattr(regs, arch.REG_NR, nr)
    setattr(regs, arch.REG_ORIG_NR, _U64)
    for name, value in zip(arch.SYSCALL_ARGS, args):
        setattr(regs, name, value & _U64)
    ptrace.set_regs(tid, regs)
    events = [] if events is None else events  # the caller's list survives an exception
    for _ in ("entry", "exit"):
        ptrace.resume_to_syscall(tid)
        _wait_syscall_stop(tid, deadline, events)
    return signed(getattr(ptrace.get_regs(tid), arch.REG_RET)), events


def _wait_syscall_stop(tid: int, deadline: float | None, events: list) -> None:
    while True:
        stop = stops.wait(tid, deadline)
        if stop.kind is StopKind.SYSCALL:
            return
        if stop.kind is StopKind.EVENT:
            if stop.event == ptrace.EVENT_EXEC:
                raise TargetReplaced(f"thread {tid} exec'd a new program", pid=tid,
                                     stage=Stage.INJECT)
            # PTRACE_EVENT_CLONE arrives between clone's entry and exit.
            events.append(Event(stop.event, ptrace.event_msg(tid)))
            ptrace.resume_to_syscall(tid)
        elif stop.kind is StopKind.GROUP:
            # Someone sent SIGSTOP mid-injection; finish first (the kernel
            # re-enters the group-stop when the thread is detached).
            ptrace.resume_to_syscall(tid)
        elif stop.kind is StopKind.SIGNAL:
            # Every signal is blocked while snapcore injects, so this is a
            # synchronous fault caused by the injection itself.
            raise InternalError(f"thread {tid} got signal {stop.sig} during an injected "
                                "syscall", pid=tid, stage=Stage.INJECT)
        else:
            raise NoSuchProcess(f"thread {tid} exited during an injected syscall", pid=tid,
                                stage=Stage.INJECT)


def wait_for_interrupt_stop(tid: int, deadline: float | None) -> None:
    """Wait for the PTRACE_INTERRUPT stop, passing on signals that arrive first."""
    while True:
        stop = stops.wait(tid, deadline)
        if stop.kind is StopKind.EVENT:
            if stop.event == ptrace.EVENT_EXEC:
                # The exec event stop came first; the interrupt stop follows,
                # but the program snapcore checked is gone.
                raise TargetReplaced(f"process of thread {tid} exec'd a new program",
                                     "nothing was done to it; try again", pid=tid,
                                     stage=Stage.CAPTURE)
            return
        if stop.kind is StopKind.SIGNAL:
            # A signal-delivery stop came first: deliver it as the kernel would
            # have; the interrupt stays pending and stops the thread next.
            ptrace.cont(tid, stop.sig)
        elif stop.kind is StopKind.GROUP:
            raise Unsupported(f"thread {tid} was stopped by signal {stop.sig} meanwhile",
                              "it must stay stopped; try again once it runs", pid=tid)
        else:
            raise NoSuchProcess(f"thread {tid} exited", pid=tid)


@dataclass
class HeldThread:
    """A seized thread snapcore holds stopped, with what it needs to give it back."""

    tid: int
    stopped: bool = False
    regs: ptrace.Regs | None = None
    xstate: bytes = b""
    sigmask: int = 0
    pending_sig: int = 0  # a signal it stopped to take while parked: delivered at release

    def save(self, with_xstate: bool) -> None:
        self.regs = ptrace.get_regs(self.tid)
        self.sigmask = ptrace.get_sigmask(self.tid)
        if with_xstate:
            self.xstate = ptrace.get_xstate(self.tid)

    @property
    def in_syscall(self) -> bool:
        return signed(getattr(self.regs, arch.REG_ORIG_NR)) >= 0

    def inject(self, at: int, nr: int, *args: int, deadline: float,
               guard=None, events: list | None = None) -> tuple[int, list]:
        """Run one syscall in this held thread, then park it again with its own
        registers and signal mask.  PTRACE_O_EXITKILL is set before anything
        of the thread is changed and cleared only once all of it is back: if
        snapcore dies in between, the target dies rather than run on with
        registers or a mask that are not its own."""
        tid = self.tid
        if self.pending_sig:
            raise InternalError(f"thread {tid} holds a signal to deliver", pid=tid,
                                stage=Stage.INJECT)
        ptrace.set_options(tid, SEIZE_OPTIONS | ptrace.O_TRACECLONE | ptrace.O_EXITKILL)
        ptrace.set_sigmask(tid, ptrace.ALL_SIGNALS_MASK)
        events = [] if events is None else events
        try:
            for _attempt in range(10):
                result, events = syscall(tid, self.regs, at, nr, *args, deadline=deadline,
                                         guard=guard, events=events)
                if result != arch.ERESTARTNOINTR:  # a signal raced the call: retry
                    break
        finally:
            # Its own deadline: a call cut short by the window's must still be
            # waited out, so the thread gets its registers back.
            self.park(max(deadline, time.monotonic()) + 5.0)
        return result, events

    def _restore(self) -> None:
        ptrace.set_regs(self.tid, self.regs)
        ptrace.set_sigmask(self.tid, self.sigmask)

    def park(self, deadline: float | None) -> None:
        """Put the thread's own registers and mask back, then hold it in an
        interrupt stop.

        A thread that ran an injected syscall sits in a syscall-exit stop.
        Detaching from there skips the kernel's syscall-restart step (it runs on
        the signal path only), so an interrupted nanosleep or read would return
        -ERESTART* to the program.  An interrupt stop is on the signal path:
        detached from there, the kernel restarts the call as if nothing
        happened.  A signal the thread may now take stops it first, in its
        delivery stop: it is held there, and the signal delivered at release.
        """
        tid = self.tid
        try:
            self._restore()
        except NoSuchProcess:
            # The injection was cut short while the thread ran its syscall: it
            # stops at the syscall's exit, then it can be put back.
            if stops.wait(tid, deadline).kind in ENDED:
                self.stopped = False
                raise
            self._restore()
        ptrace.set_options(tid, SEIZE_OPTIONS)  # only now: drop EXITKILL and TRACECLONE
        ptrace.interrupt(tid)
        ptrace.cont(tid)
        while True:
            stop = stops.wait(tid, deadline)
            if stop.kind in (StopKind.EVENT, StopKind.GROUP):
                return
            if stop.kind is StopKind.SIGNAL:
                self.pending_sig = stop.sig
                return
            if stop.kind in ENDED:
                self.stopped = False
                raise NoSuchProcess(f"thread {tid} exited", pid=tid)
            ptrace.cont(tid)  # a syscall stop on the way: go on to the interrupt

    def release(self) -> None:
        """Detach; a signal that reached the thread while it was held is
        delivered now, as the kernel would have."""
        if not self.stopped:
            return
        self.stopped = False
        ptrace.detach(self.tid, self.pending_sig)


