"""The one stop window: hold the target, make the copy-on-write child, let go.

Inside one window, with every target thread held in a plain interrupt stop:

1. One thread (the runner) runs an injected clone(CLONE_VM|CLONE_FS|
   CLONE_FILES) with exit signal 0: an intermediate task sharing the target's
   memory.  No page tables are copied, so this takes microseconds, and only
   then does the runner carry injected registers (and PTRACE_O_EXITKILL).
   The runner is parked again with its own registers at once.
2. The intermediate task, never running a single instruction of the target's
   code, runs the real fork: the snapshot child, a copy-on-write image of the
   target as it is held.  This is the page-table copy, the cost of fork().
3. The intermediate task is killed, and reaped by a wait4 injected into the
   runner, still inside the window.  The snapshot child is now an orphan:
   init (or the nearest child subreaper above the target) adopts it, and the
   target never sees it again.  Nothing after the window touches the target.

A target that adopts orphans itself (the init of its pid namespace: a
container whose entrypoint is the program; or a child subreaper, asked with
PR_GET_CHILD_SUBREAPER inside the window) would get the orphan and its
SIGCHLD.  There the child is made with CLONE_PARENT instead: it becomes the
target's own child with exit signal 0 (CLONE_PARENT takes the exit signal
of the intermediate task, kernel/fork.c: copy_process), which no ordinary
wait() or SIGCHLD ever shows, and is reaped after the dump (snapshot.py).
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass

from snapcore.engine import interrupts
from snapcore.engine.leftovers import INTERMEDIATE_NAME, REAP_OPTIONS, reap_leftovers  # noqa: F401
from snapcore.errors import InternalError, NoSuchProcess, Stage
from snapcore.linux import arch, ptrace, rseq, stops
from snapcore.linux.inject import HeldThread, syscall, wait_for_interrupt_stop
from snapcore.linux.stops import ENDED
from snapcore.linux.window import Window

CLONE_VM = 0x100
CLONE_FS = 0x200
CLONE_FILES = 0x400
CLONE_PARENT = 0x8000
# Shares memory, files and cwd with the target: nothing is copied, and no
# descriptor of the target is held open by a copy.  Exit signal 0 (low byte).
INTERMEDIATE_FLAGS = CLONE_VM | CLONE_FS | CLONE_FILES
# The snapshot child: a plain fork with exit signal 0.
SNAPSHOT_FLAGS = 0
SNAPSHOT_FLAGS_ADOPTED = CLONE_PARENT
PR_SET_NAME = 15
PR_GET_CHILD_SUBREAPER = 37
PROT_READ_WRITE = 0x3
MAP_PRIVATE_ANONYMOUS = 0x22


@dataclass
class Forked:
    child: int  # the snapshot child, in snapcore's pid namespace
    child_ns_pid: int  # the same, as the target's pid namespace names it
    runner: HeldThread  # the thread whose state the child carries
    others: list[HeldThread]  # the other threads held, with their state
    timings: dict  # seconds: capture, syscall (the fork), release, pause
    notes: list[str]
    adopted: bool  # made with CLONE_PARENT: the target's child, to reap after the dump


def clone_child(events: list[tuple[int, int]]) -> int | None:
    born = [msg for event, msg in events if event == ptrace.EVENT_CLONE]
    return born[0] if born else None


def choose_runner(window: Window, main_only: bool) -> HeldThread:
    """The thread that runs the injected calls: the main thread when it sits in
    a syscall (or must: `main_only`), else one that does, else the main thread;
    never one inside an rseq critical section when another will do."""
    main = window.main
    others = [t for t in window.held.values() if t is not main]
    if main_only:
        candidates = [main]
    else:
        candidates = ([main] if main.in_syscall else []) + \
            [t for t in others if t.in_syscall] + [main] + \
            [t for t in others if not t.in_syscall]
    for thread in candidates:
        if rseq.abort_ip(thread.tid, getattr(thread.regs, arch.REG_IP)) is None:
            return thread
    thread = candidates[0]
    rseq.move_to_abort(thread.tid, thread.regs,
                       rseq.abort_ip(thread.tid, getattr(thread.regs, arch.REG_IP)))
    return thread


def fork(pid: int, at: int, *, threads: list[int] | None, timeout: float, check,
         adopted: bool, guard, main_only: bool) -> Forked:
    """Make the snapshot child in one stop window of the target (see above)."""
    made: dict[str, tuple[int, int]] = {}  # what exists so far: name -> (tid, ns pid)
    with Window(pid, threads=threads, timeout=timeout, with_xstate=True,
                check=check) as window:
        runner = choose_runner(window, main_only)
        notes: list[str] = []
        try:
            reap_leftovers(pid, runner, at, window.deadline, guard, notes)
            if runner.pending_sig:
                raise InternalError("a signal reached the process while it was held",
                                    "it was delivered and the process released; try again",
                                    pid=pid, stage=Stage.FORK)
            adopted = _make_child(window, runner, at, adopted, guard, made, notes)
        except BaseException:
            with interrupts.cleanup():
                _undo(window, runner, at, made, made.get("adopted", adopted))
            raise
    child, child_ns_pid = made["child"]
    others = [t for t in window.held.values() if t is not runner]
    return Forked(child, child_ns_pid, runner, others, window.timings, notes, adopted)


def _make_child(window: Window, runner: HeldThread, at: int, adopted: bool, guard,
                made: dict, notes: list[str]) -> bool:
    """Returns whether the child was made as the target's own (CLONE_PARENT)."""
    deadline = window.deadline
    result, events = runner.inject(at, arch.NR["clone"], INTERMEDIATE_FLAGS, 0, 0, 0, 0,
                                   deadline=deadline, guard=guard)
    middle = _born(made, "intermediate", result, events, "clone", window.pid)
    wait_for_interrupt_stop(middle, deadline)  # auto-attached: starts in an event stop
    adopted = _prepare_intermediate(free_thread(window, runner), middle, at, deadline, guard,
                                    probe=not adopted) or adopted
    made["adopted"] = adopted
    flags = SNAPSHOT_FLAGS_ADOPTED if adopted else SNAPSHOT_FLAGS
    # The page-table copy takes about 15 ms per GB resident: far past the
    # window's stop deadline for the largest processes, and it always ends.
    result, events = syscall(middle, ptrace.get_regs(middle), at, arch.NR["clone"], flags,
                             0, 0, 0, 0, deadline=max(deadline, time.monotonic() + 60),
                             guard=guard)
    _born(made, "child", result, events, "fork", window.pid)
    reaped = _end(made.pop("intermediate"), free_thread(window, runner), at, deadline)
    if reaped is not None:
        notes.append(reaped)
    return adopted


