"""Kill a copy of snapcore's and free its memory at once.

A process killed with SIGKILL frees its memory in its own exit, which on a
busy machine may take tens of milliseconds; meanwhile it has no mm for the
OOM killer to see (exit_mm) and is not marked an OOM victim, so an OOM under
the target's memory cgroup in that time finds the target alone.
process_mrelease (Linux 5.15+, mm/oom_kill.c) frees a dying process's
memory in the caller, at once, as the OOM reaper would.
"""

from __future__ import annotations

import ctypes
import errno
import os
import signal
import time

from snapcore.linux import arch

_libc = ctypes.CDLL(None, use_errno=True)
# A core dump in progress (interrupted by the SIGKILL) still holds the memory
# for a moment: process_mrelease answers EINVAL until it has let go.
_FOR = 0.05  # seconds to keep asking (a spin: the moment between the two is short)


def kill_and_release(pid: int) -> None:
    """SIGKILL `pid` and free its memory now where the kernel can; its end
    is still to be collected by the caller."""
    try:
        fd = os.pidfd_open(pid)
    except OSError:
        return  # gone already
    try:
        signal.pidfd_send_signal(fd, signal.SIGKILL)
        until = time.monotonic() + _FOR
        while time.monotonic() < until:
            if _libc.syscall(arch.NR["process_mrelease"], fd, 0) == 0:
                return
            if ctypes.get_errno() != errno.EINVAL:
                return  # ESRCH: its memory is gone; ENOSYS: an older kernel
    except OSError:
        pass  # ended meanwhile
    finally:
        os.close(fd)
