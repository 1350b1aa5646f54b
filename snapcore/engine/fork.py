"""The one stop window: hold the target, make the copy-on-write child, let go.

Inside one window, with every target thread held in a plain interrupt stop:

1. One thread (the runner, whose seccomp filters, read now, let every
   planned call run) maps the fork thread's code page and makes the fork
   thread (engine/forkthread.py).  Only for these two calls does it carry
   injected registers and PTRACE_O_EXITKILL, microseconds each; it is parked
   again with its own registers at once.
2. The fork thread runs the real fork: the snapshot child, a copy-on-write
   image of the target as it is held.  This is the page-table copy, the
   cost of fork().  Should it outlive the stop timeout, the target's threads
   are let go at the timeout and the snapshot is abandoned.
3. The target's threads are released.  The fork thread, the snapshot child's
   parent, makes the sentinel and waits in its own page, untraced, until
   the dump is over; then snapcore takes it back, it reaps what it made,
   unmaps its page and exits (forkthread.end).  Nothing after the window
   stops the target.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from snapcore.engine import calls, forkthread, interrupts, keeper, leftovers
from snapcore.engine.forkthread import ForkThread
from snapcore.engine.kernelerrors import decided, meaning
from snapcore.errors import SnapcoreError, Stage, StopTimeout, Unsupported
from snapcore.linux import arch, landing, procfs, ptrace, restart, rseq, seccomp, stops
from snapcore.linux.inject import HeldThread
from snapcore.linux.ptrace import PtraceFailed
from snapcore.linux.window import Window

# After the window's deadline the fork is waited for this long more, with
# the target's threads released, to take back what it made.
LATE_FORK_GRACE = 60.0


@dataclass
class Forked:
    child: int  # the snapshot child, in snapcore's pid namespace
    child_ns_pid: int  # the same, as the target's pid namespace names it
    runner: HeldThread  # the thread whose state the child carries
    others: list[HeldThread]  # the other threads held, with their state
    timings: dict  # seconds: capture, syscall (the fork), release, pause
    notes: list[str]
    thread: ForkThread  # the child's parent, to end after the dump (forkthread.end)


class ForkTooSlow(StopTimeout):
    """The fork outlived the stop timeout: the target was let go at the timeout."""


@decided
def fork(pid: int, at: int, *, threads: list[int] | None, timeout: float, check,
         planned, pages: list[int], sites: landing.Sites | None = None) -> Forked:
    """Make the snapshot child in one stop window of the target (see above).
    `planned(guard, at)` says which planned call a thread's filters refuse;
    `pages`: code pages a killed snapcore left (leftovers.stale_pages);
    `sites`: the target's code its threads' landings use (linux/landing.py)."""
    sites = sites or landing.Sites()
    made: dict = {}
    notes: list[str] = []
    try:
        with Window(pid, threads=threads, timeout=timeout, with_xstate=True,
                    check=check) as window:
            runner, guard = choose_runner(window, at, planned)
            restart.settle(pid, runner, guard, window.deadline)
            if runner.delivered:
                notes.append(f"signal {runner.delivered} reached thread {runner.tid} while it "
                             "was held and was delivered: the core shows it entering its "
                             "handler")
            _inside(window, runner, guard, at, pages, made, notes, sites)
        thread = made["thread"]
        keeper.hold(thread, time.monotonic() + 5)
    except BaseException:
        if "thread" in made:
            with interrupts.cleanup():
                abandon(made["thread"], notes)
        raise
    others = [t for t in window.held.values() if t is not runner]
    return Forked(thread.child, thread.child_ns, runner, others, window.timings, notes,
                  thread)


def _inside(window: Window, runner: HeldThread, guard, at: int, pages: list[int],
            made: dict, notes: list[str], sites: landing.Sites) -> None:
    """What the window holds the target for: the page, the fork thread, the fork."""
    deadline = window.deadline
    stack = landing.on_stack(window.pid, runner, sites)
    leftovers.unmap_pages(runner, at, guard, pages, deadline, notes, stack)
    leftovers.reap_recorded(window.pid, runner, at, guard, deadline, notes, stack)
    if not runner.free:
        # One its thread must take as it is (linux/heldsignals.py), before the
        # first call: most often one that ends the process.
        raise Unsupported(f"signal {runner.pending_sig} reached process {window.pid} while "
                          "it was held, before snapcore's first call", "it was delivered "
                          "at the release, as the kernel would have; try again",
                          pid=window.pid, stage=Stage.FORK)
    page, in_page = forkthread.plant(runner, at, guard, deadline, stack, sites)
    blocked = forkthread.landing_refusals(guard, page)
    if blocked:
        forkthread.unplant(runner, page, at, guard, deadline, stack)
        raise Unsupported(f"the seccomp filters of process {window.pid} would answer "
                          f"{blocked} to the fork thread's own wait4 or exit",
                          "it cannot be snapshot safely", pid=window.pid, stage=Stage.FORK)
    thread = ForkThread(window.pid, page, at, guard.inherited(calls.FORK_THREAD), sites, in_page)
    try:
        with stops.while_waiting(lambda: keeper.collect_if_ended(thread)):
            forkthread.spawn(runner, guard, thread, deadline)
    except BaseException:
        if thread.tid:
            made["thread"] = thread
        elif runner.free:
            forkthread.unplant(runner, page, at, guard, deadline, stack)
        raise
    made["thread"] = thread
    late: list[float] = []

    def overdue() -> float:
        # Never hold the target past its timeout: let its threads go, and
        # wait for the fork alone (the child it makes is abandoned).
        window.release()
        late.append(time.monotonic())
        return time.monotonic() + LATE_FORK_GRACE

    forkthread.make_child(thread, deadline, overdue)
    if late:
        raise ForkTooSlow(f"the fork of process {window.pid} took longer than the stop "
                          "timeout; the process was let go at the timeout and the "
                          "snapshot abandoned", "allow a longer stop timeout (about 20 ms "
                          "per GB of memory)", pid=window.pid, stage=Stage.FORK,
                          setting="timeout")
    forkthread.keep_to_itself(thread, deadline)


@dataclass
class Parent:
    """The fork thread as the child's parent, for engine/dump.py: stopped just
    before the child's end is collected, and reaping it just after, so that
    the zombie is the target's to see for the fewest microseconds."""

    thread: ForkThread

    def ready(self) -> None:
        try:
            with interrupts.cleanup():  # a stop it took must be recorded as taken
                keeper.take_back(self.thread, time.monotonic() + 10)
        except (SnapcoreError, PtraceFailed):
            pass  # finish says so

    def reap(self) -> list[str]:
        return finish(self.thread)


