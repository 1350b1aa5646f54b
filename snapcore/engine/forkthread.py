"""The fork thread: a thread snapcore adds to the target for one snapshot.
It makes the snapshot child, is its parent for the child's whole life, reaps
it and leaves, so that nothing of the snapshot is ever the target's, its
parent's or any reaper's to collect (docs/kernel-notes.md, "Who reaps").

- A thread's end is reaped at once and told to no one (kernel/exit.c:
  exit_notify autoreaps a thread that is not its group's leader).
- The snapshot child is the thread's child with exit signal 0: no SIGCHLD,
  no wait() of the target sees it (only __WALL or __WCLONE waits do), and
  while snapcore traces it, its end is seen by snapcore alone
  (wait_consider_task: "a zombie ptracee is only visible to its ptracer").
  Then the fork thread reaps it (wait4 with __WNOTHREAD: its own children).
  An orphan would go to the nearest child subreaper or to the pid
  namespace's init, with SIGCHLD (find_new_reaper, reparent_leader): in a
  container, often the application itself.
- It runs no instruction of the target: only the `syscall`s snapcore
  injects, from a code page of its own (arch.FORK_THREAD_CODE) mapped for
  the snapshot.  It is born with every signal blocked (the mask its maker
  had while it ran an injected call).
- During the dump it is held stopped, then ended (engine/keeper.py).
- Should snapcore die at any moment, every task it made is let go into the
  code page's loop: the child dies (PTRACE_O_EXITKILL), the fork thread
  reaps it and exits.  Only the code page stays (4 KiB), which the next
  snapshot recognises by its contents and unmaps (engine/leftovers.py).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

from snapcore.engine import calls
from snapcore.engine.kernelerrors import meaning
from snapcore.errors import CoreNotWritten, InternalError, Stage, TargetReplaced, Unsupported
from snapcore.linux import arch, landing, ptrace, seccomp
from snapcore.linux.inject import SEIZE_OPTIONS, HeldThread, syscall, wait_for_interrupt_stop
from snapcore.linux.ptrace import TaskGone

NAME = "snapcore-fork"  # the thread's name while it lives (ps -L, top -H)
NAME_AT = arch.FORK_THREAD_NAME  # where the name sits in the code page
# The fork thread carries no EXITKILL (a SIGKILL of one thread ends its whole
# process); what it makes does: a task of snapcore's dies with snapcore.
THREAD_OPTIONS = ptrace.O_TRACESYSGOOD | ptrace.O_TRACECLONE
MADE_OPTIONS = SEIZE_OPTIONS | ptrace.O_TRACECLONE | ptrace.O_EXITKILL


def page_contents() -> bytes:
    """What every fork thread page starts with: its code and the thread's name."""
    page = bytearray(arch.FORK_THREAD_CODE)
    page += bytes(NAME_AT - len(page)) + NAME.encode() + b"\0"
    return bytes(page)


def _page_at(page: int) -> bytes:
    """The page as written at `page`: with the fork thread's first return
    address, the loop's (arch.FORK_THREAD_CELL).  plant adds the runner's
    frame (linux/landing.py) in the same write."""
    head = page_contents()
    return head + bytes(arch.FORK_THREAD_CELL - len(head)) + \
        (page + arch.FORK_THREAD_LOOP).to_bytes(8, "little")


@dataclass
class ForkThread:
    """The fork thread and what it made; ids are in snapcore's pid namespace
    unless named _ns (the target's)."""

    pid: int  # the target
    page: int  # its code page, in the target's memory
    at: int  # a `syscall` of the target's own (vDSO, libc), for the page's unmapping
    guard: seccomp.Guard  # its seccomp filters: the runner's (guard.inherited)
    sites: landing.Sites = field(default_factory=landing.Sites)  # for its end: exit_at
    runner_landing: landing.Landing | None = None  # in the page, for the runner's clone
    tid: int = 0
    born_regs: ptrace.Regs | None = None  # its registers at birth (spawn)
    traced: bool = False
    listening: bool = False  # held in PTRACE_LISTEN (else stopped in a stop already seen)
    ended: bool = False  # fork.finish has ended it (or found it ended)
    child: int = 0
    child_ns: int = 0
    stops_taken: list = field(default_factory=list)  # SIGSTOPs it took: given back

    @property
    def base(self) -> ptrace.Regs:
        """Its registers at birth: the frame every injected call starts from."""
        if self.born_regs is None:
            raise RuntimeError("the fork thread's registers are read when it is born")
        return self.born_regs

    @property
    def entry(self) -> int:
        return self.page + arch.FORK_THREAD_SYSCALL

    def call(self, call: calls.Call, *values: int, deadline: float, on_clone=None,
             late=None) -> tuple[int, list]:
        """One call of the table in the stopped fork thread (`values`: its ANY
        arguments), from its own page: whatever stop it is let go from, it
        lands in the page's reaping loop."""
        try:
            return syscall(self.tid, self.base, self.entry, call.nr, *call.bind(*values),
                           deadline=deadline,
                           guard=self.guard, on_clone=on_clone, stops_taken=self.stops_taken,
                           late=late, keep_end=True)
        except TaskGone as exc:
            if exc.tid != self.tid:
                raise  # another task's end (the child's): not the target's
            raise gone(self.pid) from None


def gone(pid: int) -> TargetReplaced:
    """What ends the fork thread before snapcore does: the target's exec
    (de_thread) or exit."""
    return TargetReplaced(f"process {pid} exec'd or exited during the snapshot",
                          "the snapshot was abandoned", pid=pid, stage=Stage.FORK)


