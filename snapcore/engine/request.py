"""What the operator asks of one snapshot, every option once: the command
line builds a Request, and every phase, from the preflight's checks to the
writer, reads the same object.  A library caller makes one too; it cannot
set the core's destination in one place and its compression in another.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from snapcore import bounds
from snapcore.errors import BadInput, Stage

THREAD_MODES = ("all", "main")
WRITERS = ("auto", "kernel", "snapcore")


@dataclass(frozen=True)
class Request:
    output_dir: Path  # where cores and their records go (and the rate limit's state)
    writer: str = "auto"  # WRITERS: who writes the core; auto lets the preflight choose
    # A descriptor (standard output) the core is written to instead of a file
    # in output_dir: snapcore's writer only, and no record.
    stream: int | None = None
    compress: bool = False  # zstandard: CORE.zst
    compress_ratio: float = 1.0  # the disk check's guess at what compressing saves
    threads: str = "all"  # THREAD_MODES: hold and dump every thread, or the main one
    force: tuple[str, ...] = ()  # checks to go ahead despite (verdicts.FORCEABLE)
    timeout: float = 2.0  # seconds to wait for the target's threads to stop
    min_free: str = "10%"  # free space to leave on the output filesystem
    max_per_hour: int = 4  # snapshots of one program per hour; 0: no limit
    dump_deadline: float = 30.0  # step the dump up to have the core by then; 0: never
    max_dump_time: float = 0.0  # abandon a dump that lasts longer; 0: no limit
    reason: str = ""  # the operator's, kept in the record
    trigger: str = ""  # what fired it (watch's condition), kept in the record
    keep_exe: bool = False  # the Snapshot keeps a descriptor on the executable, for gdb
    progress: Callable[[int, int], None] | None = None  # (written, expected), while dumping
    clock: Callable[[], float] = time.time  # the rate limit's

    def __post_init__(self) -> None:
        """A finite number in range for each (BadInput else): a library
        caller's nan or infinity would reach the waits with the target held."""
        for setting in ("timeout", "max_per_hour", "compress_ratio", "dump_deadline",
                        "max_dump_time"):
            bounds.check(setting, getattr(self, setting))
        bounds.min_free(self.min_free)
        for setting, allowed in (("writer", WRITERS), ("threads", THREAD_MODES)):
            if getattr(self, setting) not in allowed:
                raise BadInput(f"invalid {setting} {getattr(self, setting)!r}",
                               f"give one of {', '.join(allowed)}", stage=Stage.USAGE,
                               setting=setting)
        object.__setattr__(self, "force", tuple(self.force))

    @property
    def to_stdout(self) -> bool:
        return self.stream is not None
