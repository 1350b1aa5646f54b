"""The door both writers go through after the window: what one snapshot
holds between its phases (`Run`), what a writer gives back (`Dumped`), and
the tail they share: the dump's controller, and the child's phase (a child
killed from outside is a core not written; the child ended whatever
happens).

Each writer is a module with `dump_and_store(run) -> Dumped`:
engine/dump_kernel.py (the kernel writes the child's core) and
engine/dump_snapcore.py (snapcore writes it from the stopped child).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field, fields
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from snapcore.engine import dump, interrupts
from snapcore.engine.controller import Controller, MemoryWatch, ladder
from snapcore.engine.request import Request
from snapcore.engine.kernelerrors import meaning
from snapcore.errors import CoreNotWritten, NoSuchProcess, SnapcoreError, Stage, TargetReplaced
from snapcore.linux import priority
from snapcore.linux.ptrace import PtraceFailed

if TYPE_CHECKING:
    from snapcore.engine.child import Child
    from snapcore.engine.fork import Forked
    from snapcore.engine.plan import Plan


@dataclass
class Job:
    """One snapshot before its window: what the preflight planned, what the
    operator asked, and where the core goes."""

    plan: Plan
    request: Request
    output_dir: Path  # prepared: absolute, there, writable
    staging: Path | None  # the kernel writer's staging directory, if it needs one
    root: str  # the target's root directory ("" : snapcore's own)
    taken_at: datetime
    memory: MemoryWatch  # begun before the fork: the copies start at the release


@dataclass
class Run(Job):
    """The same snapshot from the window on, with what the window made."""

    forked: Forked = field(kw_only=True)
    kid: Child = field(kw_only=True)
    # Each held target thread's id in its own pid namespace, read once right
    # after the window (a thread may end later): what the core calls it.
    target_ns: dict[int, int | None] = field(kw_only=True)

    @classmethod
    def after_fork(cls, job: Job, forked: Forked, kid: Child,
                   target_ns: dict[int, int | None]) -> Run:
        return cls(**{f.name: getattr(job, f.name) for f in fields(Job)},
                   forked=forked, kid=kid, target_ns=target_ns)


@dataclass
class Dumped:
    """What a writer made of the child."""

    core_path: Path | None  # stored (kernel), or its hidden name (snapcore); None: piped
    core_size: int  # bytes written (snapcore's writer; the kernel's: 0 until published)
    dump_seconds: float
    threads: int
    thread_map: list[dict]  # per thread: target tid, name, LWP in the core, child tid
    notes: list[str]
    priority_steps: list[dict]
    streamed: bool = False
    # The window's, added by engine/sequence.py: its timings (Forked.timings)
    # and the child it made.
    pause: dict = field(default_factory=dict)
    child_pid: int = 0


def controller(run: Run, written, expected: int) -> Controller:
    """The dump's controller, whichever task writes: `written()` is the
    core's bytes so far, `expected` what it should come to."""
    return Controller(written, expected, ladder(*priority.own_level(run.plan.target.pid)),
                      deadline=run.request.dump_deadline,
                      max_dump_time=run.request.max_dump_time,
                      memory=run.memory, progress=run.request.progress)


@contextlib.contextmanager
def child_phase(run: Run):
    """Around a writer's work on the child.  Only the child is touched in
    this phase, so its going away is a core not written (the target is
    unharmed), unless the target itself exec'd or exited (TargetReplaced:
    its own error).  The child is ended and collected however it ends."""
    try:
        yield
    except (SnapcoreError, PtraceFailed) as exc:
        err = meaning(exc)  # a linux/ error that got this far, said as the engine says it
        if isinstance(err, NoSuchProcess) and not isinstance(err, TargetReplaced):
            raise CoreNotWritten(f"the snapshot child ended before its dump ({err.message})",
                                 "no core was written; the target is unharmed",
                                 pid=run.plan.target.pid, stage=Stage.CHILD) from None
        if err is exc:
            raise
        raise err from None
    finally:
        with interrupts.cleanup():
            dump.kill(run.kid)  # a no-op when it already ended
