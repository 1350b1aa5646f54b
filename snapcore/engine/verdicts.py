"""What a preflight check says: a verdict (ok, warn, refuse), a reason and a
fix; which checks exist, the exit code of each refusal, and which ones the
operator may override.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from snapcore import bounds
from snapcore.errors import ExitCode, SnapcoreError, Stage
if TYPE_CHECKING:  # the command layer imports this module for the check names alone
    from snapcore.core import core_pattern
    from snapcore.linux.procfs import Target
    from snapcore.linux import landing

OK, WARN, REFUSE = "ok", "warn", "refuse"


# name -> (exit code of its refusal, whether --force may override it)
CHECKS = {
    "permission": (ExitCode.PERMISSION, False),
    "tracer": (ExitCode.BUSY, False),
    "state": (ExitCode.UNSUPPORTED, False),
    "seccomp": (ExitCode.UNSUPPORTED, False),
    "userfaultfd": (ExitCode.UNSUPPORTED, False),
    "dumpable": (ExitCode.CORE_NOT_WRITTEN, True),
    "writer": (ExitCode.USAGE, False),
    "core-pattern": (ExitCode.CORE_NOT_WRITTEN, False),
    "core-limit": (ExitCode.CORE_NOT_WRITTEN, False),
    "output-dir": (ExitCode.OUTPUT, True),
    "staging": (ExitCode.OUTPUT, False),
    "disk": (ExitCode.OUTPUT, True),
    "memory": (ExitCode.MEMORY, True),
    "tasks": (ExitCode.LIMITS, True),
    "rate-limit": (ExitCode.RATE_LIMITED, True),
}


FORCEABLE = tuple(name for name, (_, forceable) in CHECKS.items() if forceable)


@dataclass
class Check:
    name: str
    verdict: str
    reason: str
    fix: str = ""
    setting: str = ""  # the option the fix is about, by name (cli/render.py: its flag)

    @property
    def exit_code(self) -> ExitCode:
        return CHECKS[self.name][0]

    @property
    def forceable(self) -> bool:
        return CHECKS[self.name][1]


@dataclass
class Options:
    output_dir: Path
    min_free: str = "10%"  # free space to leave on the output filesystem
    max_per_hour: int = 4  # 0: no limit
    timeout: float = 2.0
    clock: object = time.time
    writer: str = "auto"  # auto, kernel or snapcore (result.WRITERS)
    to_stdout: bool = False  # the core goes to standard output, not output_dir
    compress: bool = False
    compress_ratio: float = 1.0  # the disk check's guess at what --compress saves

    def __post_init__(self) -> None:
        """A finite number in range for each (BadInput else): a library
        caller's nan or infinity would reach the waits with the target held."""
        for setting in ("timeout", "max_per_hour", "compress_ratio"):
            bounds.check(setting, getattr(self, setting))
        bounds.min_free(self.min_free)


@dataclass
class Preflight:
    target: Target
    checks: list[Check] = field(default_factory=list)
    core_estimate: int = 0  # bytes on disk (allocated)
    core_apparent: int = 0  # the file's size, holes included
    core_pattern: core_pattern.CorePattern | None = None
    syscall_at: int = 0  # the `syscall` instruction injections will use
    stale_pages: list[int] = field(default_factory=list)  # left by a killed snapcore
    sites: landing.Sites | None = None  # of the target's own code (linux/landing.py)
    fingerprint: tuple = ()  # target.mm_fingerprint: its program, to notice an exec
    regions_missing: list[dict] = field(default_factory=list)
    writer: str = "kernel"  # who will write the core: "kernel" or "snapcore"
    writer_reason: str = ""
    # What the memory check found free for copy-on-write copies: the lesser of
    # MemAvailable and the room under the tightest memory cgroup limit (that
    # limit's file, "" without one).  The dump's controller keeps to it.
    memory_room: int = 0
    memory_worst: int = 0  # the most the copies can cost: the copy-on-write worst case
    memory_limit_file: str = ""

    def add(self, name: str, verdict: str, reason: str, fix: str = "",
            setting: str = "") -> None:
        self.checks.append(Check(name, verdict, reason, fix, setting))

    def refusals(self, forced=()) -> list[Check]:
        return [c for c in self.checks
                if c.verdict == REFUSE and not (c.forceable and c.name in forced)]

    def as_dicts(self) -> list[dict]:
        return [dict(asdict(c), forceable=c.forceable) for c in self.checks]


class Refused(SnapcoreError):
    """A preflight check said no; its exit code is the check's."""

    def __init__(self, check: Check, pid: int):
        super().__init__(check.reason, check.fix, pid=pid, stage=Stage.PREFLIGHT,
                         setting=check.setting)
        self.exit_code = check.exit_code
        self.check = check.name if check.forceable else ""
        self.check_name = check.name
