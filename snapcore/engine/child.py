"""Make the copy-on-write child safe to dump, without ever running the target's code.

The child is a private copy of the target: writing into its memory or changing
its settings cannot touch the target.  Setup is done from inside the child
(injected syscalls) where possible: a process may lower its own priority and
raise its own soft limits without any capability, while doing the same from
outside needs CAP_SYS_RESOURCE or a matching uid.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from snapcore.engine import calls
from snapcore.engine.kernelerrors import decided
from snapcore.errors import (CoreNotWritten, InternalError, NoSuchProcess, NotDumpable, Stage,
                             TargetReplaced)
from snapcore.linux import arch, ptrace, regsets, seccomp
from snapcore.linux.inject import HeldThread, syscall, wait_for_interrupt_stop

if TYPE_CHECKING:
    from snapcore.engine.fork import Parent

# Layout of the scratch page mapped into the child.
_SIGACTION_AT = 0  # struct kernel_sigaction: handler, flags, restorer, mask (all 0: SIG_DFL)
_SCHED_PARAM_AT = 64  # struct sched_param {0}
_RLIMIT_AT = 128  # struct rlimit {soft, hard}
_PATH_AT = 256  # the staging directory, NUL-terminated
_NAME_AT = 512  # the target's name, NUL-terminated (at most 15 bytes + NUL)


@dataclass
class Child:
    """The child as the tracer sees it; `pid` is in snapcore's pid namespace."""

    pid: int
    notes: list[str] = field(default_factory=list)  # setup steps that failed harmlessly
    alive: bool = True
    # Each thread of the child (its tid in snapcore's namespace) -> the
    # target thread whose state it carries.
    threads: dict[int, int] = field(default_factory=dict)
    # Each thread of the child -> its tid in the child's own pid namespace (a
    # container's), which is what the kernel writes into the core's notes.
    ns_tids: dict[int, int] = field(default_factory=dict)
    scratch: int = 0  # a page mapped in the child for syscall arguments
    guard: seccomp.Guard | None = None  # the child inherited the fork thread's filters
    page: int = 0  # the fork thread's code page, which the child has a copy of
    # keeper() -> False once the child's parent, the fork thread, has ended
    # (the target exec'd or exited): the dump is then abandoned at once.
    keeper: Callable[[], bool] | None = None
    # The fork thread, which reaps the child's end the moment snapcore has
    # collected it (ready() before, reap() after; engine/fork.py: Parent):
    # meanwhile a __WALL wait of the target could see it.
    parent: Parent | None = None
    oom_kills_before: int = field(default_factory=lambda: oom_kills())

    def __post_init__(self) -> None:
        if self.guard is not None and self.guard.task != calls.CHILD:
            self.guard = self.guard.inherited(calls.CHILD)  # the fork copied its filters

    def oom_killed(self) -> bool:
        """Whether the OOM killer struck since the child was made (the kernel
        counts its kills in /proc/vmstat; a SIGKILL of the child that
        snapcore did not send, with a new OOM kill, is the OOM killer's)."""
        return oom_kills() > self.oom_kills_before

    def check_parent(self) -> None:
        if self.keeper is not None and not self.keeper():
            raise TargetReplaced("the process exec'd or exited during the snapshot",
                                 "the snapshot was abandoned", stage=Stage.DUMP)


def oom_kills() -> int:
    try:
        with open("/proc/vmstat") as f:
            for line in f:
                if line.startswith("oom_kill "):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


