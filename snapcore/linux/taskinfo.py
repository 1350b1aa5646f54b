"""What a core's notes say about a process and its threads, from /proc: ids
in the process's own pid namespace, times, pending signals, nice, flags, the
command line's memory and the auxiliary vector.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from snapcore.linux.procfs import _stat_fields, read_status
from snapcore.linux.proctext import proc_open

# Indexes into _stat_fields (field N of proc(5)'s stat is index N - 3).
_PPID, _PGRP, _SESSION, _FLAGS = 1, 2, 3, 6
_UTIME, _STIME, _CUTIME, _CSTIME, _NICE = 11, 12, 13, 14, 16
_ARG_START, _ARG_END = 45, 46


@dataclass
class ThreadFacts:
    sigpend: int  # signals pending for the thread alone
    utime: int  # clock ticks
    stime: int


def thread_facts(pid: int, tid: int) -> ThreadFacts | None:
    """None when the thread is gone.  For the main thread, the times are the
    whole process's (/proc/PID/stat), as the kernel's fill_prstatus gives
    the group leader."""
    path = f"/proc/{pid}/stat" if tid == pid else f"/proc/{pid}/task/{tid}/stat"
    try:
        stat = _stat_fields(path)
        with proc_open(f"/proc/{pid}/task/{tid}/status") as f:
            pending = next(int(line.split()[1], 16) for line in f if line.startswith("SigPnd:"))
    except (OSError, StopIteration):
        return None
    return ThreadFacts(pending, int(stat[_UTIME]), int(stat[_STIME]))


@dataclass
class ProcessFacts:
    pid: int  # these four in the process's own pid namespace
    ppid: int  # 0 when the parent is outside it
    pgrp: int
    sid: int
    uid: int  # real
    gid: int
    nice: int
    flags: int
    cutime: int
    cstime: int
    arg_start: int
    arg_end: int
    sender_pid: int  # snapcore's pid as the process's namespace sees it (0: not at all)


def _ns_ids(status: dict[str, str], key: str) -> list[int]:
    return [int(x) for x in status.get(key, "").split()]


def process_facts(pid: int) -> ProcessFacts:
    status = read_status(pid)
    stat = _stat_fields(f"/proc/{pid}/stat")
    nspid = _ns_ids(status, "NSpid") or [pid]
    level = len(nspid)
    ppid = int(stat[_PPID])
    try:
        parent = _ns_ids(read_status(ppid), "NSpid") or [ppid] if ppid else []
    except OSError:
        parent = []
    mine = _ns_ids(read_status(os.getpid()), "NSpid") or [os.getpid()]
    return ProcessFacts(
        pid=nspid[-1],
        ppid=parent[level - 1] if len(parent) >= level else 0,
        pgrp=(_ns_ids(status, "NSpgid") or [int(stat[_PGRP])])[-1],
        sid=(_ns_ids(status, "NSsid") or [int(stat[_SESSION])])[-1],
        uid=int(status["Uid"].split()[0]), gid=int(status["Gid"].split()[0]),
        nice=int(stat[_NICE]), flags=int(stat[_FLAGS]),
        cutime=int(stat[_CUTIME]), cstime=int(stat[_CSTIME]),
        arg_start=int(stat[_ARG_START]), arg_end=int(stat[_ARG_END]),
        sender_pid=mine[-1] if len(mine) == level else 0)


def auxv(pid: int) -> bytes:
    with open(f"/proc/{pid}/auxv", "rb") as f:
        return f.read()
