"""The snapshot sequence: check -> fork the target -> release it -> prepare the
child -> let the kernel dump it -> reap it -> store the core.

The engine never prints; it returns a `Snapshot` or raises a SnapcoreError.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

from snapcore.linux import arch
from snapcore.engine import child as childmod
from snapcore.core import corefile
from snapcore.engine import fork as forkmod
from snapcore.engine import interrupts
from snapcore.engine import preflight
from snapcore.linux import ptrace
from snapcore.core import records
from snapcore.linux import seccomp
from snapcore.core.compress import compress
from snapcore.errors import (CoreNotWritten, NoSuchProcess, OutputError, SnapcoreError, StopTimeout,
                     Unsupported)
from snapcore.linux.inject import TargetReplaced, run_in_target
from snapcore.engine.ratelimit import RateLimiter, key_for
from snapcore.linux.procfs import (Target, adopts_orphans, exclusive, is_syscall_instruction, mm_fingerprint, ns_tid,
                     reading, start_time, thread_name)

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
    core_pattern: corefile.CorePattern
    taken_at: datetime
    notes: list[str] = field(default_factory=list)
    checks: list[dict] = field(default_factory=list)  # the preflight's verdicts
    escalated_after: float | None = None  # seconds into a stalled dump, if raised
    sidecar_path: Path | None = None  # the record beside the core
    core_estimate: int = 0  # what the preflight expected the core to weigh
    # MADV_DONTFORK regions (absent from the child, so from the core) and
    # MADV_WIPEONFORK ones (zeros in the core): {"start", "end", "kind"}
    regions_missing: list[dict] = field(default_factory=list)

    @property
    def pause_ms(self) -> float:
        return self.pause["pause"] * 1000.0


THREAD_MODES = ("all", "main")


@dataclass
class DumpLimits:
    stall_timeout: float = 10.0  # raise a dump that grew < 1 MiB in this long; 0: never
    max_dump_time: float = 0.0  # kill a dump that lasts longer; 0: no limit
    progress: object = None  # (bytes written, bytes expected) -> None, while dumping
    expected: int = 0  # the preflight's estimate of the core's size


def take(pid: int, opts: preflight.Options, *, threads: str = "all",
         force: tuple[str, ...] = (), limits: DumpLimits | None = None,
         reason: str = "", compressed: bool = False) -> Snapshot:
    """Snapshot process `pid` into `opts.output_dir`; the target keeps running.

    Every preflight check runs first; a refusal raises unless its name is in
    `force` (and it may be forced).  threads="all" holds every thread for the
    fork and puts each in the core; "main" holds and dumps the main thread only.
    The stored core gets its record (records.write_sidecar) with `reason`;
    `compressed` turns it into CORE.zst first.
    """
    with exclusive(pid):
        return _take_exclusive(pid, opts, threads=threads, force=force, limits=limits,
                               reason=reason, compressed=compressed)


def _take_exclusive(pid: int, opts: preflight.Options, *, threads: str,
                    force: tuple[str, ...], limits: DumpLimits | None, reason: str,
                    compressed: bool) -> Snapshot:
    pre = preflight.run(pid, opts)
    refusals = pre.refusals(force)
    if refusals:
        raise preflight.Refused(refusals[0], pid)
    target = pre.target
    output_dir = corefile.prepare_output_dir(opts.output_dir)
    limiter = RateLimiter(output_dir, opts.max_per_hour, opts.clock)
    key = key_for(target.exe, pid)
    with limiter.exclusive(key, pid):
        root = corefile.target_root(pid)
        corefile.remove_stale_staging(corefile.staging_bases(output_dir, root))
        corefile.finish_interrupted(output_dir)
        staging = (corefile.make_staging_dir(output_dir, target.uid, target.gid, root)
                   if pre.core_pattern.kind == "relative" else None)
        try:
            with ptrace.signals_held([signal.SIGCHLD]):
                limits = replace(limits or DumpLimits(), expected=pre.core_estimate)
                snap = _take(pre, output_dir, staging, threads == "all", opts.timeout,
                             allow_undumpable="dumpable" in force, dump_limits=limits,
                             root=root)
        except SnapcoreError as exc:
            exc.pid = exc.pid if exc.pid is not None else pid
            raise
        finally:
            if staging is not None:
                corefile.remove_staging(staging)
        limiter.record(key)
    snap.checks = pre.as_dicts()
    snap.core_estimate = pre.core_estimate
    snap.regions_missing = pre.regions_missing
    if snap.core_path is not None:
        _publish(snap, output_dir, reason, compressed)
    return snap


def _publish(snap: Snapshot, output_dir: Path, reason: str, compressed: bool) -> None:
    """Compress the stored core if asked, write its record, then give the core
    its name: a core is never seen without its record (list and prune would
    not know it)."""
    partial = snap.core_path
    if compressed:
        try:
            partial = compress(partial)
        except OutputError as exc:
            snap.notes.append(f"not compressed: {exc.one_line()}")
    snap.core_path = output_dir / corefile.final_name(partial.name)
    snap.core_size = partial.stat().st_size
    snap.sidecar_path = records.write_sidecar(snap, reason)
    corefile.publish(partial, snap.core_path)


def _take(pre: preflight.Preflight, output_dir: Path, staging: Path | None,
          all_threads: bool, stop_timeout: float, *, allow_undumpable: bool,
          dump_limits: DumpLimits, root: str) -> Snapshot:
    pid = pre.target.pid
    # Pin the identity before the window: a pidfd opened now refers to this
    # process for good, and the start time says the pid was not reused since
    # preflight.  Inside the window one pidfd_send_signal(0) tells it is alive.
    with reading(pid, "preflight"):
        pidfd = os.pidfd_open(pid)
    try:
        if start_time(pid) != pre.target.start_time:
            raise NoSuchProcess(f"process {pid} exited and its pid was reused",
                                "check the pid again", pid=pid, stage="preflight")
        return _fork_and_dump(pre, output_dir, staging, all_threads, stop_timeout,
                              allow_undumpable, dump_limits, pidfd, root)
    finally:
        os.close(pidfd)


def identity_check(pre: preflight.Preflight, pidfd: int, stage: str):
    """What every stop of the target checks once its threads are held: the
    same process (pidfd), still 64-bit, the same program (no exec since the
    preflight: the same memory layout), `syscall` still at the address the
    seccomp filters were judged at."""
    target, at = pre.target, pre.syscall_at

    def check(tid: int) -> None:
        try:
            signal.pidfd_send_signal(pidfd, 0)
        except ProcessLookupError:
            raise NoSuchProcess(f"process {target.pid} exited", "nothing to snapshot",
                                pid=target.pid, stage=stage) from None
        if ptrace.regs_size(tid) != arch.REGS_SIZE:
            raise Unsupported(f"process {target.pid} ({target.name}) is not a 64-bit "
                              "process", "snapcore supports 64-bit x86_64 processes only",
                              pid=target.pid, stage=stage)
        try:
            same = mm_fingerprint(target.pid) == pre.fingerprint
        except OSError:
            same = False
        if not same or not is_syscall_instruction(target.pid, at):
            raise TargetReplaced(f"process {target.pid} exec'd a new program since it "
                                 "was checked", "nothing was done to it; try again",
                                 pid=target.pid, stage=stage)
    return check


@dataclass
class _Dump:
    """What one snapshot holds between its phases."""

    pre: preflight.Preflight
    forked: forkmod.Forked
    kid: childmod.Child
    where: str | None  # core_pattern expanded as a glob; None for a pipe
    staging: Path | None
    since: float  # the dump's start, for finding the file


def _fork_and_dump(pre: preflight.Preflight, output_dir: Path, staging: Path | None,
                   all_threads: bool, stop_timeout: float, allow_undumpable: bool,
                   dump_limits: DumpLimits, pidfd: int, root: str) -> Snapshot:
    """The phases: fork (the one stop window), dump (the child), store."""
    target, pattern = pre.target, pre.core_pattern
    guard = seccomp.Guard(pre.filters, arch.AUDIT_ARCH)
    taken_at = datetime.now(timezone.utc)
    forked = forkmod.fork(target.pid, pre.syscall_at,
                          threads=target.threads if all_threads else None,
                          timeout=stop_timeout, check=identity_check(pre, pidfd, "capture"),
                          adopted=adopts_orphans(target.pid), guard=guard,
                          main_only=target.seccomp != 0)
    kid = childmod.Child(forked.child, guard=guard, notes=list(forked.notes))
    kid.ns_tids[kid.pid] = forked.child_ns_pid
    where = None if pattern.kind == "pipe" else corefile.expand(
        pattern, pid=kid.pid, uid=target.uid, gid=target.gid, comm=target.name,
        exe=target.exe, soft_limit=target.core_hard, ns_pid=forked.child_ns_pid)
    if where is not None and pattern.kind == "absolute" and root:
        where = glob.escape(root) + where  # written in the target's view of the files
    run = _Dump(pre, forked, kid, where, staging, time.time())
    try:
        snap, ended, watchdog = _dump(run, pidfd, stop_timeout, allow_undumpable,
                                      dump_limits, root, taken_at)
        return _store(run, snap, ended, watchdog, dump_limits, output_dir, taken_at)
    except BaseException:
        if pattern.kind == "absolute":
            # A staging directory goes with its contents; a partial core in the
            # administrator's directory is removed here, if it is this one's.
            corefile.remove_partial(where, run.since, {target.uid, target.euid},
                                    forked.child_ns_pid)
        raise


def _dump(run: _Dump, pidfd: int, stop_timeout: float, allow_undumpable: bool,
          dump_limits: DumpLimits, root: str, taken_at: datetime):
    """Make the child safe, let the kernel dump it, and make sure it is gone."""
    pre, forked, kid = run.pre, run.forked, run.kid
    target, at = pre.target, pre.syscall_at
    watchdog = childmod.Watchdog(lambda: corefile.bytes_written(run.where, run.staging),
                                 dump_limits.stall_timeout, dump_limits.max_dump_time,
                                 progress=dump_limits.progress,
                                 expected=dump_limits.expected)
    reap_pause = 0.0
    try:
        deadline = time.monotonic() + 30 + 0.01 * len(forked.others)
        childmod.prepare(kid, at, core_hard=target.core_hard,
                         staging=corefile.as_seen_by_target(run.staging, root)
                         if run.staging else None, name=target.name,
                         allow_undumpable=allow_undumpable, deadline=deadline)
        childmod.resurrect(kid, at, forked.others, deadline)
        childmod.lower_priority(kid, at, deadline)
        ended, dump_seconds = childmod.dump(kid, forked.runner, watchdog)
    except NoSuchProcess as exc:
        # Only the child is touched in this phase: it was killed from outside.
        raise CoreNotWritten(f"the snapshot child ended before its dump ({exc.message})",
                             "no core was written; the target is unharmed",
                             pid=target.pid, stage="child") from None
    finally:
        with interrupts.cleanup():
            childmod.kill(kid)  # a no-op when it already ended
            if forked.adopted:
                reap_pause = _reap_adopted(pre, pidfd, forked.child_ns_pid, kid.guard,
                                           stop_timeout, kid.notes)
    snap = Snapshot(target=target, core_path=None, core_size=0, pause=forked.timings,
                    reap_pause=reap_pause, dump_seconds=dump_seconds,
                    threads=len(kid.threads), thread_map=_thread_map(target.pid, kid),
                    child_pid=kid.pid, core_pattern=pre.core_pattern, taken_at=taken_at,
                    notes=kid.notes, escalated_after=watchdog.escalated_after)
    return snap, ended, watchdog


def _store(run: _Dump, snap: Snapshot, ended: ptrace.Stop, watchdog: childmod.Watchdog,
           dump_limits: DumpLimits, output_dir: Path, taken_at: datetime) -> Snapshot:
    """Find the core the kernel wrote, name the threads as the target does, and
    put it in the output directory."""
    target, pattern, kid = run.pre.target, run.pre.core_pattern, run.kid
    pid = target.pid
    if pattern.kind == "pipe":
        # The handler has whatever the kernel sent it; nothing to find here.
        if not ended.core_dumped:
            snap.notes.append(_why_no_core(target, ended, pattern, None, kid))
        elif len(kid.threads) > 1:
            snap.notes.append("the handler's copy names the child's thread ids, which "
                              "snapcore cannot rewrite there: gdb lists each thread "
                              "twice, once without registers (thread_map gives the pairs)")
        return snap
    if watchdog.timed_out:
        raise CoreNotWritten(f"the dump took longer than --max-dump-time "
                             f"({dump_limits.max_dump_time:g} s); the child was killed",
                             "snapshot when the machine is less busy, or raise "
                             "--max-dump-time", pid=pid, stage="dump")
    if not ended.core_dumped:
        raise CoreNotWritten(_why_no_core(target, ended, pattern, run.staging, kid),
                             pid=pid, stage="dump")
    rejected: list[str] = []
    core = corefile.open_core(run.where, run.staging, run.since,
                              {target.uid, target.euid}, rejected)
    if core is None and rejected:
        raise CoreNotWritten(f"the core the kernel wrote was replaced before snapcore took "
                             f"it ({'; '.join(rejected)}); nothing was touched",
                             "someone with the target's uid is tampering with its "
                             "staging directory", pid=pid, stage="core")
    if core is None:
        raise CoreNotWritten(f"the kernel reported a core but none was found for "
                             f"core_pattern {pattern.pattern!r}",
                             "check core_pattern and the target's working directory",
                             pid=pid, stage="core")
    try:
        # The notes name the child's threads as its pid namespace sees them;
        # write the target's own ids (in that namespace too) in their place.
        notes = corefile.check_core(core, run.forked.child_ns_pid)
        renames = {kid.ns_tids[c]: ns_tid(pid, t) for c, t in kid.threads.items()}
        corefile.rename_threads(core, notes, renames, ns_tid(pid, pid))
        snap.core_path = corefile.store(core, output_dir,
                                        corefile.core_name(target.name, pid, taken_at))
    finally:
        core.close()
    return snap


def _reap_adopted(pre: preflight.Preflight, pidfd: int, ns_pid: int, guard,
                  stop_timeout: float, notes: list[str]) -> float:
    """Reap a child made with CLONE_PARENT (see fork.py) from inside the
    target: the one case where snapcore stops the target a second time.  The
    same identity checks as the first window: a target that exec'd, exited,
    is stopped or traced by someone else meanwhile is left alone, and the
    child stays a zombie that only __WALL waits can see."""
    pid = pre.target.pid
    for attempt in range(3):
        try:
            result, pause = run_in_target(pid, pre.syscall_at, arch.NR["wait4"], ns_pid, 0,
                                          forkmod.REAP_OPTIONS, 0, timeout=stop_timeout,
                                          check=identity_check(pre, pidfd, "reap"),
                                          guard=guard)
        except TargetReplaced as exc:
            notes.append(f"the snapshot child {ns_pid} was not reaped: {exc.message}; it "
                         "stays a zombie that only __WALL waits see")
            return 0.0
        except NoSuchProcess:
            return 0.0  # the target is gone, and its namespace with the child
        except StopTimeout:
            if attempt < 2:
                continue
            notes.append(f"the snapshot child {ns_pid} was not reaped: the target did not "
                         "stop; it stays a zombie that only __WALL waits see")
            return 0.0
        except SnapcoreError as exc:
            notes.append(f"the snapshot child {ns_pid} was not reaped ({exc.message}); it "
                         "stays a zombie that only __WALL waits see")
            return 0.0
        if result != ns_pid:
            notes.append(f"wait4 in the target for the snapshot child returned {result}")
        return pause
    return 0.0
def _thread_map(pid: int, kid: childmod.Child) -> list[dict]:
    """Target thread id, its name, and the LWP the core names it by (its own id
    in its pid namespace, once the notes are rewritten), in the core's order."""
    order = [kid.pid] + [t for t in kid.threads if t != kid.pid]
    return [{"tid": kid.threads[c], "name": thread_name(pid, kid.threads[c]),
             "core_lwp": ns_tid(pid, kid.threads[c]), "child_tid": c} for c in order]


def _why_no_core(target: Target, ended: ptrace.Stop, pattern: corefile.CorePattern,
                 staging: Path | None, kid: childmod.Child) -> str:
    how = (f"exited with status {os.WEXITSTATUS(ended.status)}" if ended.kind == "exited"
           else f"died of signal {ended.sig} without a core")
    if ended.kind == "killed" and ended.sig == signal.SIGKILL and kid.oom_killed():
        return ("core not written: the OOM killer took the snapshot child (it has "
                "oom_score_adj 1000, so it goes before the target): the copy-on-write "
                "memory did not fit; snapshot when there is more free memory")
    reasons = []
    if staging is not None and shutil.disk_usage(staging).free < 1 << 20:
        reasons.append(f"the filesystem of {staging} is full")
    if target.euid != 0 and target.proc_owner == 0:  # see preflight._dumpable
        reasons.append("the target is not dumpable (PR_SET_DUMPABLE 0)")
    reasons += kid.notes
    reasons.append(f"core_pattern is {pattern.pattern!r}")
    return f"core not written: the snapshot child {how} ({'; '.join(reasons)})"
