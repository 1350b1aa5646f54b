"""Run one syscall inside a stopped thread, and give the thread back untouched.

No code is written into the target: the thread jumps to an existing
`syscall` instruction (see target.find_syscall_instruction) with the number
and arguments in its registers, and is stepped with PTRACE_SYSCALL stops.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from . import arch, ptrace
from .errors import InternalError, NoSuchProcess, Unsupported
from .target import task_ids

_U64 = (1 << 64) - 1


def signed(value: int) -> int:
    return value - (1 << 64) if value & (1 << 63) else value


def syscall(tid: int, base: ptrace.Regs, at: int, nr: int, *args: int,
            deadline: float | None,
            events: list | None = None) -> tuple[int, list[tuple[int, int]]]:
    """Make stopped thread `tid` execute syscall `nr`; return its result and the
    ptrace events (event, message) it reported on the way.

    orig_rax is set to -1 so the kernel's syscall-restart logic, which runs when
    the thread leaves its current stop, does not rewind rip or overwrite rax
    (arch/x86/kernel/signal.c: arch_do_signal_or_restart).
    """
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
        stop = ptrace.wait(tid, deadline)
        if stop.kind == "syscall":
            return
        if stop.kind == "event":
            # PTRACE_EVENT_CLONE arrives between clone's entry and exit.
            events.append((stop.event, ptrace.event_msg(tid)))
            ptrace.resume_to_syscall(tid)
        elif stop.kind == "group":
            # Someone sent SIGSTOP mid-injection; finish first (the kernel
            # re-enters the group-stop when the thread is detached).
            ptrace.resume_to_syscall(tid)
        elif stop.kind == "signal":
            # Every signal is blocked while snapcore injects, so this is a
            # synchronous fault caused by the injection itself.
            raise InternalError(f"thread {tid} got signal {stop.sig} during an injected "
                                "syscall", pid=tid, stage="inject")
        else:
            raise NoSuchProcess(f"thread {tid} exited during an injected syscall", pid=tid,
                                stage="inject")


def wait_for_interrupt_stop(tid: int, deadline: float | None) -> None:
    """Wait for the PTRACE_INTERRUPT stop, passing on signals that arrive first."""
    while True:
        stop = ptrace.wait(tid, deadline)
        if stop.kind == "event":
            return
        if stop.kind == "signal":
            # A signal-delivery stop came first: deliver it as the kernel would
            # have; the interrupt stays pending and stops the thread next.
            ptrace.cont(tid, stop.sig)
        elif stop.kind == "group":
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
    moved: bool = False  # resumed into an injection since it stopped

    def save(self, with_xstate: bool) -> None:
        self.regs = ptrace.get_regs(self.tid)
        self.sigmask = ptrace.get_sigmask(self.tid)
        if with_xstate:
            self.xstate = ptrace.get_xstate(self.tid)

    @property
    def in_syscall(self) -> bool:
        return signed(getattr(self.regs, arch.REG_ORIG_NR)) >= 0

    def release(self, deadline: float | None) -> None:
        """Put the thread back exactly as it was and detach.

        A thread that ran an injected syscall sits in a syscall-exit stop.
        Detaching from there skips the kernel's syscall-restart step (it runs on
        the signal path only), so an interrupted nanosleep or read would return
        -ERESTART* to the program.  Instead: restore the registers, park the
        thread in an interrupt stop (which is on the signal path), then detach,
        and the kernel restarts the call as if nothing happened.
        """
        if not self.stopped:
            return
        tid = self.tid
        self.stopped = False
        if not self.moved:
            ptrace.detach(tid)
            return
        try:
            ptrace.set_options(tid, ptrace.O_TRACESYSGOOD)  # drop EXITKILL and TRACECLONE
        except NoSuchProcess:
            # The injection was cut short while the thread ran its syscall: it
            # stops at the syscall's exit, then it can be put back.
            if ptrace.wait(tid, deadline).kind in ("exited", "killed"):
                return
            ptrace.set_options(tid, ptrace.O_TRACESYSGOOD)
        ptrace.set_regs(tid, self.regs)
        ptrace.set_sigmask(tid, self.sigmask)
        ptrace.interrupt(tid)
        ptrace.cont(tid)
        while True:
            stop = ptrace.wait(tid, deadline)
            if stop.kind in ("event", "group"):
                ptrace.detach(tid)
                return
            if stop.kind == "signal":
                ptrace.detach(tid, stop.sig)  # a pending signal, delivered now
                return
            if stop.kind in ("exited", "killed"):
                return


def peek(tid: int, read, timeout: float):
    """Hold thread `tid` stopped just long enough to call read(tid), then let it go.

    For what ptrace shows only on a stopped tracee (seccomp filters).  The
    caller must have SIGCHLD blocked (ptrace.signals_held).
    """
    held = HeldThread(tid)
    with ptrace.signals_held(ptrace.STOP_REQUEST_SIGNALS):
        ptrace.seize(tid, 0)
        try:
            ptrace.interrupt(tid)
            wait_for_interrupt_stop(tid, time.monotonic() + timeout)
            held.stopped = True
            return read(tid)
        finally:
            held.release(None)


@dataclass
class Injection:
    """What one syscall run in the target left behind."""

    result: int  # the syscall's return value (negative errno on failure)
    events: list[tuple[int, int]]  # (PTRACE_EVENT_*, event message) seen on the way
    timings: dict  # seconds: capture, syscall, release, pause (the whole window)
    runner: HeldThread  # the thread that ran it, with its own saved state
    others: list[HeldThread]  # the other threads held meanwhile, with their state


def capture(pid: int, tids: list[int], held: dict[int, HeldThread], deadline: float,
            all_threads: bool) -> None:
    """Seize, then interrupt, then wait for each thread; with `all_threads`,
    repeat until a pass over /proc/PID/task finds no new thread (a stopped
    thread cannot make more).  Threads that exit meanwhile are dropped."""
    while tids:
        for tid in tids:
            try:
                ptrace.seize(tid, ptrace.O_TRACESYSGOOD)
            except NoSuchProcess:
                continue  # exited since it was listed
            held[tid] = HeldThread(tid)
        for tid in tids:
            if tid in held:
                try:
                    ptrace.interrupt(tid)
                except NoSuchProcess:
                    pass  # exiting: the wait below collects it
        for tid in tids:
            if tid not in held:
                continue
            try:
                wait_for_interrupt_stop(tid, deadline)
                held[tid].stopped = True
            except NoSuchProcess:
                del held[tid]
            except Unsupported:
                # In a group-stop (someone sent SIGSTOP): detaching leaves it
                # stopped, as the kernel re-enters the group-stop.
                held[tid].stopped = True
                raise
        if not all_threads:
            return
        try:
            tids = [t for t in task_ids(pid) if t not in held]
        except FileNotFoundError:
            return  # the process is gone: the waits above have said so


def run_in_target(pid: int, at: int, nr: int, *args: int, timeout: float,
                  threads: list[int] | None = None, with_xstate: bool = False,
                  check=None, main_runs: bool = False,
                  events: list | None = None) -> Injection:
    """Stop the target, run one syscall in one of its threads, restore, let go.

    threads: the thread ids to hold during the syscall, as listed before the
    window opens; None holds the main thread only.  With a list, threads born
    meanwhile are held too.  The syscall runs in the main thread if it sits in
    a syscall, else in a held thread that does, else in the main thread;
    with `main_runs`, always in the main thread (whose seccomp filters were
    checked).
    `check(tid)` runs once every thread is stopped and may refuse by raising.
    `events`, when given, collects the ptrace events as they happen, so that a
    caller still learns of a clone child when this raises.

    SIGINT/SIGTERM/SIGHUP are held until every thread is released.  While the
    running thread has injected registers it carries PTRACE_O_EXITKILL: if
    snapcore is killed in that window the target dies rather than run on with
    registers that are not its own (or duplicate itself).
    """
    held: dict[int, HeldThread] = {}
    deadline = time.monotonic() + timeout
    with ptrace.signals_held(ptrace.STOP_REQUEST_SIGNALS):
        t0 = time.perf_counter()
        try:
            capture(pid, threads or [pid], held, deadline, all_threads=threads is not None)
            if not held:
                raise NoSuchProcess(f"process {pid} exited", pid=pid, stage="capture")
            runner = held.get(pid) or next(iter(held.values()))
            if check is not None:
                check(runner.tid)
            for thread in held.values():
                thread.save(with_xstate)
            t1 = time.perf_counter()
            if not runner.in_syscall and not main_runs:
                runner = next((t for t in held.values() if t.in_syscall), runner)
            tid = runner.tid
            ptrace.set_options(tid, ptrace.O_TRACESYSGOOD | ptrace.O_TRACECLONE
                               | ptrace.O_EXITKILL)
            ptrace.set_sigmask(tid, ptrace.ALL_SIGNALS_MASK)
            runner.moved = True
            events = [] if events is None else events
            for _attempt in range(10):
                result, events = syscall(tid, runner.regs, at, nr, *args, deadline=deadline,
                                         events=events)
                if result != arch.ERESTARTNOINTR:  # a signal raced the call: retry
                    break
            t2 = time.perf_counter()
        finally:
            # A thread that never reached its stop (uninterruptible sleep past
            # the deadline) cannot be detached while it runs; the kernel
            # releases it when snapcore exits (exit_ptrace), untouched.
            errors = []
            for thread in held.values():
                try:
                    thread.release(deadline + 5.0)
                except NoSuchProcess:
                    pass  # it exited while held: nothing left to release
                except Exception as exc:  # release the others all the same
                    errors.append(exc)
            if errors:
                raise errors[0]
        t3 = time.perf_counter()
    timings = {"capture": t1 - t0, "syscall": t2 - t1, "release": t3 - t2, "pause": t3 - t0}
    others = [t for t in held.values() if t is not runner]
    return Injection(result, events, timings, runner, others)