def free_thread(window: Window, runner: HeldThread) -> HeldThread | None:
    """A held thread that may run an injected call now: the runner, unless a
    signal reached it while parked (it is held in that signal's delivery stop,
    and injecting there would drop the signal); then any other held thread.
    Any thread of the process may reap its children (wait4 looks at the whole
    thread group)."""
    for thread in [runner, *window.held.values()]:
        if thread.stopped and not thread.pending_sig and thread.regs is not None:
            return thread
    return None


def _born(made: dict, name: str, result: int, events: list, what: str, pid: int) -> int:
    """Note the task a clone made (so a failure can undo it), or say it failed."""
    born = clone_child(events)
    if born is not None:
        made[name] = (born, result)
    if result < 0 or born is None:
        raise InternalError(f"{what} in process {pid} failed: "
                            f"{os.strerror(-result) if result < 0 else 'no child'}",
                            "the target was restored and is running", pid=pid, stage=Stage.FORK)
    return born


def _prepare_intermediate(runner: HeldThread | None, middle: int, at: int, deadline: float,
                          guard, probe: bool) -> bool:
    """Name the intermediate task INTERMEDIATE_NAME (a zombie of it left by a
    killed snapcore is then recognised and reaped by the next snapshot), and
    with `probe` ask whether the target is a child subreaper.

    PR_GET_CHILD_SUBREAPER, which /proc does not show, needs a few writable
    bytes in the target's memory: the intermediate task (which shares it) maps
    a fresh page for the name and the answer, and unmaps it after, so none of
    the target's own memory is written.  Returns whether it is a subreaper.
    """
    base = ptrace.get_regs(middle)
    page, _ = syscall(middle, base, at, arch.NR["mmap"], 0, arch.PAGE_SIZE, PROT_READ_WRITE,
                      MAP_PRIVATE_ANONYMOUS, -1, 0, deadline=deadline, guard=guard)
    if page < 0:
        raise InternalError(f"mmap in the intermediate task failed: {os.strerror(-page)}",
                            stage=Stage.FORK)
    try:
        with open(f"/proc/{middle}/mem", "r+b", buffering=0) as mem:
            mem.seek(page)
            mem.write(INTERMEDIATE_NAME.encode() + b"\0")
        syscall(middle, base, at, arch.NR["prctl"], PR_SET_NAME, page, deadline=deadline,
                guard=guard)
        if not probe:
            return False
        if runner is None:
            return True  # cannot ask: take the answer that is safe either way
        answer = page + 64
        ret, _ = runner.inject(at, arch.NR["prctl"], PR_GET_CHILD_SUBREAPER, answer,
                               deadline=deadline, guard=guard)
        with open(f"/proc/{middle}/mem", "rb", buffering=0) as mem:
            mem.seek(answer)
            value = int.from_bytes(mem.read(4), "little")
    finally:
        syscall(middle, base, at, arch.NR["munmap"], page, arch.PAGE_SIZE, deadline=deadline,
                guard=guard)
    return ret == 0 and value != 0


