"""The dump's priority: idle while the machine has idle time, stepped up only
as far as needed to finish in time, never above the target's own priority.

While the copy-on-write child lives, the target pays a page copy for every
page it rewrites and the host pays the memory: a dump starved at SCHED_IDLE
on busy CPUs costs more the longer it lasts, and a starved idle task still
trickles a few MB/s, so no "stall" is ever seen.  So the controller projects
the end from the measured progress, and steps the dumping task up when

- the projected end is past the deadline and the task is starved (it waited
  on a run queue for a good part of the last second, or the machine is short
  of I/O): raising a task that is not starved would not make it faster;
- the copies reach half, then three quarters, of what the memory check found
  free (MemAvailable, and the room under the target's memory cgroup limit),
  or will by the look after next at the rate they grow.

It kills the dump when the copies reach nine tenths of that room, or when the
dump outlives `max_dump_time`.  Every step is kept (time, from, to, why).
The same controller runs whichever task writes the core: the kernel in the
child, or snapcore's own writer.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from snapcore.errors import CoreNotWritten, Stage
from snapcore.linux import cgroups, priority
from snapcore.linux.priority import IDLE, Level
from snapcore.linux.procstat import read_meminfo
from snapcore.units import human

SETTLE = 1.0  # seconds of progress measured before (and after) each deadline step
PERIOD = 0.25  # seconds between two looks at the dump
# ... and where the copies have little room (a tight memory cgroup): a
# target rewriting its memory fills tens of MiB in a few tens of ms, and the
# dump must be abandoned by snapcore (the child then frees its own memory)
# before the OOM killer has to act.
TIGHT_ROOM, TIGHT_PERIOD = 1 << 30, 0.02
STARVED = 0.2  # waiting on a run queue for this share of the time is starving
IO_SHORT = 0.1  # PSI io "some" share over 10 s that means the disk is the queue
MEMORY_STEPS = (0.5, 0.75)  # shares of the room at which copies step the dump up
MEMORY_KILL = 0.9  # ... and at which the dump is abandoned


def ladder(policy: str, nice: int) -> list[Level]:
    """The levels a dump may take, lowest first, up to the target's own."""
    if policy == "idle":
        return [IDLE]
    own = max(-20, min(nice, 19))
    return [IDLE] + [priority.level_for_nice(n) for n in (19, 10, 0) if n > own] + \
        [priority.level_for_nice(own)]


@dataclass
class MemoryWatch:
    """What the child's copies cost: anonymous memory added since the dump
    began under the target's memory cgroup (the copies are charged there,
    the target's and the child's alike), else host-wide (AnonPages).  Not
    the larger of the two: host-wide, every other process's allocations
    count too, and a busy host abandoned dumps whose cgroup had room."""

    room: int  # what the memory check found free
    limit_file: str = ""
    ceiling: int = 0  # the most the copies can cost (the memory check's worst case); 0: unknown
    start: tuple = ()

    def begin(self) -> None:
        self.start = self._now()

    def _now(self) -> tuple:
        host = _meminfo_anon()
        group = cgroups.anon_bytes(self.limit_file) if self.limit_file else None
        return host, group

    def cost(self) -> int:
        (host, group), (host_then, group_then) = self._now(), self.start
        if group is not None and group_then is not None:
            return group - group_then
        return host - host_then if host is not None and host_then is not None else 0


def _meminfo_anon() -> int | None:
    try:
        return read_meminfo().get("AnonPages")  # live: a change over time
    except (OSError, ValueError):
        return None


