"""What a core's notes say about a process and its threads, from /proc: ids
in the process's own pid namespace, times, pending signals, nice, flags, the
command line's memory and the auxiliary vector.

Read live, right after the window (engine/write.py: gather): the notes say
what the process was at the snapshot, not at the preflight.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from snapcore.linux.procstat import read_stat, read_status


@dataclass
class ThreadFacts:
    sigpend: int  # signals pending for the thread alone
    utime: int  # clock ticks
    stime: int


def thread_facts(pid: int, tid: int) -> ThreadFacts | None:
    """None when the thread is gone.  For the main thread, the times are the
    whole process's (/proc/PID/stat), as the kernel's fill_prstatus gives
    the group leader."""
    try:
        stat = read_stat(pid, None if tid == pid else tid)
        pending = int(read_status(pid, tid)["SigPnd"], 16)
    except (OSError, KeyError):
        return None
    return ThreadFacts(pending, stat.utime, stat.stime)


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
    stat = read_stat(pid)
    nspid = _ns_ids(status, "NSpid") or [pid]
    level = len(nspid)
    ppid = stat.ppid
    try:
        parent = _ns_ids(read_status(ppid), "NSpid") or [ppid] if ppid else []
    except OSError:
        parent = []
    mine = _ns_ids(read_status(os.getpid()), "NSpid") or [os.getpid()]
    return ProcessFacts(
        pid=nspid[-1],
        ppid=parent[level - 1] if len(parent) >= level else 0,
        pgrp=(_ns_ids(status, "NSpgid") or [stat.pgrp])[-1],
        sid=(_ns_ids(status, "NSsid") or [stat.session])[-1],
        uid=int(status["Uid"].split()[0]), gid=int(status["Gid"].split()[0]),
        nice=stat.nice, flags=stat.flags, cutime=stat.cutime, cstime=stat.cstime,
        arg_start=stat.arg_start, arg_end=stat.arg_end,
        sender_pid=mine[-1] if len(mine) == level else 0)


def auxv(pid: int) -> bytes:
    with open(f"/proc/{pid}/auxv", "rb") as f:
        return f.read()