def _end(task: tuple[int, int], runner: HeldThread | None, at: int,
         deadline: float) -> str | None:
    """Kill a task the target is the parent of, collect it as its tracer, and
    reap it from inside the target (wait4 in a held thread).  Returns what went
    wrong, or None."""
    tid, ns_pid = task
    _kill_and_collect(tid, deadline)
    if runner is None:
        return (f"task {ns_pid} is left a zombie (exit signal 0, named "
                f"{INTERMEDIATE_NAME}): no thread could reap it; the next snapshot will")
    result, _ = runner.inject(at, arch.NR["wait4"], ns_pid, 0, REAP_OPTIONS, 0,
                              deadline=deadline)
    if result == ns_pid:
        return None
    return f"wait4 in the target for task {ns_pid} returned {result}"


def _kill_and_collect(tid: int, deadline: float) -> None:
    """SIGKILL one tracee (its own thread group: the target is not touched)
    and wait for its end, so its parent can reap it."""
    try:
        os.kill(tid, signal.SIGKILL)
    except ProcessLookupError:
        return
    while True:
        try:
            stop = stops.wait(tid, deadline)
        except NoSuchProcess:
            return
        if stop.kind in ENDED:
            return


def _undo(window: Window, runner: HeldThread, at: int, made: dict, adopted: bool) -> None:
    """The window failed after a clone: nothing made may outlive it.

    The snapshot child goes first (as a child of the intermediate task it dies
    silently, exit signal 0); then the intermediate task, reaped in the
    target; an adopted child, the target's own, is reaped there too.
    """
    for name in ("child", "intermediate"):
        if name not in made:
            continue
        tid, ns_pid = made[name]
        del made[name]
        try:
            if name == "intermediate" or adopted:
                _end((tid, ns_pid), free_thread(window, runner), at, window.deadline + 5)
            else:
                _kill_and_collect(tid, window.deadline + 5)
        except Exception:  # the target itself may be gone: nothing left to reap in
            pass
