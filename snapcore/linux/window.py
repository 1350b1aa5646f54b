"""A stop window: every thread of the target held in a plain interrupt stop,
then each given back exactly as it was.
"""

from __future__ import annotations

import contextlib
import time

from snapcore.linux import ptrace, stops
from snapcore.linux.inject import SEIZE_OPTIONS, HeldThread, wait_for_interrupt_stop
from snapcore.linux.procfs import task_ids
from snapcore.linux.ptrace import PtraceFailed, TaskGone
from snapcore.linux.stops import Execed, SignalStop


def peek(tid: int, read, timeout: float):
    """Hold thread `tid` stopped just long enough to call read(tid), then let it go.

    For what ptrace shows only on a stopped tracee (seccomp filters, rseq).
    The caller must have SIGCHLD blocked (stops.signals_held).
    """
    with Window(tid, threads=None, timeout=timeout) as window:
        return read(window.held[tid].tid)


def capture(pid: int, tids: list[int], held: dict[int, HeldThread], deadline: float,
            all_threads: bool) -> None:
    """Seize, then interrupt, then wait for each thread; with `all_threads`,
    repeat until a pass over /proc/PID/task finds no new thread (a stopped
    thread cannot make more).  Threads that exit meanwhile are dropped."""
    while tids:
        for tid in tids:
            try:
                ptrace.seize(tid, SEIZE_OPTIONS)
            except TaskGone:
                continue  # exited since it was listed
            held[tid] = HeldThread(tid)
        for tid in tids:
            if tid in held:
                try:
                    ptrace.interrupt(tid)
                except TaskGone:
                    pass  # exiting: the wait below collects it
        # Every thread interrupted is waited for, even after one fails: a
        # thread left seized and interrupted would stop, and stay stopped, as
        # soon as it reached its interrupt stop.
        error: PtraceFailed | None = None
        for tid in tids:
            if tid not in held:
                continue
            try:
                wait_for_interrupt_stop(tid, deadline)
                held[tid].stopped = True
            except Execed as exc:
                held[tid].stopped = True  # in its exec event stop: detach it
                error = error or exc
            except TaskGone:
                del held[tid]
            except SignalStop as exc:
                # In a group-stop (someone sent SIGSTOP): detaching leaves it
                # stopped, as the kernel re-enters the group-stop.
                held[tid].stopped = True
                error = error or exc
            except stops.StopLate as exc:
                error = error or exc  # still running (D): released when snapcore exits
        if error is not None:
            raise error
        if not all_threads:
            return
        try:
            tids = [t for t in task_ids(pid) if t not in held]
        except FileNotFoundError:
            return  # the process is gone: the waits above have said so


class Window:
    """One stop of the target: its threads held, then each given back as it was.

    threads: the thread ids to hold, as listed before the window opens (threads
    born meanwhile are held too); None holds the main thread only.
    `check(tid)` runs once every thread is stopped and may refuse by raising.
    SIGINT/SIGTERM/SIGHUP are held until every thread is released: a stop
    request cannot leave the target stopped or running injected registers.
    `timings` says, in seconds, how long capture, the work inside and release
    took, and the whole pause.
    """

    def __init__(self, pid: int, *, threads: list[int] | None, timeout: float,
                 with_xstate: bool = False, check=None):
        self.pid = pid
        self.threads = threads
        self.deadline = time.monotonic() + timeout
        self.with_xstate = with_xstate
        self.check = check
        self.held: dict[int, HeldThread] = {}
        self.timings: dict[str, float] = {}
        self._signals: contextlib.AbstractContextManager = contextlib.nullcontext()

    def __enter__(self) -> Window:
        self._signals = stops.signals_held(stops.STOP_REQUEST_SIGNALS)
        self._signals.__enter__()
        self._t0 = time.perf_counter()
        try:
            capture(self.pid, self.threads or [self.pid], self.held, self.deadline,
                    all_threads=self.threads is not None)
            if not self.held:
                raise TaskGone(None, self.pid, "capture", ended=True)  # every thread
            if self.check is not None:
                self.check(self.main.tid)
            for thread in self.held.values():
                thread.save(self.with_xstate)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        self._t1 = time.perf_counter()
        return self

    @property
    def main(self) -> HeldThread:
        return self.held.get(self.pid) or next(iter(self.held.values()))

    def release(self) -> list[Exception]:
        """Give every held thread back (once; the window's end, or earlier:
        a fork that outlives the deadline must not hold the target).
        Returns what failed."""
        if self.timings:
            return []
        t2 = time.perf_counter()
        # A thread that never reached its stop (uninterruptible sleep past
        # the deadline) cannot be detached while it runs; the kernel
        # releases it when snapcore exits (exit_ptrace), untouched.
        errors: list[Exception] = []
        for thread in self.held.values():
            try:
                thread.release()
            except TaskGone:
                pass  # it exited while held: nothing left to release
            except Exception as err:  # release the others all the same
                errors.append(err)
        t3 = time.perf_counter()
        t1 = getattr(self, "_t1", t2)
        self.timings = {"capture": t1 - self._t0, "syscall": t2 - t1,
                        "release": t3 - t2, "pause": t3 - self._t0}
        return errors

    def __exit__(self, *exc) -> None:
        try:
            errors = self.release()
            if errors and exc[0] is None:
                raise errors[0]
        finally:
            self._signals.__exit__(None, None, None)