@decided
def prepare(child: Child, at: int, *, core_hard: int, staging: str | None, name: str,
            allow_undumpable: bool, deadline: float) -> None:
    """Make the child harmless: its own core limit, SIGABRT at its default, the
    staging directory as cwd, no open files, the OOM killer's first choice.
    It waits at a syscall stop, with a scratch page mapped, for `resurrect`."""
    pid = child.pid
    call = _injector(child, at, deadline)
    _unmap_fork_page(child, call)
    _check_dumpable(child, call, allow_undumpable)
    scratch = _scratch_page(pid, call, core_hard, staging, name)
    # Must succeed, or there is no core (or a core somewhere unexpected).
    required = [(calls.CORE_LIMIT, scratch + _RLIMIT_AT),
                (calls.ABORT_DEFAULT, scratch + _SIGACTION_AT)]
    if staging:
        required.append((calls.CHDIR, scratch + _PATH_AT))
    for required_call, pointer in required:
        ret = call(required_call, pointer)
        if ret < 0:
            raise CoreNotWritten(f"{required_call.name} in the snapshot child failed: "
                                 f"{os.strerror(-ret)}", stage=Stage.CHILD)
    # The forking thread may be a worker with its own name; the core's
    # process name (NT_PRPSINFO) and core_pattern's %e come from the child.
    if call(calls.NAME_CHILD, scratch + _NAME_AT) < 0:
        child.notes.append("could not name the child after the target")
    _close_files(pid, call)
    child.scratch = scratch
    _oom_first(child)


@decided
def prepare_still(child: Child, at: int, *, allow_undumpable: bool, deadline: float) -> None:
    """Make the child harmless for snapcore's own writer, which only reads it:
    no open files, the OOM killer's first choice, and nothing else.  No page
    is mapped and no setting changed that the core would show; the child
    never runs an instruction of the target and never takes a signal."""
    call = _injector(child, at, deadline)
    _unmap_fork_page(child, call)
    _check_dumpable(child, call, allow_undumpable, writer="snapcore")
    _close_files(child.pid, call)
    _oom_first(child)


def _unmap_fork_page(child: Child, call) -> None:
    """The child was forked by the fork thread, page and all: the core shows
    the target's memory, not snapcore's page."""
    if child.page and call(calls.CHILD_UNMAP, child.page) < 0:
        child.notes.append("the fork thread's page could not be unmapped from the child: "
                           "the core shows one page more than the process has")


def _injector(child: Child, at: int, deadline: float):
    """call(c, *values) -> the return of call `c` of the table (`values`: its
    ANY arguments) run in the stopped child, from the registers it has now
    (it waits in the event stop it was born in: engine/forkthread.py took
    that stop to give it PTRACE_O_EXITKILL)."""
    base = ptrace.get_regs(child.pid)

    def call(c: calls.Call, *values: int) -> int:
        return syscall(child.pid, base, at, c.nr, *c.bind(*values), deadline=deadline,
                       guard=child.guard)[0]
    return call


def _oom_first(child: Child) -> None:
    try:
        # So the OOM killer takes the child, not the target.  Raising one's own
        # score needs no capability; root may do it from outside.
        with open(f"/proc/{child.pid}/oom_score_adj", "w") as f:
            f.write("1000")
    except OSError as exc:
        child.notes.append(f"oom_score_adj: {exc.strerror}")


def _check_dumpable(child: Child, call, allow_undumpable: bool, writer: str = "kernel") -> None:
    """The child inherited the target's dumpable flag: for root's processes
    this is the only place it can be read."""
    if call(calls.GET_DUMPABLE) != 0:
        return
    if not allow_undumpable:
        raise NotDumpable("the process made itself non-dumpable (PR_SET_DUMPABLE 0): "
                          "it keeps its memory out of cores", "respect that",
                          stage=Stage.CHILD)
    if writer == "snapcore":
        return  # snapcore reads the child as root: the flag needs no change
    # Overridden: only the child is made dumpable again (a process may set
    # its own flag back to 1 without privilege); the target keeps its 0.
    if call(calls.SET_DUMPABLE) < 0:
        child.notes.append("could not make the child dumpable: the kernel will write no "
                           "core")