def plant(runner: HeldThread, at: int, guard, deadline: float,
          stack: landing.Landing | None = None,
          sites: landing.Sites | None = None) -> tuple[int, landing.Landing | None]:
    """Map the code page into the target and fill it, the runner's landing
    in it too (one write: each lengthens the pause); returns its address and
    that landing.  `stack`: the runner's landing for the calls without the
    page."""
    page, _ = runner.inject(at, calls.MAP_PAGE.nr, *calls.MAP_PAGE.bind(), deadline=deadline,
                            guard=guard, landing=stack)
    if page < 0:
        raise Unsupported(f"the process may not map snapcore's fork thread page "
                          f"({os.strerror(-page)})", "it cannot be snapshot (an SELinux "
                          "or seccomp policy against executable memory)", stage=Stage.FORK)
    contents = _page_at(page)
    in_page = landing.in_page(runner.tid, runner, page, sites or landing.Sites())
    if in_page is not None:
        contents += bytes(arch.FORK_THREAD_FRAME - len(contents)) + in_page.data
        in_page.placed = True
    try:  # FOLL_FORCE, as a debugger writes a breakpoint: the page stays read-only
        with open(f"/proc/{runner.tid}/mem", "r+b", buffering=0) as mem:
            mem.seek(page)
            mem.write(contents)
    except OSError as exc:
        unplant(runner, page, at, guard, deadline, stack)
        raise InternalError(f"writing the fork thread's page failed: {exc.strerror}",
                            "the target was restored and is running", stage=Stage.FORK) from None
    return page, in_page


def landing_refusals(guard, page: int) -> str:
    """What the filters would answer to the page's own loop (run only if
    snapcore dies, so never checked when it runs): "" when it may run."""
    blocked = []
    for call, offset in ((calls.LOOP_REAP, arch.FORK_THREAD_WAIT),
                         (calls.END_EXIT, arch.FORK_THREAD_EXIT)):
        ret = guard.allows(call.nr, call.bind(), page + offset)
        if seccomp.action(ret) not in seccomp.HARMLESS:
            blocked.append(seccomp.describe(ret))
    return ", ".join(blocked)


def unplant(runner: HeldThread, page: int, at: int, guard, deadline: float,
            stack: landing.Landing | None = None) -> None:
    runner.inject(at, calls.UNMAP_PAGE.nr, *calls.UNMAP_PAGE.bind(page), deadline=deadline,
                  guard=guard, landing=stack)


def spawn(runner: HeldThread, guard, thread: ForkThread, deadline: float) -> None:
    """The runner makes the fork thread, from its landing in the page when it
    has one.  The fork thread starts in an event stop (with the runner's
    EXITKILL when the runner has no landing, which it loses before the
    runner is parked), its stack pointer at the page's cell: let go, its
    next instruction takes it to the loop."""
    def born(tid: int) -> None:
        thread.tid, thread.traced = tid, True
        wait_for_interrupt_stop(tid, deadline, keep_end=True)
        ptrace.set_options(tid, THREAD_OPTIONS)

    made = calls.MAKE_THREAD
    result, _ = runner.inject(thread.entry, made.nr,
                              *made.bind(thread.page + arch.FORK_THREAD_CELL),
                              deadline=deadline, guard=guard, on_clone=born,
                              landing=thread.runner_landing)
    if result < 0 or not thread.tid:
        raise InternalError(f"the fork thread could not be made: "
                            f"{os.strerror(-result) if result < 0 else 'no clone event'}",
                            "the target was restored and is running", stage=Stage.FORK)
    thread.born_regs = ptrace.get_regs(thread.tid)


def _made(thread: ForkThread, what: str, deadline: float, late=None) -> tuple[int, int]:
    """The fork thread makes one task of snapcore's (EXITKILL from its first
    stop).  Killed from outside as it is made, the task is named all the
    same, for the fork thread to reap, once the fork thread's call is over."""
    made: list[int] = []
    lost: list[str] = []

    def adopt(tid: int) -> None:
        made.append(tid)
        try:
            wait_for_interrupt_stop(tid, max(deadline, time.monotonic() + 5))
            ptrace.set_options(tid, MADE_OPTIONS)
        except TaskGone as exc:
            lost.append(meaning(exc).message)

    result, _ = thread.call(calls.FORK, deadline=deadline, on_clone=adopt, late=late)
    if result < 0 or not made:
        raise InternalError(f"{what} in process {thread.pid} failed: "
                            f"{os.strerror(-result) if result < 0 else 'no clone event'}",
                            "the target was restored and is running", pid=thread.pid,
                            stage=Stage.FORK)
    if lost:
        thread.child, thread.child_ns = made[0], result
        raise CoreNotWritten(f"the snapshot child ended as it was made ({lost[0]})",
                             "no core was written; the target is unharmed",
                             pid=thread.pid, stage=Stage.FORK)
    return made[0], result


def make_child(thread: ForkThread, deadline: float, late=None) -> None:
    """The fork: the snapshot child, a copy-on-write image of the target as
    held.  `late()`: see inject.syscall (the page-table copy takes about 15 ms
    per GB resident, and a userfaultfd with fork events waits for its reader).
    From its first instant the child is the OOM killer's first choice: every
    page the target now rewrites is copied, and under a memory limit the
    OOM killer must take the copy, not the target."""
    thread.child, thread.child_ns = _made(thread, "fork", deadline, late)
    try:
        with open(f"/proc/{thread.child}/oom_score_adj", "w") as f:
            f.write("1000")
    except OSError:
        pass  # the child's preparation tries again, and says why it could not


def keep_to_itself(thread: ForkThread, deadline: float) -> None:
    """Forks the target makes from now on do not copy the page (MADV_DONTFORK)."""
    thread.call(calls.DONTFORK, thread.page, deadline=deadline)
