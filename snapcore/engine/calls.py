"""Every syscall snapcore injects, as data: who runs it, which call, and the
arguments a seccomp filter could look at.

The injectors (engine/fork.py, forkthread.py, keeper.py, child.py,
leftovers.py) take the number and the constant arguments of each call they
run from here, and fill in only what is known when it runs (ANY: an
address, a pid); the preflight (engine/checks_seccomp.py) and the window's
choice of runner (fork.choose_runner) judge the same entries against the
target's filters, ANY as 0.  tests/test_calls.py runs the real injectors
with a recording seccomp.Guard and compares what they ran with this table.

Who: "target" is the runner, a thread of the target; "fork thread" the
thread snapcore adds (engine/forkthread.py); "child" the snapshot child.
All three run under the runner's filters: clone and fork copy a task's
filters to the task they make (kernel/fork.c: copy_seccomp).
"""

from __future__ import annotations

import signal
from dataclasses import dataclass

from snapcore.linux import abi, arch

ANY = None  # an argument known only when the call runs: judged as 0

TARGET, FORK_THREAD, CHILD = "target", "fork thread", "child"

# When a call runs (the recording test runs snapshots that make each kind
# that can be made while snapcore lives).
ALWAYS = "always"
KERNEL_WRITER = "with the kernel's writer"
STAGING = "with the kernel's writer and a staging directory (a relative core_pattern)"
THREADS = "with the kernel's writer, every thread held, and more than one"
UNDUMPABLE = "a target that made itself undumpable, forced"
LEFTOVER = "a page a killed snapcore left (engine/leftovers.py)"
RECORDED = "a zombie an earlier snapshot recorded (engine/leftovers.py)"
SNAPCORE_DIES = "only if snapcore dies: the code page's own loop"
OLD_KERNEL = "a kernel without close_range (before 5.9)"

PAGE = arch.PAGE_SIZE

# The fork thread: a thread of the target's in all but its stack and code
# (CLONE_THREAD with exit signal 0; its own, empty, SysV undo list).
THREAD_FLAGS = abi.CLONE_VM | abi.CLONE_FS | abi.CLONE_FILES | abi.CLONE_SIGHAND | \
    abi.CLONE_THREAD
CHILD_FLAGS = 0  # the snapshot child: a plain fork, exit signal 0
# The fork thread's code page, written through /proc/PID/mem: never writable.
PAGE_PROT = abi.PROT_READ | abi.PROT_EXEC
PAGE_FLAGS = abi.MAP_PRIVATE | abi.MAP_ANONYMOUS
LOOP_WAIT = abi.WALL | abi.WNOTHREAD  # the page's own loop (arch.FORK_THREAD_CODE)
REAP = abi.WALL | abi.WNOTHREAD | abi.WNOHANG  # the fork thread's own children, never blocking
# A thread of the child that shares everything with it, like a pthread.
CLONE_THREAD_FLAGS = THREAD_FLAGS | abi.CLONE_SYSVSEM
SCRATCH_PROT = abi.PROT_READ | abi.PROT_WRITE
SCRATCH_FLAGS = abi.MAP_PRIVATE | abi.MAP_ANONYMOUS
CLOSE_RANGE_ALL = (1 << 32) - 1
IDLE_NICE = 19
IDLE_IO = abi.IOPRIO_CLASS_IDLE << abi.IOPRIO_CLASS_SHIFT


@dataclass(frozen=True)
class Call:
    who: str
    name: str
    args: tuple  # constants, ANY where the value is the moment's
    when: str = ALWAYS
    required: bool = True  # False: a refusal skips it (the preflight does not judge it)

    @property
    def nr(self) -> int:
        return arch.NR[self.name]

    def bind(self, *values: int) -> tuple[int, ...]:
        """The arguments, each ANY filled from `values` in order."""
        if len(values) != self.args.count(ANY):
            raise ValueError(f"{self.name}: {len(values)} values for "
                             f"{self.args.count(ANY)} open arguments")
        it = iter(values)
        return tuple(next(it) if a is ANY else a for a in self.args)

    def judged(self) -> tuple[int, ...]:
        """The arguments the preflight judges: ANY as 0."""
        return tuple(0 if a is ANY else a for a in self.args)

    def matches(self, who: str, nr: int, args: tuple) -> bool:
        """Whether a call `who` ran is this one: its number, and each constant."""
        return who == self.who and nr == self.nr and len(args) == len(self.args) and \
            all(a is ANY or a == v for a, v in zip(self.args, args))


