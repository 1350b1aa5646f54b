"""One reader per /proc file snapcore parses: a task's stat and status, a
process's limits, the machine's meminfo, and one-value files.

Each takes the procfs root (`proc`, "/proc" unless a test points it at a
tree of fixture files: psutil's PROCFS_PATH habit).  Which of these facts a
snapshot reads once and which it must read again at a later moment:
linux/facts.py.
"""

from __future__ import annotations

from typing import NamedTuple

from snapcore.linux.proctext import proc_open, proc_text

PROC = "/proc"
RLIM_INFINITY = (1 << 64) - 1
PF_KTHREAD = 0x00200000  # include/linux/sched.h: the task is a kernel thread

# Field numbers in proc(5)'s stat (1: pid, 2: comm, 3: state ...), by name.
_FIELDS = {
    "state": 3, "ppid": 4, "pgrp": 5, "session": 6, "flags": 9,
    "utime": 14, "stime": 15, "cutime": 16, "cstime": 17, "nice": 19, "num_threads": 20,
    "starttime": 22, "startcode": 26, "endcode": 27, "startstack": 28, "policy": 41,
    "start_data": 45, "end_data": 46, "start_brk": 47, "arg_start": 48, "arg_end": 49,
    "env_start": 50, "env_end": 51,
}


class Stat(NamedTuple):
    """The fields of /proc/PID/stat snapcore reads (proc(5), fs/proc/array.c:
    do_task_stat).  The layout fields (startcode ... env_end) read 0 to a
    reader that may not ptrace the task, and for a task without memory."""

    state: str  # one letter, as in ps
    ppid: int
    pgrp: int  # in the reader's pid namespace
    session: int
    flags: int  # PF_*
    utime: int  # clock ticks: for /proc/PID/stat the whole process's, for a task's its own
    stime: int
    cutime: int  # of the waited-for children
    cstime: int
    nice: int
    num_threads: int
    starttime: int  # clock ticks since boot: with the pid, what pins the process
    startcode: int
    endcode: int
    startstack: int  # where argc is, at the stack's start
    policy: int  # SCHED_*
    start_data: int
    end_data: int
    start_brk: int
    arg_start: int
    arg_end: int
    env_start: int
    env_end: int

    @property
    def kernel_thread(self) -> bool:
        return bool(self.flags & PF_KTHREAD)

    @property
    def fingerprint(self) -> tuple[int, ...]:
        """Where the kernel laid out the program: code, stack, data, heap,
        arguments and environment.  exec builds a new layout (randomized), so
        a change means the program was replaced."""
        return (self.startcode, self.endcode, self.startstack, self.start_data,
                self.end_data, self.start_brk, self.arg_start, self.arg_end,
                self.env_start, self.env_end)


def parse_stat(text: str) -> Stat:
    """comm (field 2) may hold spaces and parentheses: the fields are split
    after the last ')'.  A field an older kernel does not write reads 0."""
    rest = text[text.rindex(")") + 2:].split()
    values = [rest[n - 3] if n - 3 < len(rest) else "0" for n in _FIELDS.values()]
    return Stat(values[0], *(int(v) for v in values[1:]))


def read_stat(pid: int, tid: int | None = None, proc: str = PROC) -> Stat:
    """/proc/PID/stat, or with `tid` that thread's /proc/PID/task/TID/stat."""
    path = f"{proc}/{pid}/stat" if tid is None else f"{proc}/{pid}/task/{tid}/stat"
    return parse_stat(proc_text(path))


def read_status(pid: int | str, tid: int | None = None, proc: str = PROC) -> dict[str, str]:
    """/proc/PID/status (or a thread's) as key -> text ("self" for snapcore's own)."""
    path = f"{proc}/{pid}/status" if tid is None else f"{proc}/{pid}/task/{tid}/status"
    with proc_open(path) as f:
        return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)


def read_limits(pid: int, proc: str = PROC) -> dict[str, tuple[int, int]]:
    """/proc/PID/limits: name ("Max core file size") -> (soft, hard), with
    RLIM_INFINITY for unlimited.  The kernel prints each name in 25 columns
    (fs/proc/base.c: proc_pid_limits), and names hold spaces."""
    found = {}
    with proc_open(f"{proc}/{pid}/limits") as f:
        next(f, None)  # the header
        for line in f:
            values = line[26:].split()
            if len(values) >= 2:
                found[line[:25].rstrip()] = (_limit(values[0]), _limit(values[1]))
    return found


def _limit(text: str) -> int:
    return RLIM_INFINITY if text == "unlimited" else int(text)


def read_meminfo(proc: str = PROC) -> dict[str, int]:
    """/proc/meminfo: name -> bytes (counts, like HugePages_Total, as they are)."""
    found = {}
    with proc_open(f"{proc}/meminfo") as f:
        for line in f:
            key, _, value = line.partition(":")
            words = value.split()
            if words:
                found[key] = int(words[0]) * (1024 if words[1:] == ["kB"] else 1)
    return found


def capabilities(proc: str = PROC) -> int:
    """snapcore's own effective capabilities (CapEff), as a mask."""
    return int(read_status("self", proc=proc).get("CapEff", "0"), 16)


def read_number(path: str, base: int = 10) -> int:
    """A file of one number (/proc/sys/..., coredump_filter in hex)."""
    return int(proc_text(path).strip(), base)


def coredump_filter(pid: int, proc: str = PROC) -> int:
    """Which kinds of mapping a core holds (Documentation/filesystems/proc.rst).
    The preflight's estimate reads the target's once (linux/facts.py);
    snapcore's writer reads the child's, after the fork: the mm flags the
    fork copied are what the core must follow (core/writer.py)."""
    return read_number(f"{proc}/{pid}/coredump_filter", 16)


def ancestors(pid: int, proc: str = PROC) -> list[int]:
    """The pids of the process's parent, its parent's parent, ... up to init."""
    found = []
    while pid > 1:
        try:
            pid = int(read_status(pid, proc=proc)["PPid"])
        except (OSError, KeyError, ValueError):
            break
        found.append(pid)
    return found
