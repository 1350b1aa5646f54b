"""Make the copy-on-write child safe to dump, without ever running the target's code.

The child is a private copy of the target: writing into its memory or changing
its settings cannot touch the target.  Setup is done from inside the child
(injected syscalls) where possible: a process may lower its own priority and
raise its own soft limits without any capability, while doing the same from
outside needs CAP_SYS_RESOURCE or a matching uid.
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass, field

from snapcore.errors import CoreNotWritten, InternalError, NoSuchProcess, NotDumpable, Stage
from snapcore.linux import abi, arch, ptrace
from snapcore.linux.inject import HeldThread, TargetReplaced, syscall, wait_for_interrupt_stop

PROT_READ_WRITE = abi.PROT_READ | abi.PROT_WRITE
MAP_PRIVATE_ANONYMOUS = abi.MAP_PRIVATE | abi.MAP_ANONYMOUS
SCHED_IDLE = 5
PRIO_PROCESS = 0
IOPRIO_WHO_PROCESS = 1
IOPRIO_CLASS_IDLE = 3
RLIMIT_CORE = 4
CLOSE_RANGE_ALL = (1 << 32) - 1

# Layout of the scratch page mapped into the child.
_SIGACTION_AT = 0  # struct kernel_sigaction: handler, flags, restorer, mask (all 0: SIG_DFL)
_SCHED_PARAM_AT = 64  # struct sched_param {0}
_RLIMIT_AT = 128  # struct rlimit {soft, hard}
_PATH_AT = 256  # the staging directory, NUL-terminated


# A thread of the child that shares everything with it, like a pthread.
CLONE_THREAD_FLAGS = (abi.CLONE_VM | abi.CLONE_FS | abi.CLONE_FILES | abi.CLONE_SIGHAND
                      | abi.CLONE_THREAD | abi.CLONE_SYSVSEM)
PR_GET_DUMPABLE = abi.PR_GET_DUMPABLE
PR_SET_DUMPABLE = abi.PR_SET_DUMPABLE
PR_SET_NAME = abi.PR_SET_NAME

# What runs inside the child, pointers as 0: the seccomp preflight evaluates
# exactly these (plus the CLONE_THREAD clone when there are threads).
CHILD_SYSCALLS = [
    ("munmap", (0, arch.PAGE_SIZE)),  # the fork thread's page: not the target's
    ("mmap", (0, arch.PAGE_SIZE, PROT_READ_WRITE, MAP_PRIVATE_ANONYMOUS, -1, 0)),
    ("prlimit64", (0, RLIMIT_CORE, 0, 0)),
    ("rt_sigaction", (signal.SIGABRT, 0, 0, arch.KERNEL_SIGSET_SIZE)),
    ("chdir", (0,)),
    ("prctl", (PR_SET_NAME, 0)),
    ("prctl", (PR_GET_DUMPABLE,)),
    ("prctl", (PR_SET_DUMPABLE, 1)),
    ("close_range", (0, CLOSE_RANGE_ALL, 0)),
    ("sched_setscheduler", (0, SCHED_IDLE, 0)),
    ("setpriority", (PRIO_PROCESS, 0, 19)),
    ("ioprio_set", (IOPRIO_WHO_PROCESS, 0, IOPRIO_CLASS_IDLE << 13)),
    ("munmap", (0, arch.PAGE_SIZE)),
]


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
    guard: object = None  # seccomp.Guard: the child inherited the fork thread's filters
    page: int = 0  # the fork thread's code page, which the child has a copy of
    # keeper() -> False once the child's parent, the fork thread, has ended
    # (the target exec'd or exited): the dump is then abandoned at once.
    keeper: object = None
    # The fork thread, which reaps the child's end the moment snapcore has
    # collected it (ready() before, reap() after; engine/fork.py: Parent):
    # meanwhile a __WALL wait of the target could see it.
    parent: object = None
    oom_kills_before: int = field(default_factory=lambda: oom_kills())

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


_NAME_AT = 512  # the target's name, NUL-terminated (at most 15 bytes + NUL)


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
    required = [
        ("prlimit64", (0, RLIMIT_CORE, scratch + _RLIMIT_AT, 0)),
        ("rt_sigaction", (signal.SIGABRT, scratch + _SIGACTION_AT, 0,
                          arch.KERNEL_SIGSET_SIZE)),
    ]
    if staging:
        required.append(("chdir", (scratch + _PATH_AT,)))
    for syscall_name, args in required:
        ret = call(syscall_name, *args)
        if ret < 0:
            raise CoreNotWritten(f"{syscall_name} in the snapshot child failed: "
                                 f"{os.strerror(-ret)}", stage=Stage.CHILD)
    # The forking thread may be a worker with its own name; the core's
    # process name (NT_PRPSINFO) and core_pattern's %e come from the child.
    if call("prctl", PR_SET_NAME, scratch + _NAME_AT) < 0:
        child.notes.append("could not name the child after the target")
    _close_files(pid, call)
    child.scratch = scratch
    _oom_first(child)


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
    if child.page and call("munmap", child.page, arch.PAGE_SIZE) < 0:
        child.notes.append("the fork thread's page could not be unmapped from the child: "
                           "the core shows one page more than the process has")


def _injector(child: Child, at: int, deadline: float):
    """call(name, *args) -> the return of that syscall run in the stopped child,
    from the registers it has now (it waits in the event stop it was born in:
    engine/forkthread.py took that stop to give it PTRACE_O_EXITKILL)."""
    base = ptrace.get_regs(child.pid)

    def call(syscall_name: str, *args: int) -> int:
        return syscall(child.pid, base, at, arch.NR[syscall_name], *args, deadline=deadline,
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
    if call("prctl", PR_GET_DUMPABLE) != 0:
        return
    if not allow_undumpable:
        raise NotDumpable("the process made itself non-dumpable (PR_SET_DUMPABLE 0): "
                          "it keeps its memory out of cores", "respect that",
                          stage=Stage.CHILD)
    if writer == "snapcore":
        return  # snapcore reads the child as root: the flag needs no change
    # Overridden: only the child is made dumpable again (a process may set
    # its own flag back to 1 without privilege); the target keeps its 0.
    if call("prctl", PR_SET_DUMPABLE, 1) < 0:
        child.notes.append("could not make the child dumpable: the kernel will write no "
                           "core")


def _scratch_page(pid: int, call, core_hard: int, staging: str | None, name: str) -> int:
    """Map a page in the child and fill it with the arguments its setup calls
    point to (the child is a private copy: this touches nothing of the target)."""
    scratch = call("mmap", 0, arch.PAGE_SIZE, PROT_READ_WRITE, MAP_PRIVATE_ANONYMOUS, -1, 0)
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
    ret = call("close_range", 0, CLOSE_RANGE_ALL, 0)
    if ret == 0:
        return
    for fd in sorted(int(n) for n in os.listdir(f"/proc/{pid}/fd")):  # kernels before 5.9
        call("close", fd)


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
        ret, events = syscall(pid, base, at, arch.NR["clone"], CLONE_THREAD_FLAGS, sp, 0, 0, 0,
                              deadline=deadline, guard=child.guard)
        born = [msg for event, msg in events if event == ptrace.EVENT_CLONE]
        if ret < 0 or not born:
            raise InternalError(f"could not recreate thread {thread.tid} in the snapshot "
                                f"child ({os.strerror(-ret) if ret < 0 else 'no event'})",
                                stage=Stage.CHILD)
        tid = born[0]
        child.threads[tid] = thread.tid
        child.ns_tids[tid] = ret  # clone returns the tid in the caller's namespace
        wait_for_interrupt_stop(tid, deadline)
        ptrace.set_regs(tid, thread.regs)
        if thread.xstate:
            ptrace.set_xstate(tid, thread.xstate)
        ptrace.set_sigmask(tid, thread.sigmask)


def lower_priority(child: Child, at: int, deadline: float) -> None:
    """Make the dumping thread idle for the machine, and drop the scratch page.

    Done last: threads cloned later would inherit SCHED_IDLE, and the kernel's
    dump waits for each of them to be scheduled once to reach its exit.  Each
    setting is per thread and best effort.
    """
    pid = child.pid
    base = ptrace.get_regs(pid)
    for name, args in [
        ("sched_setscheduler", (0, SCHED_IDLE, child.scratch + _SCHED_PARAM_AT)),
        ("setpriority", (PRIO_PROCESS, 0, 19)),
        ("ioprio_set", (IOPRIO_WHO_PROCESS, 0, IOPRIO_CLASS_IDLE << 13)),
        ("munmap", (child.scratch, arch.PAGE_SIZE)),
    ]:
        ret = syscall(pid, base, at, arch.NR[name], *args, deadline=deadline,
                      guard=child.guard)[0]
        if ret < 0:
            child.notes.append(f"{name}: {os.strerror(-ret)}")


