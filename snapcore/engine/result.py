"""What a snapshot gives back, and the limits it runs under.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from snapcore import bounds

if TYPE_CHECKING:  # the command layer imports this module for THREAD_MODES alone
    from snapcore.core import core_pattern
    from snapcore.linux.procfs import Target


@dataclass
class Snapshot:
    target: Target
    core_path: Path | None
    core_size: int
    pause: dict  # seconds: capture, syscall (the fork), release, pause (their sum)
    reap_pause: float
    dump_seconds: float
    threads: int
    thread_map: list[dict]  # per thread: target tid, name, LWP in the core
    child_pid: int
    core_pattern: core_pattern.CorePattern
    taken_at: datetime
    notes: list[str] = field(default_factory=list)
    checks: list[dict] = field(default_factory=list)  # the preflight's verdicts
    # Each step of the dump's priority: at_s, from, to, why (engine/controller.py).
    priority_steps: list[dict] = field(default_factory=list)
    sidecar_path: Path | None = None  # the record beside the core
    core_estimate: int = 0  # what the preflight expected the core to take on disk
    core_apparent: int = 0  # and its size with holes
    core_allocated: int = 0  # what the stored core takes on disk (core_size: with holes)
    # MADV_DONTFORK regions (absent from the child, so from the core) and
    # MADV_WIPEONFORK ones (zeros in the core): {"start", "end", "kind"}
    regions_missing: list[dict] = field(default_factory=list)
    writer: str = "kernel"  # who wrote the core: "kernel" or "snapcore"
    writer_reason: str = ""  # why that writer (the preflight's writer check)
    streamed: bool = False  # written to a stream (standard output): no file, no record
    program: str = ""  # what the rate limit counts it as (ratelimit.program)
    # The target's executable, read through /proc/PID/exe while it ran: its
    # build-id ("" : not read), and with keep_exe a descriptor on it, for gdb
    # (target.exe is the target's own name for it, which in another mount
    # namespace may name nothing or another file here).  The caller closes it.
    exe_build_id: str | None = ""
    exe_fd: int | None = None

    @property
    def pause_ms(self) -> float:
        return self.pause["pause"] * 1000.0


THREAD_MODES = ("all", "main")
WRITERS = ("auto", "kernel", "snapcore")


@dataclass
class Output:
    """Where the core goes: the output directory, or a stream (standard
    output) when `stream` is a descriptor; `compress`: zstandard."""

    directory: Path
    stream: int | None = None
    compress: bool = False


@dataclass
class DumpLimits:
    deadline: float = 30.0  # step the dump up to have the core by then; 0: never
    max_dump_time: float = 0.0  # kill a dump that lasts longer; 0: no limit
    progress: object = None  # (bytes written, bytes expected) -> None, while dumping
    expected: int = 0  # the preflight's estimate of the core's size
    # controller.MemoryWatch, begun just before the fork: the copies start the
    # moment the target is released, long before the dump does.
    memory: object = None

    def __post_init__(self) -> None:
        """Finite numbers in range (BadInput else), whoever made them."""
        bounds.check("dump_deadline", self.deadline)
        bounds.check("max_dump_time", self.max_dump_time)
