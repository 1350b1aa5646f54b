"""What a kernel failure means for a snapshot: the one place where linux/'s
own errors (errno-level: linux/ptrace.py `PtraceFailed` and its kinds, the
waits' `StopLate`, inject's `Execed` and `SignalStop`) become the engine's
SnapcoreErrors, each with its exit code, message, hint, pid and stage.

linux/ says what the kernel answered (ESRCH, EPERM and the tracer, an exec
event, a signal stop, no stop in time); the engine says what that is:
a process gone (3), a permission missing (4), a tracer already there (5),
a target that must stay stopped (6), a stop that did not come (7), or a
bug (1).  `decided` applies it at each phase's entry; code inside a phase
that must tell one failure from another catches linux/'s errors, and asks
`meaning` for the words.
"""

from __future__ import annotations

import contextlib
import errno
import typing

from snapcore.errors import (AlreadyTraced, InternalError, NoSuchProcess, PermissionDenied,
                             SnapcoreError, Stage, StopTimeout, TargetReplaced, Unsupported)
from snapcore.linux.ptrace import RSEQ, SECCOMP_FILTER, NotPermitted, PtraceFailed, TaskGone
from snapcore.linux.stops import Execed, SignalStop, StopLate

# A thread seen to end, by what snapcore was doing when it ended.
_ENDED = {
    "wait": ("thread {tid} ended", ""),
    "syscall": ("thread {tid} exited during an injected syscall", Stage.INJECT),
    "interrupt": ("thread {tid} exited", ""),
    "capture": ("process {tid} exited", Stage.CAPTURE),  # every thread of it
}


@typing.overload
def meaning(exc: PtraceFailed) -> SnapcoreError: ...
@typing.overload
def meaning(exc: SnapcoreError) -> SnapcoreError: ...
@typing.overload
def meaning(exc: BaseException) -> BaseException: ...


def meaning(exc: BaseException) -> BaseException:
    """The SnapcoreError a linux/ error means; anything else as it is."""
    if not isinstance(exc, PtraceFailed):
        return exc
    tid = exc.tid
    if isinstance(exc, Execed):
        return _execed(exc)
    if isinstance(exc, TaskGone):
        return _gone(exc)
    if isinstance(exc, StopLate):
        return StopTimeout(f"thread {tid} did not stop in time",
                           "it may be in uninterruptible sleep (D); it is left untouched: "
                           "try again later, or allow a longer stop timeout", pid=tid,
                           setting="timeout")
    if isinstance(exc, SignalStop):
        return _signal_stop(exc)
    if isinstance(exc, NotPermitted) and exc.tracer:
        return AlreadyTraced(f"thread {tid} is already traced by {exc.tracer} "
                             f"({exc.tracer_name or '?'})", "busy: wait until that tracer is "
                             "done (another snapcore, gdb or strace)", pid=tid)
    if exc.request == SECCOMP_FILTER:
        if isinstance(exc, NotPermitted):
            return PermissionDenied(f"cannot read the seccomp filters of {tid}",
                                    "run as root with CAP_SYS_ADMIN", pid=tid)
        return InternalError(f"reading seccomp filter {exc.addr} of {tid} failed: "
                             f"{exc.strerror}", pid=tid)
    if exc.request == RSEQ:
        return InternalError(f"ptrace rseq configuration of {tid} failed: {exc.strerror}",
                             pid=tid)
    if isinstance(exc, NotPermitted):
        return PermissionDenied(f"not permitted to trace {tid} ({exc.request})",
                                "run as root or with CAP_SYS_PTRACE", pid=tid)
    return InternalError(f"ptrace {exc.request} on {tid} failed: {exc.strerror}", pid=tid)


def _gone(exc: TaskGone) -> NoSuchProcess:
    tid = exc.tid
    if exc.exiting:  # EPERM to a seize: its exit had begun
        return NoSuchProcess(f"thread {tid} exited while snapcore attached to it", pid=tid)
    if exc.errno == errno.ECHILD:  # a wait: not, or no longer, snapcore's tracee
        return NoSuchProcess(f"thread {tid} is no longer traced", pid=tid)
    if exc.ended:
        message, stage = _ENDED[exc.request]
        return NoSuchProcess(message.format(tid=tid), pid=tid, stage=stage)
    return NoSuchProcess(f"thread {tid} is gone or not stopped ({exc.request})", pid=tid)


def _execed(exc: Execed) -> TargetReplaced:
    if exc.request == "interrupt":  # the exec's event stop came first: nothing was done
        return TargetReplaced(f"process of thread {exc.tid} exec'd a new program",
                              "nothing was done to it; try again", pid=exc.tid,
                              stage=Stage.CAPTURE)
    return TargetReplaced(f"thread {exc.tid} exec'd a new program", pid=exc.tid,
                          stage=Stage.INJECT)


def _signal_stop(exc: SignalStop) -> SnapcoreError:
    tid, sig = exc.tid, exc.sig
    if exc.request == "interrupt":  # a group stop: the target must stay stopped
        return Unsupported(f"thread {tid} was stopped by signal {sig} meanwhile",
                           "it must stay stopped; try again once it runs", pid=tid)
    if exc.request == "inject":
        # A signal it must take as it is (linux/heldsignals.py) reached the
        # runner between two calls: normal life, not snapcore's failure.
        return Unsupported(f"signal {sig} reached thread {tid} while it was held",
                           "it was delivered at the release, as the kernel would have; "
                           "try again", pid=tid, stage=Stage.INJECT)
    # Every other signal is blocked while snapcore injects: a synchronous
    # fault caused by the injection itself.
    return InternalError(f"thread {tid} got signal {sig} during an injected syscall",
                         pid=tid, stage=Stage.INJECT)


class _Decided(contextlib.ContextDecorator):
    """Around a phase (`with decided:` or `@decided`): a linux/ error leaving
    it is raised as what it means."""

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        if isinstance(exc, PtraceFailed):
            raise meaning(exc) from None
        return False


decided = _Decided()
