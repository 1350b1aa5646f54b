"""Take snapshots when a process crosses a threshold.

`events()` samples the process every `interval` seconds and yields what it
saw; when one of the conditions has held for `hold` seconds it takes a
snapshot (at most `count`, at least `cooldown` seconds apart, and never more
than the rate limit allows).  It ends when the process exits or `count`
snapshots are taken.  Several conditions: any one of them fires.  Limits
from below (`cpu_below`, `rss_below`) catch a process that stalls or
shrinks, as ProcDump's -cl and -ml do.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import psutil

from snapcore import bounds
from snapcore.errors import ExitCode, NoSuchProcess, SnapcoreError, Stage
from snapcore.units import human


@dataclass
class Conditions:
    cpu: float | None = None  # percent of one CPU, at least
    rss: int | None = None  # bytes, at least
    threads: int | None = None
    fds: int | None = None
    cpu_below: float | None = None  # percent of one CPU, less than
    rss_below: int | None = None  # bytes, less than

    def __post_init__(self) -> None:
        """Each one given: a finite number in range (BadInput else)."""
        for setting, value in (("cpu", self.cpu), ("rss", self.rss), ("threads", self.threads),
                               ("fds", self.fds), ("cpu_below", self.cpu_below),
                               ("rss_below", self.rss_below)):
            if value is not None:
                bounds.check(setting, value)

    def any(self) -> bool:
        return any(v is not None for v in (self.cpu, self.rss, self.threads, self.fds,
                                           self.cpu_below, self.rss_below))


@dataclass
class Sample:
    cpu: float
    rss: int
    threads: int
    fds: int
    at: float = 0.0  # wall-clock time of the sample

    def text(self) -> str:
        return (f"cpu {self.cpu:.0f}%, rss {human(self.rss)}, {self.threads} threads, "
                f"{self.fds} fds")


def exceeded(sample: Sample, cond: Conditions) -> list[str]:
    """Which conditions this sample meets, in words."""
    met = []
    if cond.cpu is not None and sample.cpu >= cond.cpu:
        met.append(f"cpu {sample.cpu:.0f}% >= {cond.cpu:g}%")
    if cond.rss is not None and sample.rss >= cond.rss:
        met.append(f"rss {human(sample.rss)} >= {human(cond.rss)}")
    if cond.threads is not None and sample.threads >= cond.threads:
        met.append(f"threads {sample.threads} >= {cond.threads}")
    if cond.fds is not None and sample.fds >= cond.fds:
        met.append(f"fds {sample.fds} >= {cond.fds}")
    if cond.cpu_below is not None and sample.cpu < cond.cpu_below:
        met.append(f"cpu {sample.cpu:.0f}% < {cond.cpu_below:g}%")
    if cond.rss_below is not None and sample.rss < cond.rss_below:
        met.append(f"rss {human(sample.rss)} < {human(cond.rss_below)}")
    return met


def events(pid: int, cond: Conditions, snapshot, *, interval: float, hold: float,
           count: int, cooldown: float, clock=time.monotonic, sleep=time.sleep,
           next_allowed=lambda: None):
    """Yield ("sample", Sample, met), ("fire", trigger), ("snapshot", result or
    SnapcoreError, trigger), ("limited", when) and finally ("end", why, fired): `fired`
    is False when the process exited before any condition fired.
    `snapshot(trigger)` takes one; `next_allowed()` is the wall-clock time
    the rate limit next allows one (None: now).  Spent, watch says so (at the
    start, and after each snapshot or refusal that leaves it spent), waits
    until then and fires then if the condition still holds.  The settings are
    checked here, before the first sample (BadInput)."""
    for setting, value in (("interval", interval), ("hold", hold), ("count", count),
                           ("cooldown", cooldown)):
        bounds.check(setting, value)
    return _events(pid, cond, snapshot, _Pace(hold, cooldown, clock, next_allowed),
                   interval=interval, count=count, sleep=sleep)


class _Pace:
    """When a met condition may fire: held long enough, past the cooldown
    since the last snapshot, and past the time the rate limit allows."""

    def __init__(self, hold: float, cooldown: float, clock, next_allowed):
        self.hold, self.cooldown, self.clock = hold, cooldown, clock
        self.next_allowed = next_allowed
        self.held_since = self.last_shot = self.not_before = None

    def ready(self, met: list[str]) -> bool:
        now = self.clock()
        if not met:
            self.held_since = None
            return False
        self.held_since = now if self.held_since is None else self.held_since
        return (now - self.held_since >= self.hold
                and (self.last_shot is None or now - self.last_shot >= self.cooldown)
                and (self.not_before is None or time.time() >= self.not_before))

    def trigger(self, met: list[str]) -> str:
        return f"{'; '.join(met)} for {self.clock() - self.held_since:.1f} s"

    def after(self, result) -> float | None:
        """Note a snapshot's result; the time the rate limit next allows one
        when it is spent now."""
        refused = (isinstance(result, SnapcoreError)
                   and result.exit_code == ExitCode.RATE_LIMITED)
        if not refused:  # a refusal took nothing: no cooldown after it
            self.last_shot, self.held_since = self.clock(), None
        self.not_before = self.next_allowed()
        if refused and self.not_before is None:  # unknown: try again after a cooldown
            self.last_shot = self.clock()
        return self.not_before


def _events(pid: int, cond: Conditions, snapshot, pace: _Pace, *, interval: float,
            count: int, sleep):
    try:
        proc = psutil.Process(pid)
        proc.cpu_percent(None)  # the first reading primes the counter
    except psutil.NoSuchProcess:
        raise NoSuchProcess(f"no such process {pid}", "check the pid with ps or pgrep",
                            pid=pid, stage=Stage.WATCH) from None
    pace.not_before = pace.next_allowed()
    if pace.not_before is not None:
        yield ("limited", pace.not_before)
    taken = fired = 0
    while True:
        sleep(interval)
        try:
            with proc.oneshot():
                if proc.status() == psutil.STATUS_ZOMBIE:
                    raise psutil.NoSuchProcess(pid)
                sample = Sample(proc.cpu_percent(None), proc.memory_info().rss,
                                proc.num_threads(), proc.num_fds(), time.time())
        except psutil.NoSuchProcess:
            yield ("end", f"process {pid} exited", fired > 0)
            return
        met = exceeded(sample, cond)
        yield ("sample", sample, met)
        if not pace.ready(met):
            continue
        trigger = pace.trigger(met)
        yield ("fire", trigger)
        fired += 1
        try:
            result = snapshot(trigger)
        except SnapcoreError as exc:
            result = exc
        yield ("snapshot", result, trigger)
        if not isinstance(result, SnapcoreError):
            taken += 1
            if taken >= count:
                yield ("end", f"{taken} snapshot(s) taken, as many as asked", True)
                return
        if pace.after(result) is not None:
            yield ("limited", pace.not_before)