@dataclass
class Controller:
    written: Callable[[], int]  # bytes of the core so far (on disk, or sent)
    expected: int  # bytes the core should take
    levels: list[Level]  # ladder(): the lowest first
    deadline: float = 30.0  # seconds: aim to have the core by then; 0: never step for time
    max_dump_time: float = 0.0  # seconds: abandon the dump after this; 0: never
    memory: MemoryWatch | None = None
    progress: Callable[[int, int], None] | None = None  # (written, expected): a progress bar
    steps: list[dict] = field(default_factory=list)
    failure: str = ""  # "max_dump_time" or "memory" once the dump is abandoned
    memory_seen: tuple = ()  # (elapsed s, copies' cost) at the last look
    failure_text: str = ""
    notes: list[str] = field(default_factory=list)

    def start(self) -> None:
        self.started = time.monotonic()
        self.level = 0
        self._window(self.started, 0, [])
        if self.memory is not None and not self.memory.start:
            self.memory.begin()  # else begun before the fork, as it should be

    def _window(self, now: float, written: int, tasks: list[int]) -> None:
        self.window_at, self.window_bytes = now, written
        self.window_wait = sum(priority.waited(t)[1] for t in tasks)

    @property
    def period(self) -> float:
        """How long to wait between two ticks."""
        tight = self.memory is not None and 0 < self.memory.room < TIGHT_ROOM
        return TIGHT_PERIOD if tight else PERIOD

    def tick(self, tasks: list[int]) -> bool:
        """One look at the dump; True when it must be abandoned (kill it)."""
        now, size = time.monotonic(), self.written()
        if self.progress is not None:
            self.progress(size, self.expected)
        if self.failure:
            return False  # already abandoned: being collected
        elapsed = now - self.started
        if self.max_dump_time and elapsed > self.max_dump_time:
            return self._abandon("max_dump_time", f"the dump took longer than the longest "
                                 f"dump allowed ({self.max_dump_time:g} s)", tasks)
        if self.memory is not None and self._memory_rule(elapsed, tasks):
            return True
        if now - self.window_at >= SETTLE:
            why = self._behind(now, elapsed, size, tasks)
            if why:
                self.step(tasks, elapsed, self.level + 1, why)
            self._window(now, size, tasks)
        return False

    def _behind(self, now: float, elapsed: float, size: int, tasks: list[int]) -> str:
        """Why the dump must go faster, or "" when it will be in time."""
        if not self.deadline or self.level + 1 >= len(self.levels):
            return ""
        span = now - self.window_at
        rate = max(size - self.window_bytes, 0) / span
        left = max(self.expected - size, 0)
        end = elapsed + (left / rate if rate else float("inf")) if left else elapsed
        if end <= self.deadline:
            return ""
        waited = sum(priority.waited(t)[1] for t in tasks) - self.window_wait
        if waited < STARVED * span and priority.io_pressure() < IO_SHORT:
            note = "the dump is slow for lack of disk bandwidth, not of priority"
            if note not in self.notes:
                self.notes.append(note)
            return ""
        return (f"at {human(int(rate))}/s {completion(end)}, past the "
                f"{self.deadline:g} s deadline, and the dump waited for a CPU "
                f"{min(100, 100 * waited / span):.0f}% of the time")

    def _memory_rule(self, elapsed: float, tasks: list[int]) -> bool:
        memory = self.memory
        assert memory is not None  # tick() asks only with a MemoryWatch
        room = memory.room
        cost = memory.cost()
        if room <= 0:
            return False
        # Where the copies will be by the look after next, at the rate they
        # grew since the last one: a target that rewrites its memory fills a
        # small room between two looks, and then the OOM killer acts first.
        last_at, last_cost = self.memory_seen or (elapsed, cost)
        rate = max(cost - last_cost, 0) / (elapsed - last_at) if elapsed > last_at else 0
        self.memory_seen = (elapsed, cost)
        projected = cost + rate * 2 * self.period
        if memory.ceiling:
            # A target that rewrites all it has copies no more than that: the
            # rate of a rewrite burst says nothing past it.
            projected = min(projected, max(cost, memory.ceiling))
        share = projected / room
        what = (f"the copy-on-write copies reached {human(cost)} of the {human(room)} "
                f"the memory check found free")
        if share >= MEMORY_KILL:
            return self._abandon("memory", what, tasks)
        for number, threshold in enumerate(MEMORY_STEPS, 1):
            wanted = 1 if number == 1 else len(self.levels) - 1
            if share >= threshold and self.level < wanted:
                self.step(tasks, elapsed, wanted, what)
        return False

    def step(self, tasks: list[int], elapsed: float, to: int, why: str) -> None:
        to = min(to, len(self.levels) - 1)
        if to <= self.level:
            return
        record = {"at_s": round(elapsed, 3), "from": self.levels[self.level].name,
                  "to": self.levels[to].name, "why": why}
        for tid in tasks:
            try:
                priority.apply(tid, self.levels[to])
            except OSError as exc:
                record["error"] = exc.strerror  # not permitted, say so and go on
        self.steps.append(record)
        self.level = to

    def raise_failure(self, pid: int, ended: str) -> None:
        """The dump was abandoned: say why, in one line (`ended`: what became
        of the dump, the child killed or the writer stopped)."""
        if self.failure == "max_dump_time":
            raise CoreNotWritten(f"{self.failure_text}; {ended}",
                                 "snapshot when the machine is less busy, or allow a "
                                 "longer dump", pid=pid, stage=Stage.DUMP,
                                 setting="max_dump_time")
        if self.failure == "memory":
            raise CoreNotWritten(f"{self.failure_text} while the target rewrote its "
                                 "memory during the dump; the child was killed before the "
                                 "host ran short", "snapshot when the machine has more "
                                 "free memory or the target is quieter", pid=pid,
                                 stage=Stage.DUMP)

    def _abandon(self, failure: str, text: str, tasks: list[int]) -> bool:
        """Raise the dump to the top first: an idle task being killed still
        has to be scheduled to run its exit (and release its memory)."""
        self.step(tasks, time.monotonic() - self.started, len(self.levels) - 1,
                  f"to end at once: {text}")
        self.failure, self.failure_text = failure, text
        return True


def completion(end: float) -> str:
    """When the core would be complete, projected (end: seconds from the
    start, infinite when nothing was written in the last look)."""
    if end == float("inf"):
        return "the core would never be complete"
    return f"the core would be complete at {end:.0f} s"