# The runner, from the target's own `syscall` (or a landing: linux/landing.py).
MAP_PAGE = Call(TARGET, "mmap", (0, PAGE, PAGE_PROT, PAGE_FLAGS, -1, 0))
MAKE_THREAD = Call(TARGET, "clone", (THREAD_FLAGS, ANY, 0, 0, 0))  # its stack: the page's cell
UNMAP_PAGE = Call(TARGET, "munmap", (ANY, PAGE), LEFTOVER)  # a stale page; its own, failed
REAP_RECORDED = Call(TARGET, "wait4", (ANY, 0, abi.WALL | abi.WNOHANG, 0), RECORDED)
# The fork thread, from its page.
FORK = Call(FORK_THREAD, "clone", (CHILD_FLAGS, 0, 0, 0, 0))
DONTFORK = Call(FORK_THREAD, "madvise", (ANY, PAGE, abi.MADV_DONTFORK))
REAP_OWN = Call(FORK_THREAD, "wait4", (-1, 0, REAP, 0))
LOOP_REAP = Call(FORK_THREAD, "wait4", (-1, 0, LOOP_WAIT, 0), SNAPCORE_DIES)
END_UNMAP = Call(FORK_THREAD, "munmap", (ANY, PAGE))
END_EXIT = Call(FORK_THREAD, "exit", (0,))
NAME_THREAD = Call(FORK_THREAD, "prctl", (abi.PR_SET_NAME, ANY), required=False)
# The child, from the target's `syscall` (its copy).
CHILD_UNMAP = Call(CHILD, "munmap", (ANY, PAGE))  # the fork thread's page; the scratch page
SCRATCH = Call(CHILD, "mmap", (0, PAGE, SCRATCH_PROT, SCRATCH_FLAGS, -1, 0), KERNEL_WRITER)
CORE_LIMIT = Call(CHILD, "prlimit64", (0, abi.RLIMIT_CORE, ANY, 0), KERNEL_WRITER)
ABORT_DEFAULT = Call(CHILD, "rt_sigaction", (signal.SIGABRT, ANY, 0, arch.KERNEL_SIGSET_SIZE),
                     KERNEL_WRITER)
CHDIR = Call(CHILD, "chdir", (ANY,), STAGING)
NAME_CHILD = Call(CHILD, "prctl", (abi.PR_SET_NAME, ANY), KERNEL_WRITER)
GET_DUMPABLE = Call(CHILD, "prctl", (abi.PR_GET_DUMPABLE,))
SET_DUMPABLE = Call(CHILD, "prctl", (abi.PR_SET_DUMPABLE, 1), UNDUMPABLE)
CLOSE_ALL = Call(CHILD, "close_range", (0, CLOSE_RANGE_ALL, 0))
IDLE_POLICY = Call(CHILD, "sched_setscheduler", (0, abi.SCHED_IDLE, ANY), KERNEL_WRITER)
IDLE_NICENESS = Call(CHILD, "setpriority", (abi.PRIO_PROCESS, 0, IDLE_NICE), KERNEL_WRITER)
IDLE_IO_CLASS = Call(CHILD, "ioprio_set", (abi.IOPRIO_WHO_PROCESS, 0, IDLE_IO), KERNEL_WRITER)
CLOSE_ONE = Call(CHILD, "close", (ANY,), OLD_KERNEL)  # close_range's fallback
RECREATE_THREAD = Call(CHILD, "clone", (CLONE_THREAD_FLAGS, ANY, 0, 0, 0), THREADS)

# In the order the preflight reports the first refusal in.
TABLE = (MAP_PAGE, MAKE_THREAD, UNMAP_PAGE, REAP_RECORDED, FORK, DONTFORK, REAP_OWN,
         LOOP_REAP, END_UNMAP, END_EXIT, NAME_THREAD, CHILD_UNMAP, SCRATCH, CORE_LIMIT,
         ABORT_DEFAULT, CHDIR, NAME_CHILD, GET_DUMPABLE, SET_DUMPABLE, CLOSE_ALL,
         IDLE_POLICY, IDLE_NICENESS, IDLE_IO_CLASS, CLOSE_ONE, RECREATE_THREAD)


def planned(threads: int) -> list[Call]:
    """The calls a snapshot of a process with `threads` threads may inject,
    each of which its filters must let run: every required call of the
    table, the recreated threads' clone only when there are other threads."""
    return [c for c in TABLE if c.required and (c.when != THREADS or threads > 1)]


def of(who: str, nr: int, args: tuple) -> Call | None:
    """The table's entry for a call `who` ran, or None."""
    return next((c for c in TABLE if c.matches(who, nr, args)), None)
