"""What the preflight decided: the snapshot's plan.  The checks fill it in
as they judge (verdicts.Preflight holds both); every phase after the
preflight reads the plan alone, never the verdicts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from snapcore.core import core_pattern
    from snapcore.linux import landing
    from snapcore.linux.facts import Facts
    from snapcore.linux.procfs import Target


@dataclass
class Plan:
    target: Target
    facts: Facts  # what the checks read, once (linux/facts.py)
    core_pattern: core_pattern.CorePattern  # read once, as the preflight judged it
    writer: str = "kernel"  # who will write the core: "kernel" or "snapcore"
    writer_reason: str = ""
    syscall_at: int = 0  # the `syscall` instruction injections will use
    sites: landing.Sites | None = None  # of the target's own code (linux/landing.py)
    stale_pages: list[int] = field(default_factory=list)  # left by a killed snapcore
    fingerprint: tuple = ()  # target.mm_fingerprint: its program, to notice an exec
    core_estimate: int = 0  # bytes on disk (allocated)
    core_apparent: int = 0  # the file's size, holes included
    # What the memory check found free for copy-on-write copies: the lesser of
    # MemAvailable and the room under the tightest memory cgroup limit (that
    # limit's file, "" without one).  The dump's controller keeps to it.
    memory_room: int = 0
    memory_worst: int = 0  # the most the copies can cost: the copy-on-write worst case
    memory_limit_file: str = ""
    # MADV_DONTFORK regions (absent from the child, so from the core) and
    # MADV_WIPEONFORK ones (zeros in the core): {"start", "end", "kind", "path"}
    regions_missing: list[dict] = field(default_factory=list)