def _scratch_page(pid: int, call, core_hard: int, staging: str | None, name: str) -> int:
    """Map a page in the child and fill it with the arguments its setup calls
    point to (the child is a private copy: this touches nothing of the target)."""
    scratch = call(calls.SCRATCH)
    if scratch < 0:
        raise InternalError(f"mmap in the snapshot child failed ({scratch})",
                            stage=Stage.CHILD)
    page = bytearray(arch.PAGE_SIZE)
    page[_RLIMIT_AT:_RLIMIT_AT + 16] = core_hard.to_bytes(8, "little") * 2
    if staging:
        path = staging.encode() + b"\0"
        page[_PATH_AT:_PATH_AT + len(path)] = path
    comm = name.encode()[:15] + b"\0"
    page[_NAME_AT:_NAME_AT + len(comm)] = comm
    try:
        with open(f"/proc/{pid}/mem", "r+b", buffering=0) as mem:
            mem.seek(scratch)
            mem.write(bytes(page))
    except (ProcessLookupError, FileNotFoundError):
        raise NoSuchProcess(f"snapshot child {pid} exited", pid=pid) from None
    return scratch


def _close_files(pid: int, call) -> None:
    """Close the child's copies of the target's descriptors: a socket the
    target closes would otherwise stay half-open until the dump ends."""
    ret = call(calls.CLOSE_ALL)
    if ret == 0:
        return
    for fd in sorted(int(n) for n in os.listdir(f"/proc/{pid}/fd")):  # kernels before 5.9
        call(calls.CLOSE_ONE, fd)


@decided
def resurrect(child: Child, at: int, threads: list[HeldThread], deadline: float) -> None:
    """Give the child one thread per other target thread, with that thread's state.

    fork copies only the calling thread.  Each clone(CLONE_THREAD) made inside
    the child starts attached and stopped (the child inherited TRACECLONE), and
    never runs: it takes the target thread's registers (fs_base included),
    extended state and signal mask, so the kernel's core holds one
    NT_PRSTATUS and FP state per target thread.
    """
    pid = child.pid
    base = ptrace.get_regs(pid)
    for thread in threads:
        sp = getattr(thread.regs, arch.REG_SP)
        clone = calls.RECREATE_THREAD
        ret, events = syscall(pid, base, at, clone.nr, *clone.bind(sp), deadline=deadline,
                              guard=child.guard)
        born = [msg for event, msg in events if event == ptrace.EVENT_CLONE]
        if ret < 0 or not born:
            raise InternalError(f"could not recreate thread {thread.tid} in the snapshot "
                                f"child ({os.strerror(-ret) if ret < 0 else 'no event'})",
                                stage=Stage.CHILD)
        tid = born[0]
        child.threads[tid] = thread.tid
        child.ns_tids[tid] = ret  # clone returns the tid in the caller's namespace
        wait_for_interrupt_stop(tid, deadline)
        regsets.put(tid, thread.regs, thread.xstate, thread.regsets)
        ptrace.set_sigmask(tid, thread.sigmask)


@decided
def lower_priority(child: Child, at: int, deadline: float) -> None:
    """Make the dumping thread idle for the machine, and drop the scratch page.

    Done last: threads cloned later would inherit SCHED_IDLE, and the kernel's
    dump waits for each of them to be scheduled once to reach its exit.  Each
    setting is per thread and best effort.
    """
    pid = child.pid
    base = ptrace.get_regs(pid)
    for call, args in [
        (calls.IDLE_POLICY, calls.IDLE_POLICY.bind(child.scratch + _SCHED_PARAM_AT)),
        (calls.IDLE_NICENESS, calls.IDLE_NICENESS.bind()),
        (calls.IDLE_IO_CLASS, calls.IDLE_IO_CLASS.bind()),
        (calls.CHILD_UNMAP, calls.CHILD_UNMAP.bind(child.scratch)),
    ]:
        ret = syscall(pid, base, at, call.nr, *args, deadline=deadline, guard=child.guard)[0]
        if ret < 0:
            child.notes.append(f"{call.name}: {os.strerror(-ret)}")


