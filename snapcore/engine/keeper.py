"""The fork thread (engine/forkthread.py) while the child dumps, and its end.

During the dump it is held in a PTRACE_LISTEN stop: a stopped thread is
never picked to take a signal of the process (kernel/signal.c: wants_signal),
and job control still reaches it: a group stop wakes it to take part, and it
stops again (`service` answers each such stop).  When the target execs or
exits, the fork thread is killed, and its end waits for snapcore (its tracer
collects it): snapcore ends the child first, so that an exec'd program is
never sent SIGCHLD for it (kernel/signal.c: do_notify_parent sends SIGCHLD
for a child whose parent exec'd since the child was made), then collects
the fork thread, which lets the exec complete.  At the end, it reaps the
child, unmaps its page and exits.
"""

from __future__ import annotations

import os
import signal
import time

from snapcore.engine import calls
from snapcore.engine.forkthread import NAME_AT, THREAD_OPTIONS, ForkThread, gone
from snapcore.engine.kernelerrors import decided
from snapcore.errors import InternalError, Stage
from snapcore.linux import arch, ptrace, stops
from snapcore.linux.inject import syscall, wait_for_interrupt_stop
from snapcore.linux.ptrace import PtraceFailed, TaskGone
from snapcore.linux.stops import ENDED, StopKind


def hold(thread: ForkThread, deadline: float) -> None:
    """Name it, and hold it in a listening stop for the dump (see above).
    It is let go from a stop in its own page: snapcore dying now, it reaps
    the child and exits."""
    name = calls.NAME_THREAD  # a refusal only leaves it unnamed
    if thread.guard.runs(((name.nr, name.bind(thread.page + NAME_AT), thread.entry),)):
        thread.call(name, thread.page + NAME_AT, deadline=deadline)
    try:
        ptrace.interrupt(thread.tid)
        ptrace.cont(thread.tid)
        wait_for_interrupt_stop(thread.tid, deadline, group_ok=True, keep_end=True)
    except TaskGone:
        raise gone(thread.pid) from None
    ptrace.listen(thread.tid)
    thread.listening = True
    for sig in thread.stops_taken:  # a stop signal it took is the target's: given back
        _signal(thread.pid, sig)
    thread.stops_taken.clear()


@decided
def service(thread: ForkThread) -> bool:
    """Keep the held fork thread listening; False once it has ended (the
    target exec'd or exited: de_thread or the group exit killed it), its end
    not yet collected.  Then the child must be ended and collected before
    the fork thread is (`finish`): an exec completes only once the fork
    thread is collected, and the child, passed to the thread that exec'd,
    must end before that thread's program changes (kernel/signal.c:
    do_notify_parent sends SIGCHLD for a child whose parent exec'd since)."""
    while True:
        stop = stops.try_stop(thread.tid)
        if stop is None:
            return not stops.has_ended(thread.tid)
        try:
            if stop.kind is StopKind.SIGNAL:
                _hold_back(thread, stop.sig)
            else:
                ptrace.listen(thread.tid)  # a group stop, or a SIGCONT: wait on
        except TaskGone:
            return False


def _hold_back(thread: ForkThread, sig: int) -> None:
    """A signal the fork thread stopped to take (it should take none: every
    signal is blocked, and a stopped thread is never picked for one of the
    process's) is the process's: kept for the process, and the fork thread
    stopped again in an interrupt stop instead of being let run."""
    thread.stops_taken.append(sig)
    ptrace.interrupt(thread.tid)
    ptrace.cont(thread.tid)


def take_back(thread: ForkThread, deadline: float) -> bool:
    """Stop the held fork thread for the last injected calls; False when it
    has ended (its end left for `finish` to collect)."""
    try:
        if thread.listening:
            ptrace.interrupt(thread.tid)
        while thread.listening:
            stop = stops.try_stop(thread.tid)
            if stop is not None:
                if stop.kind is StopKind.SIGNAL:  # stopped all the same; the signal
                    thread.stops_taken.append(stop.sig)  # is the process's (see _hold_back)
                thread.listening = False
            elif stops.has_ended(thread.tid):
                return False
            elif time.monotonic() > deadline:
                raise InternalError(f"the fork thread {thread.tid} did not stop",
                                    stage=Stage.REAP)
            else:
                signal.sigtimedwait([signal.SIGCHLD], 0.05)
        ip = getattr(ptrace.get_regs(thread.tid), arch.REG_IP)
    except TaskGone:
        return False
    if not thread.page <= ip < thread.page + len(arch.FORK_THREAD_CODE):
        raise InternalError(f"the fork thread {thread.tid} is at {ip:#x}, outside its page",
                            stage=Stage.REAP)
    return True


def collect_if_ended(thread: ForkThread) -> None:
    """While the fork thread has no child yet: a target that exits (or execs)
    ends it, and its leader's end is reported only once the fork thread's
    is collected (kernel/exit.c: delay_group_leader) — collected here, so
    that a wait on the leader does not wait for the stop timeout."""
    if thread.tid and thread.traced and not thread.child and stops.has_ended(thread.tid):
        collect_end(thread)


