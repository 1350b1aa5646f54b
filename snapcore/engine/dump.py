"""The child's end: SIGABRT so that the kernel writes its core, then every
thread of it collected; or SIGKILL when the snapshot is abandoned.
"""

from __future__ import annotations

import os
import signal
import time

from snapcore.engine.child import Child
from snapcore.engine import interrupts
from snapcore.engine.controller import Controller
from snapcore.engine.kernelerrors import decided
from snapcore.linux import arch, priority, ptrace, regsets, release, stops
from snapcore.linux.inject import HeldThread
from snapcore.linux.ptrace import TaskGone
from snapcore.linux.stops import ENDED, StopKind


@decided
def dump(child: Child, runner: HeldThread,
         controller: Controller | None = None) -> tuple[stops.Stop, float]:
    """Give the child the forking thread's state back and let SIGABRT dump it.

    The signal argument of PTRACE_CONT is ignored at an event or syscall stop,
    so SIGABRT is sent with kill() and passed on from its signal-delivery stop.
    Only the child's first thread runs: the others stay in their ptrace stops
    (a traced thread is never picked to take a process signal), and the
    kernel's core dump wakes and collects them.  Returns how the child ended
    and how long the kernel took to write the core.
    """
    pid = child.pid
    child.threads[pid] = runner.tid
    regsets.put(pid, runner.regs, runner.xstate, runner.regsets)  # where the target really was
    ptrace.set_sigmask(pid, runner.sigmask & ~(1 << (signal.SIGABRT - 1)))
    os.kill(pid, signal.SIGABRT)
    ptrace.cont(pid)
    while True:
        stop = stops.wait(pid, None)
        if stop.kind is StopKind.SIGNAL and stop.sig == signal.SIGABRT:
            if arch.SYSCALL_STOP_SCRATCH is not None:  # put back as the call's stop was left
                ptrace.set_regs(pid, runner.regs)
            break
        if stop.kind in ENDED:
            _collect(child)
            return stop, 0.0
        ptrace.cont(pid)  # anything else is not for the child: drop it
    started = time.monotonic()
    if controller is not None:
        controller.start()
    ptrace.cont(pid, signal.SIGABRT)
    return _collect(child, controller=controller), time.monotonic() - started


def _collect(child: Child, deadline: float | None = None,
             controller: Controller | None = None) -> stops.Stop:
    """Wait until every thread of the child has ended; return how the first one ended.

    The kernel reports a thread-group leader's end only after the other
    threads are gone, and as their tracer snapcore must collect each.
    """
    left = set(child.threads) | {child.pid}
    ended = None
    while left:
        interrupts.check()  # a stop request Python could not raise where it landed
        if controller is not None:  # the dump itself, not a clean-up
            child.check_parent()
        for tid in list(left):
            if tid == child.pid and child.parent is not None and stops.has_ended(tid):
                child.parent.ready()  # collecting the child's end hands it to its parent
            stop = stops.try_wait(tid)
            if stop is None:
                continue
            if stop.kind in ENDED:
                left.discard(tid)
                if tid == child.pid:
                    ended = stop
                    # Collected: nothing of it is left to kill, and once its
                    # parent reaps it the pid may be another process's (a stop
                    # request acted on after the reap must not kill by it).
                    child.alive = False
                    if child.parent is not None:
                        child.notes += child.parent.reap()
            else:
                try:
                    ptrace.cont(tid)  # the dump is waking it: let it go to its end
                except TaskGone:
                    pass
        if left:
            # The kernel dumps from the thread that took SIGABRT: the first.
            if controller is not None and controller.tick([child.pid]):
                release.kill_and_release(child.pid)  # collected below
            timeout = 1.0 if deadline is None else deadline - time.monotonic()
            if timeout <= 0:
                break
            signal.sigtimedwait([signal.SIGCHLD],
                                min(timeout, controller.period if controller else 1.0))
    child.alive = False
    return ended or stops.Stop(StopKind.KILLED, sig=signal.SIGKILL)


@decided
def kill(child: Child) -> None:
    """End the child (a private copy: killing it harms no one) and collect it."""
    if not child.alive:
        return
    try:
        # An idle task being killed must still be scheduled to run its exit:
        # on busy CPUs a SCHED_IDLE child would linger, and its copies with it.
        priority.apply(child.pid, priority.level_for_nice(19))
    except OSError:
        pass  # gone, or not permitted: SIGKILL all the same
    release.kill_and_release(child.pid)  # its memory freed now, not in its exit
    _collect(child, time.monotonic() + 10)