@decided
def finish(thread: ForkThread) -> list[str]:
    """After the dump, the child ended and collected: take the fork thread
    back, let it reap the child, unmap its page and leave (once: a second
    call does nothing).  Returns notes."""
    if thread.ended:
        return []
    # From here it must finish: a stop request that landed halfway would
    # leave the fork thread stopped mid-call, and the second call does
    # nothing (the child's zombie then waited for a parent that was gone).
    with interrupts.cleanup():
        return _finish(thread)


def _finish(thread: ForkThread) -> list[str]:
    thread.ended = True
    deadline = time.monotonic() + 10
    try:
        if keeper.take_back(thread, deadline):
            keeper.end(thread, deadline)
            return []
    except (SnapcoreError, PtraceFailed) as exc:
        why = exc if isinstance(exc, SnapcoreError) else meaning(exc)
        return [f"the fork thread could not be ended ({why.message}): snapcore lets "
                "it go in its page, where it reaps the child and exits; the page stays until "
                "the next snapshot"]
    # Ended by the target's exec or exit: the child passed to the thread that
    # exec'd (or to the reaper), and ended, before the fork thread is collected.
    keeper.collect_end(thread)
    if procfs.parent(thread.child) == thread.pid:
        return leftovers.record(thread.pid, [thread.child])
    return [f"process {thread.pid} exec'd or exited during the snapshot: the child, ended "
            "first, went to it (exit signal 0, no SIGCHLD) or to its reaper"]


def abandon(thread: ForkThread, notes: list[str]) -> None:
    """The window failed after the fork thread was made: nothing made may
    outlive it.  The child dies; the fork thread reaps it, unmaps its page and
    exits."""
    if thread.child:
        keeper.kill_and_collect(thread.child, time.monotonic() + 10)
    notes += finish(thread)


def choose_runner(window: Window, at: int, planned) -> tuple[HeldThread, seccomp.Guard]:
    """The thread that runs the injected calls, and its filters as a Guard.

    Seccomp filters are per thread, and the fork thread and the child inherit
    the runner's: so the runner is a thread whose own filters, read now that
    no thread can install one, let every planned call run.  Among those: the
    main thread when it sits in a syscall, else one that does, else the main
    thread; never one inside an rseq critical section when another will do."""
    main = window.main
    others = [t for t in window.held.values() if t is not main]
    order = ([main] if main.in_syscall else []) + [t for t in others if t.in_syscall] + \
        [main] + [t for t in others if not t.in_syscall]
    candidates = list({t.tid: t for t in order}.values())  # each once, first place kept
    refused: list[str] = []
    usable: list[tuple[HeldThread, seccomp.Guard]] = []
    for thread in candidates:
        guard = _guard_of(window.pid, thread, at, planned, refused)
        if guard is None:
            continue
        if rseq.abort_ip(thread.tid, getattr(thread.regs, arch.REG_IP)) is None:
            return thread, guard
        usable.append((thread, guard))
    if not usable:
        raise Unsupported(f"the seccomp filters of process {window.pid} let no thread of it "
                          f"run snapcore's calls: {'; '.join(refused[:3])}", "an injected "
                          "call must never be denied or kill the process: it cannot be "
                          "snapshot safely",
                          pid=window.pid, stage=Stage.CAPTURE)
    thread, guard = usable[0]
    abort = rseq.abort_ip(thread.tid, getattr(thread.regs, arch.REG_IP))
    assert abort is not None  # judged inside one just above
    rseq.move_to_abort(thread.tid, thread.regs, abort)
    return thread, guard


def _guard_of(pid: int, thread: HeldThread, at: int, planned,
              refused: list[str]) -> seccomp.Guard | None:
    """The thread's own filters as a Guard, or None (and why, in `refused`)
    when they would refuse a planned call or cannot be read."""
    mode = procfs.thread_seccomp(pid, thread.tid)
    if mode == 1:
        refused.append(f"thread {thread.tid} is in strict seccomp mode")
        return None
    filters = []
    if mode == 2:
        try:
            filters = [seccomp.parse(raw) for raw in ptrace.seccomp_filters(thread.tid)]
        except (PtraceFailed, seccomp.FilterError) as exc:
            refused.append(f"thread {thread.tid}'s filters cannot be read ({meaning(exc)})")
            return None
    guard = seccomp.Guard(filters, arch.AUDIT_ARCH)
    blocked = planned(guard, at)
    if blocked:
        refused.append(f"thread {thread.tid}'s filters would answer {blocked}")
        return None
    return guard