def collect_end(thread: ForkThread) -> None:
    """Collect the end of a fork thread the target's exec or exit killed."""
    try:
        while stops.wait(thread.tid, time.monotonic() + 5).kind not in ENDED:
            pass
    except PtraceFailed:
        pass
    thread.traced = False


def end(thread: ForkThread, deadline: float) -> None:
    """Reap what it made, unmap its page, end it.  The snapshot child should
    be ended and collected already (engine/dump.py: kill); if it is not (its
    wait4 says 0: a child not reapable yet), it is ended and collected here
    first.  A fork thread that left with its child unreaped would hand the
    child to another thread of the target (forget_original_parent): a zombie
    with exit signal 0, the target's for good."""
    while True:
        reaped = thread.call(calls.REAP_OWN, deadline=deadline)[0]
        if reaped < 0:  # ECHILD: nothing of its own left
            break
        if reaped == 0:
            if time.monotonic() > deadline:
                raise InternalError(f"the snapshot child {thread.child} did not end",
                                    stage=Stage.REAP)
            _end_child(thread.child)
    _unmap_and_exit(thread, deadline)


def _end_child(child: int) -> None:
    """SIGKILL the child and collect, as its tracer, whatever its threads
    report: the fork thread's wait4 sees its end only after that."""
    _signal(child, signal.SIGKILL)
    try:
        tids = [int(t) for t in os.listdir(f"/proc/{child}/task")]
    except OSError:
        tids = []
    for tid in {child, *tids}:
        stop = stops.try_wait(tid)
        if stop is not None and stop.kind not in ENDED:
            try:
                ptrace.cont(tid)
            except TaskGone:
                pass
    signal.sigtimedwait([signal.SIGCHLD], 0.01)


def _unmap_and_exit(thread: ForkThread, deadline: float) -> None:
    """The page must go before the thread, from an instruction outside it.
    The target's own thread-exit loop (linux/landing.py: exit_site) is such
    an instruction: the munmap runs from its `syscall`, and the thread's next
    call is exit(0), whatever happens to snapcore meanwhile."""
    tid, sites, guard = thread.tid, thread.sites, thread.guard
    unmap, leave = calls.END_UNMAP.bind(thread.page), calls.END_EXIT.bind()
    if sites.exit_at and guard.runs(((calls.END_UNMAP.nr, unmap, sites.exit_at),
                                     (calls.END_EXIT.nr, leave, sites.exit_syscall))):
        base = ptrace.copy_regs(thread.base)
        for register, value in sites.exit_regs:
            setattr(base, register, value)
        guard(calls.END_EXIT.nr, leave, sites.exit_syscall)  # the exit that follows: allowed
        syscall(tid, base, sites.exit_at, calls.END_UNMAP.nr, *unmap, deadline=deadline,
                guard=guard, stops_taken=thread.stops_taken, keep_end=True)
    else:
        _unmap_and_exit_killable(thread, deadline)
    ptrace.resume_to_syscall(tid)
    while True:
        stop = stops.wait(tid, deadline)
        if stop.kind in ENDED:
            break
        ptrace.resume_to_syscall(tid)  # its exit's entry stop: on to the end
    thread.traced = False
    for sig in thread.stops_taken:  # a signal it took is the target's: given back
        _signal(thread.pid, sig)


def _unmap_and_exit_killable(thread: ForkThread, deadline: float) -> None:
    """Without the target's exit loop: the munmap from the target's own
    `syscall`, whose next instructions are the target's.  So for this one
    call the fork thread carries EXITKILL, as a runner without a landing
    does: a snapcore killed within it ends the target rather than let a
    thread of it run on with registers that are not its own.  The exit call
    is set up before EXITKILL is dropped, so no moment is left unguarded."""
    tid = thread.tid
    unmap, leave = calls.END_UNMAP.bind(thread.page), calls.END_EXIT.bind()
    thread.guard(calls.END_EXIT.nr, leave, thread.at)  # refused: before anything changes
    thread.guard(calls.END_UNMAP.nr, unmap, thread.at)
    ptrace.set_options(tid, THREAD_OPTIONS | ptrace.O_EXITKILL)
    syscall(tid, thread.base, thread.at, calls.END_UNMAP.nr, *unmap, deadline=deadline,
            guard=thread.guard, stops_taken=thread.stops_taken, keep_end=True)
    regs = ptrace.copy_regs(thread.base)
    setattr(regs, arch.REG_IP, thread.at)
    setattr(regs, arch.REG_NR, calls.END_EXIT.nr)
    setattr(regs, arch.REG_ORIG_NR, (1 << 64) - 1)
    for register, value in zip(arch.SYSCALL_ARGS, leave):
        setattr(regs, register, value)
    ptrace.set_regs(tid, regs)
    ptrace.set_options(tid, THREAD_OPTIONS)


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def kill_and_collect(tid: int, deadline: float) -> None:
    """SIGKILL one task of snapcore's and collect its end as its tracer."""
    _signal(tid, signal.SIGKILL)
    while True:
        try:
            stop = stops.wait(tid, max(deadline, time.monotonic() + 5))
        except TaskGone:
            return
        if stop.kind in ENDED:
            return
        try:
            ptrace.cont(tid)
        except TaskGone:
            pass
