"""The priority of one task (a thread id): idle for the machine, or raised.

sched_setscheduler, setpriority and ioprio_set with 0 act on the calling
thread alone (Linux keeps these per thread): a thread of snapcore may make
itself idle while the rest of snapcore is not.
"""

from __future__ import annotations

import ctypes
import os

from snapcore.linux import arch

IOPRIO_WHO_PROCESS = 1  # a task id, despite the name
IOPRIO_CLASS_IDLE = 3
IOPRIO_CLASS_SHIFT = 13

_libc = ctypes.CDLL(None, use_errno=True)


def _ioprio_set(tid: int, value: int) -> None:
    if _libc.syscall(arch.NR["ioprio_set"], IOPRIO_WHO_PROCESS, tid, value) < 0:
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))


def make_self_idle() -> list[str]:
    """SCHED_IDLE, nice 19 and the idle I/O class for the calling thread, as
    the snapshot child gets for the kernel's dump.  Returns what failed."""
    failed = []
    for name, action in [
        ("sched_setscheduler", lambda: os.sched_setscheduler(0, os.SCHED_IDLE,
                                                             os.sched_param(0))),
        ("setpriority", lambda: os.setpriority(os.PRIO_PROCESS, 0, 19)),
        ("ioprio_set", lambda: _ioprio_set(0, IOPRIO_CLASS_IDLE << IOPRIO_CLASS_SHIFT)),
    ]:
        try:
            action()
        except OSError as exc:
            failed.append(f"{name}: {exc.strerror}")
    return failed


def raise_to_normal(tid: int) -> None:
    """SCHED_OTHER at nice 19: what a starving idle dump is raised to."""
    os.sched_setscheduler(tid, os.SCHED_OTHER, os.sched_param(0))
    os.setpriority(os.PRIO_PROCESS, tid, 19)
