"""What waitpid says about a tracee, and waiting for it.

Waiting: SIGCHLD must be blocked (see `signals_held`) while waiting, so that a
stop reported between waitpid(WNOHANG) and sigtimedwait() is not lost; the
kernel notifies the tracer of every tracee stop with SIGCHLD (CLD_TRAPPED).
"""

from __future__ import annotations

import contextlib
import enum
import errno
import math
import os
import signal
import time
from dataclasses import dataclass
from typing import NamedTuple

from snapcore.linux.abi import WALL  # __WALL: wait for threads and clone children too
from snapcore.linux.ptrace import EVENT_STOP, PtraceFailed, TaskGone


class StopKind(enum.Enum):
    EVENT = "event"  # a PTRACE_EVENT_* stop; Stop.event says which
    GROUP = "group"  # a group-stop: someone sent SIGSTOP, SIGTSTP...
    SYSCALL = "syscall"  # a syscall entry or exit (PTRACE_O_TRACESYSGOOD)
    SIGNAL = "signal"  # a signal-delivery stop for Stop.sig
    EXITED = "exited"
    KILLED = "killed"


ENDED = (StopKind.EXITED, StopKind.KILLED)


@dataclass
class Stop:
    """What waitpid said about one tracee."""

    kind: StopKind
    sig: int = 0
    event: int = 0
    status: int = 0

    @property
    def core_dumped(self) -> bool:
        return self.kind is StopKind.KILLED and os.WCOREDUMP(self.status)


class Event(NamedTuple):
    """A ptrace event seen during an injected syscall, and its message
    (PTRACE_GETEVENTMSG: for a clone, the new task's id)."""

    kind: int  # PTRACE_EVENT_*
    message: int


class Execed(TaskGone):
    """PTRACE_EVENT_EXEC during an injected "syscall" or before an "interrupt"
    stop: the process exec'd, and the program snapcore checked is gone."""

    def __init__(self, tid: int, request: str):
        super().__init__(None, tid, request)


class SignalStop(PtraceFailed):
    """The thread stopped for signal `sig` where it should not have: a fault
    of an injected "syscall" (every other signal is blocked then), a group
    stop before its "interrupt" stop, or (request "inject") a signal it
    holds to deliver, which an injected call would drop."""

    def __init__(self, tid: int, request: str, sig: int):
        super().__init__(None, tid, request)
        self.sig = sig


class StopLate(PtraceFailed, TimeoutError):
    """The tracee did not stop by the deadline (ETIMEDOUT: no answer came);
    a thread in uninterruptible sleep (D) stops only when it wakes."""

    def __init__(self, tid: int):
        super().__init__(errno.ETIMEDOUT, tid, "wait")


_GROUP_STOP_SIGNALS = (signal.SIGSTOP, signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU)


def _decode(status: int) -> Stop:
    if os.WIFEXITED(status):
        return Stop(StopKind.EXITED, status=status)
    if os.WIFSIGNALED(status):
        return Stop(StopKind.KILLED, sig=os.WTERMSIG(status), status=status)
    sig = os.WSTOPSIG(status)
    event = (status >> 16) & 0xFF
    if sig == (signal.SIGTRAP | 0x80):
        return Stop(StopKind.SYSCALL, status=status)
    if event == EVENT_STOP and sig in _GROUP_STOP_SIGNALS:
        return Stop(StopKind.GROUP, sig=sig, event=event, status=status)
    if event:
        return Stop(StopKind.EVENT, sig=sig, event=event, status=status)
    return Stop(StopKind.SIGNAL, sig=sig, status=status)


def wait(tid: int, deadline: float | None, keep_end: bool = False) -> Stop:
    """Wait for the next stop (or the end) of one tracee, until `deadline`
    (monotonic), or raise StopLate.  With `keep_end` its end is not
    collected: TaskGone (`ended`) says it ended, and the end stays for a
    later `wait` (collecting a thread's end is what lets an exec or an exit
    of its process complete).  A thread that is not (or no longer)
    snapcore's to wait for raises TaskGone with ECHILD."""
    while True:
        if keep_end:
            stop = try_stop(tid)
            if stop is not None:
                return stop
            if has_ended(tid):
                raise TaskGone(None, tid, "wait", ended=True)
        else:
            try:
                pid, status = os.waitpid(tid, WALL | os.WNOHANG)
            except ChildProcessError:
                raise TaskGone(errno.ECHILD, tid, "wait") from None
            if pid:
                return _decode(status)
        timeout = 3600.0 if deadline is None else deadline - time.monotonic()
        if not math.isfinite(timeout):  # never reached from the command line (bounds.py)
            raise ValueError(f"deadline {deadline!r} is not a time")
        if timeout <= 0:
            raise StopLate(tid)
        for hook in _while_waiting:
            hook()
        signal.sigtimedwait([signal.SIGCHLD], timeout)


_while_waiting: list = []


@contextlib.contextmanager
def while_waiting(hook):
    """Call hook() each time `wait` is about to sleep: for what a wait may
    depend on, such as a thread's end to collect before its group leader's
    can be reported (kernel/exit.c: delay_group_leader)."""
    _while_waiting.append(hook)
    try:
        yield
    finally:
        _while_waiting.remove(hook)


def try_wait(tid: int) -> Stop | None:
    """A stop that is already reported, without waiting; None when there is none.

    A thread that is no longer snapcore's to wait for counts as exited."""
    try:
        pid, status = os.waitpid(tid, WALL | os.WNOHANG)
    except ChildProcessError:
        return Stop(StopKind.EXITED)
    return _decode(status) if pid else None


def try_stop(tid: int) -> Stop | None:
    """A stop already reported, without waiting; never the tracee's end,
    which stays to be collected (waitid without WEXITED)."""
    try:
        found = os.waitid(os.P_PID, tid, os.WSTOPPED | os.WNOHANG | WALL)
    except ChildProcessError:
        return None  # ended (or not snapcore's): see has_ended
    if found is None:
        return None
    return _decode((found.si_status << 8) | 0x7F)


def has_ended(tid: int) -> bool:
    """Whether the tracee ended, without collecting its end (WNOWAIT).  A
    tracer's waitid reports ptrace stops whatever it asks for
    (kernel/exit.c: wait_task_stopped), so the kind of report is looked at."""
    try:
        found = os.waitid(os.P_PID, tid, os.WEXITED | os.WNOHANG | os.WNOWAIT | WALL)
    except ChildProcessError:
        return True  # collected already, or not snapcore's to wait for
    return found is not None and found.si_code in (os.CLD_EXITED, os.CLD_KILLED,
                                                   os.CLD_DUMPED)


# Signals an operator or a service manager uses to stop snapcore.  While the
# target is stopped or runs injected registers they are held, and acted on
# once the target is released.
STOP_REQUEST_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@contextlib.contextmanager
def signals_held(signals):
    """Block `signals` in this thread for the duration of the block."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, signals)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
