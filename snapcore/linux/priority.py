"""CPU and I/O priority of a task, set from outside, and how starved it is.

A dump runs at the lowest priority the machine has (SCHED_IDLE, I/O class
idle) and is stepped up, never above the target's own priority, when it would
not finish in time (engine/controller.py).  Each setting is per thread:
sched_setscheduler(2), setpriority(2) with PRIO_PROCESS and ioprio_set(2)
with IOPRIO_WHO_PROCESS all take a thread id.
"""

from __future__ import annotations

import ctypes
import os
from typing import NamedTuple

from snapcore.linux import arch
from snapcore.linux.procstat import read_stat

IOPRIO_WHO_PROCESS = 1
IOPRIO_CLASS_BE, IOPRIO_CLASS_IDLE = 2, 3
SCHED_POLICIES = {0: "normal", 1: "fifo", 2: "rr", 3: "batch", 5: "idle", 6: "deadline"}

_libc = ctypes.CDLL(None, use_errno=True)


class Level(NamedTuple):
    """One step of a dump's priority: a scheduling class and nice, an I/O class."""

    name: str
    idle: bool  # SCHED_IDLE (nice is then irrelevant) and I/O class idle
    nice: int  # SCHED_OTHER's nice, when not idle
    io_level: int  # best-effort I/O level 0 (high) to 7 (low), when not idle


IDLE = Level("idle", True, 19, 7)


def level_for_nice(nice: int) -> Level:
    # The kernel's default best-effort level follows nice the same way
    # (task_nice_ioprio(): (nice + 20) / 5).
    return Level(f"nice {nice}", False, nice, (nice + 20) // 5)


def apply(tid: int, level: Level) -> None:
    """Put thread `tid` at `level`; raises OSError (ESRCH, EPERM)."""
    if level.idle:
        os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))
        _ioprio_set(tid, IOPRIO_CLASS_IDLE, 0)
        return
    # From SCHED_IDLE to SCHED_OTHER first: nice means nothing to an idle task.
    os.sched_setscheduler(tid, os.SCHED_OTHER, os.sched_param(0))
    os.setpriority(os.PRIO_PROCESS, tid, level.nice)
    _ioprio_set(tid, IOPRIO_CLASS_BE, level.io_level)


def _ioprio_set(tid: int, io_class: int, level: int) -> None:
    ret = _libc.syscall(arch.NR["ioprio_set"], IOPRIO_WHO_PROCESS, tid,
                        (io_class << 13) | level)
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def own_level(pid: int) -> tuple[str, int]:
    """The target's scheduling policy name and nice: a dump is never raised
    above them.  Read live when the dump starts, after the fork: what the
    target runs at then.  A target that exited right after the fork (its
    child's dump goes on) has none: the dump then stays idle."""
    try:
        stat = read_stat(pid)
    except (FileNotFoundError, ProcessLookupError):
        return "idle", 19
    return SCHED_POLICIES.get(stat.policy, "other"), stat.nice


def waited(tid: int) -> tuple[float, float]:
    """Seconds thread `tid` has run on a CPU, and waited on a run queue
    (/proc/PID/schedstat: what schedstats count, in nanoseconds)."""
    try:
        with open(f"/proc/{tid}/schedstat") as f:
            ran, waited_ns, _slices = f.read().split()
    except (OSError, ValueError):
        return 0.0, 0.0
    return int(ran) / 1e9, int(waited_ns) / 1e9


def io_pressure() -> float:
    """The share of the last 10 s some task waited for I/O (PSI), 0 to 1;
    0 where the kernel has no pressure stall information."""
    try:
        with open("/proc/pressure/io") as f:
            some = f.readline().split()
    except OSError:
        return 0.0
    return float(dict(kv.split("=") for kv in some[1:])["avg10"]) / 100
