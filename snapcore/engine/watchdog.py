"""Keeps an idle-priority dump from starving forever on a busy machine, and
puts a hard bound on it.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from snapcore.linux import priority

if TYPE_CHECKING:  # child.py uses this module
    from snapcore.engine.child import Child


STALL_PROGRESS = 1 << 20  # growing less than this in --stall-timeout is a stall


@dataclass
class Watchdog:
    """Keeps an idle-priority dump from starving forever on a busy machine.

    A SCHED_IDLE child on saturated CPUs may never run, and while it lives the
    target pays for every page it rewrites.  If the core has not grown by
    STALL_PROGRESS for `stall_timeout` seconds, the dumping thread is raised to SCHED_OTHER at
    nice 19; if the dump lasts longer than `max_dump_time`, the child is killed
    and the snapshot fails.  0 disables either.
    """

    written: object  # () -> bytes of the core on disk so far
    stall_timeout: float = 10.0
    max_dump_time: float = 0.0
    escalated_after: float | None = None  # seconds into the dump, when it happened
    timed_out: bool = False
    progress: object = None  # (bytes written, bytes expected) -> None, for a progress bar
    expected: int = 0
    # The task that writes the core, by thread id: the child's (the kernel
    # writes it in the child's context), or snapcore's writer thread.  0: the child.
    task: int = 0

    def start(self) -> None:
        self.started = self.last_growth = time.monotonic()
        self.last_size = 0

    def tick(self, child: Child) -> None:
        now = time.monotonic()
        size = self.written()
        if self.progress is not None:
            self.progress(size, self.expected)
        # A starved idle task still gets crumbs of CPU: a few KiB now and then
        # is a stall too.
        if size >= self.last_size + STALL_PROGRESS:
            self.last_size, self.last_growth = size, now
        if (self.stall_timeout and self.escalated_after is None
                and now - self.last_growth >= self.stall_timeout):
            self.escalated_after = now - self.started
            try:
                priority.raise_to_normal(self.task or child.pid)
                child.notes.append(f"the dump stalled; raised to normal priority at nice 19 "
                                   f"after {self.escalated_after:.1f} s")
            except OSError as exc:
                child.notes.append(f"the dump stalled; could not raise its priority: "
                                   f"{exc.strerror}")
        if self.max_dump_time and now - self.started > self.max_dump_time \
                and not self.timed_out:
            self.timed_out = True
            os.kill(child.pid, signal.SIGKILL)
