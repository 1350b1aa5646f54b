"""What one snapshot's preflight knows of its target and its host, each
file read once.

The checks used to read /proc again for each question they asked (the
target's cgroups and snapcore's mountinfo about ten times a preflight).
`Facts` reads each file the first time a check asks and keeps the answer:
every check of one preflight judges the same moment, and a check runs as
well against a tree of fixture files (`proc`: the procfs root, "/proc"
unless a test says otherwise; psutil's PROCFS_PATH habit).

Built once per snapshot by the preflight (engine/preflight.py) and carried
on its result.  Never read here, and so read live where they are used:
what must be true at a later moment.  The start time re-checked right
before the window (engine/snapshot.py: the pid not reused since), the
identity at each stop inside the window (engine/identity.py: memory layout,
the `syscall` still there), the process's ids, times and limits after the
fork (linux/taskinfo.py, linux/priority.py: the core's notes say what they
were then), anything about the child, and the memory the dump's controller
watches (engine/controller.py: a change over time).
"""

from __future__ import annotations

import os
from functools import cached_property

from snapcore.linux import cgroups, procstat
from snapcore.linux.procstat import PROC


class Facts:
    def __init__(self, pid: int, proc: str = PROC):
        self.pid, self.proc = pid, proc
        self._thread_states: dict[int, str] = {}

    # The target's own files.  A failed read raises (OSError): the preflight
    # runs inside procfs.reading, which tells a target that exited.

    @cached_property
    def status(self) -> dict[str, str]:
        return procstat.read_status(self.pid, proc=self.proc)

    @cached_property
    def stat(self) -> procstat.Stat:
        return procstat.read_stat(self.pid, proc=self.proc)

    @cached_property
    def limits(self) -> dict[str, tuple[int, int]]:
        return procstat.read_limits(self.pid, proc=self.proc)

    @cached_property
    def tasks(self) -> list[int]:
        return sorted(int(t) for t in os.listdir(f"{self.proc}/{self.pid}/task"))

    @cached_property
    def coredump_filter(self) -> int:
        return procstat.coredump_filter(self.pid, self.proc)

    @cached_property
    def cgroups(self) -> cgroups.Membership:
        return cgroups.Membership(self.pid, self.proc)

    @cached_property
    def root(self) -> str:
        return target_root(self.pid, self.proc)

    def thread_state(self, tid: int) -> str:
        """One thread's state letter; "?" for a thread that ended meanwhile."""
        if tid not in self._thread_states:
            try:
                self._thread_states[tid] = procstat.read_stat(self.pid, tid, self.proc).state
            except OSError:
                self._thread_states[tid] = "?"
        return self._thread_states[tid]

    # The host's, and snapcore's own.

    @cached_property
    def meminfo(self) -> dict[str, int]:
        return procstat.read_meminfo(self.proc)

    @cached_property
    def overcommit(self) -> int:
        """vm.overcommit_memory: 2 is strict (fork charges the commit limit)."""
        return procstat.read_number(f"{self.proc}/sys/vm/overcommit_memory")

    @cached_property
    def ptrace_scope(self) -> int | None:
        """kernel.yama.ptrace_scope; None without Yama (classic ptrace rules)."""
        try:
            return procstat.read_number(f"{self.proc}/sys/kernel/yama/ptrace_scope")
        except OSError:
            return None

    @cached_property
    def capabilities(self) -> int:
        return procstat.capabilities(self.proc)

    @cached_property
    def my_ancestors(self) -> list[int]:
        """snapcore's parent, its parent's parent, ... up to init."""
        return procstat.ancestors(os.getpid(), self.proc)

    def tasks_of_user(self, uid: int) -> int:
        """Tasks (threads included) of real uid `uid`: what RLIMIT_NPROC counts."""
        count = 0
        for entry in os.scandir(self.proc):
            if entry.name.isdigit():
                try:
                    status = procstat.read_status(entry.name, proc=self.proc)
                    if int(status["Uid"].split()[0]) == uid:
                        count += len(os.listdir(f"{self.proc}/{entry.name}/task"))
                except (OSError, KeyError):
                    continue
        return count


def target_root(pid: int, proc: str = PROC) -> str:
    """"" when the target sees the same files as snapcore; else where its root
    is seen from here, /proc/PID/root (a container's mount namespace, a chroot).
    The kernel writes the core in the target's view of the filesystem."""
    try:
        same_ns = os.readlink(f"{proc}/self/ns/mnt") == os.readlink(f"{proc}/{pid}/ns/mnt")
        same_root = os.path.samestat(os.stat("/"), os.stat(f"{proc}/{pid}/root"))
    except OSError:
        return ""
    return "" if same_ns and same_root else f"{proc}/{pid}/root"
