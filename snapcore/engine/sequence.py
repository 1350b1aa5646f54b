"""After the window: make the child safe, let the kernel dump it, and take the
core it wrote into the output directory.
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

from snapcore.core import core_pattern, notes, placement, store
from snapcore.engine import child as childmod
from snapcore.engine import dump
from snapcore.engine import fork as forkmod
from snapcore.engine import keeper
from snapcore.engine import interrupts, preflight, write
from snapcore.engine.checks_seccomp import planned_refusals
from snapcore.engine.identity import identity_check
from snapcore.engine.controller import Controller, MemoryWatch, ladder
from snapcore.engine.result import DumpLimits, Output, Snapshot
from snapcore.linux.inject import TargetReplaced
from snapcore.errors import CoreNotWritten, NoSuchProcess, Stage
from snapcore.linux import priority, stops
from snapcore.linux.procfs import Target, ns_tid, thread_name
from snapcore.linux.stops import StopKind


@dataclass
class _Dump:
    """What one snapshot holds between its phases."""

    pre: preflight.Preflight
    forked: forkmod.Forked
    kid: childmod.Child
    where: str | None  # core_pattern expanded as a glob; None for a pipe
    staging: Path | None
    since: float  # the dump's start, for finding the file
    # Each target thread's id in its own pid namespace, read right after the
    # window (a thread may end later): what the core must call it.
    target_ns: dict[int, int | None] = field(default_factory=dict)


def fork_and_dump(pre: preflight.Preflight, output_dir: Path, staging: Path | None,
                   all_threads: bool, stop_timeout: float, allow_undumpable: bool,
                   dump_limits: DumpLimits, pidfd: int, root: str,
                   output: Output | None = None) -> Snapshot:
    """The phases: fork (the one stop window), dump (the child), store.  With
    snapcore's writer (pre.writer) the dump and store are engine/write.py's.
    Whatever happens after the fork, the child is ended and the fork thread
    reaps it and leaves (forkthread.end)."""
    target = pre.target
    taken_at = datetime.now(timezone.utc)
    memory = MemoryWatch(pre.memory_room, pre.memory_limit_file, ceiling=pre.memory_worst)
    memory.begin()
    dump_limits = replace(dump_limits, memory=memory)
    forked = kid = None
    try:
        # A stop request between fork's return and here would leave the fork
        # thread and the child to no one: until both are in hand it waits.
        with interrupts.cleanup():
            forked = forkmod.fork(target.pid, pre.syscall_at,
                                  threads=target.threads if all_threads else None,
                                  timeout=stop_timeout,
                                  check=identity_check(pre, pidfd, Stage.CAPTURE),
                                  planned=planned_refusals(len(target.threads)),
                                  pages=pre.stale_pages, sites=pre.sites)
            kid = _child_of(forked)
        snap = _after_fork(pre, forked, kid, output_dir, staging, allow_undumpable,
                           dump_limits, root, output, taken_at)
    except BaseException:
        if forked is not None:
            with interrupts.cleanup():
                if kid is not None:
                    dump.kill(kid)
                forkmod.finish(forked.thread)
        raise
    with interrupts.cleanup():
        dump.kill(kid)  # a no-op: each writer ends it
        snap.notes += forkmod.finish(forked.thread)
    snap.writer_reason = pre.writer_reason
    return snap


def _child_of(forked: forkmod.Forked) -> childmod.Child:
    kid = childmod.Child(forked.child, guard=forked.thread.guard, notes=list(forked.notes),
                         page=forked.thread.page)
    kid.ns_tids[kid.pid] = forked.child_ns_pid
    kid.keeper = lambda: keeper.service(forked.thread)
    kid.parent = forkmod.Parent(forked.thread)
    return kid


def _after_fork(pre: preflight.Preflight, forked: forkmod.Forked, kid: childmod.Child,
                output_dir: Path, staging: Path | None, allow_undumpable: bool,
                dump_limits: DumpLimits, root: str, output: Output | None,
                taken_at: datetime) -> Snapshot:
    target, pattern = pre.target, pre.core_pattern
    if pre.writer == "snapcore":
        held = [forked.runner, *forked.others]
        tids = [t.tid for t in held]
        gathered = write.gather(target.pid, held, {t: ns_tid(target.pid, t) for t in tids})
        kid.notes = []  # the window's notes are added once, by the writer
        return write.dump_and_store(pre, forked, kid, gathered, allow_undumpable, dump_limits,
                                    output or Output(output_dir), taken_at)
    where = None if pattern.kind == "pipe" else core_pattern.expand(
        pattern, pid=kid.pid, uid=target.uid, gid=target.gid, comm=target.name,
        exe=target.exe, soft_limit=target.core_hard, ns_pid=forked.child_ns_pid)
    if where is not None and pattern.kind == "absolute" and root:
        where = glob.escape(root) + where  # written in the target's view of the files
    tids = [forked.runner.tid] + [t.tid for t in forked.others]
    run = _Dump(pre, forked, kid, where, staging, time.time(),
                {t: ns_tid(target.pid, t) for t in tids})
    try:
        snap, ended, controller = _dump(run, allow_undumpable, dump_limits, root, taken_at)
        return _store(run, snap, ended, controller, dump_limits, output_dir, taken_at)
    except BaseException:
        if pattern.kind == "absolute":
            # A staging directory goes with its contents; a partial core in the
            # administrator's directory is removed here, if it is this one's.
            store.remove_partial(where, run.since, {target.uid, target.euid},
                                    forked.child_ns_pid)
        raise


def _dump(run: _Dump, allow_undumpable: bool, dump_limits: DumpLimits, root: str,
          taken_at: datetime):
    """Make the child safe, let the kernel dump it, and make sure it is gone."""
    pre, forked, kid = run.pre, run.forked, run.kid
    target, at = pre.target, pre.syscall_at
    controller = Controller(lambda: store.bytes_written(run.where, run.staging),
                            dump_limits.expected, ladder(*priority.own_level(target.pid)),
                            deadline=dump_limits.deadline,
                            max_dump_time=dump_limits.max_dump_time,
                            memory=dump_limits.memory, progress=dump_limits.progress)
    try:
        deadline = time.monotonic() + 30 + 0.01 * len(forked.others)
        childmod.prepare(kid, at, core_hard=target.core_hard,
                         staging=placement.as_seen_by_target(run.staging, root)
                         if run.staging else None, name=target.name,
                         allow_undumpable=allow_undumpable, deadline=deadline)
        childmod.resurrect(kid, at, forked.others, deadline)
        childmod.lower_priority(kid, at, deadline)
        ended, dump_seconds = dump.dump(kid, forked.runner, controller)
    except TargetReplaced:
        raise  # the process exec'd or exited: its own error, not the child's
    except NoSuchProcess as exc:
        # Only the child is touched in this phase: it was killed from outside.
        raise CoreNotWritten(f"the snapshot child ended before its dump ({exc.message})",
                             "no core was written; the target is unharmed",
                             pid=target.pid, stage=Stage.CHILD) from None
    finally:
        with interrupts.cleanup():
            dump.kill(kid)  # a no-op when it already ended
    snap = Snapshot(target=target, core_path=None, core_size=0, pause=forked.timings,
                    reap_pause=0.0, dump_seconds=dump_seconds,
                    threads=len(kid.threads),
                    thread_map=_thread_map(target.pid, kid, run.target_ns),
                    child_pid=kid.pid, core_pattern=pre.core_pattern, taken_at=taken_at,
                    notes=kid.notes + controller.notes, priority_steps=controller.steps)
    return snap, ended, controller


def _store(run: _Dump, snap: Snapshot, ended: stops.Stop, controller: Controller,
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
    controller.raise_failure(pid, "the child was killed")
    if not ended.core_dumped:
        raise CoreNotWritten(_why_no_core(target, ended, pattern, run.staging, kid),
                             pid=pid, stage=Stage.DUMP)
    rejected: list[str] = []
    core = store.open_core(run.where, run.staging, run.since,
                              {target.uid, target.euid}, rejected)
    if core is None and rejected:
        raise CoreNotWritten(f"the core the kernel wrote was replaced before snapcore took "
                             f"it ({'; '.join(rejected)}); nothing was touched",
                             "someone with the target's uid is tampering with its "
                             "staging directory", pid=pid, stage=Stage.CORE)
    if core is None:
        raise CoreNotWritten(f"the kernel reported a core but none was found for "
                             f"core_pattern {pattern.pattern!r}",
                             "check core_pattern and the target's working directory",
                             pid=pid, stage=Stage.CORE)
    try:
        # The notes name the child's threads as its pid namespace sees them;
        # write the target's own ids (in that namespace too) in their place.
        layout = notes.check_core(core, run.forked.child_ns_pid)
        renames = {kid.ns_tids[c]: run.target_ns[t] for c, t in kid.threads.items()
                   if run.target_ns.get(t) is not None}
        if len(renames) < len(kid.threads):
            snap.notes.append("threads that ended right after the fork keep the child's "
                              "ids in the core")
        notes.rename_threads(core, layout, renames, run.target_ns.get(pid) or 0)
        if run.target_ns.get(pid) is not None:
            notes.main_thread_first(core, run.target_ns[pid])
        snap.core_path = store.store(core, output_dir,
                                        placement.core_name(target.name, pid, taken_at))
    finally:
        core.close()
    return snap


def _thread_map(pid: int, kid: childmod.Child, target_ns: dict[int, int | None]) -> list[dict]:
    """Target thread id, its name, and the LWP the core names it by (its own id
    in its pid namespace, once the notes are rewritten), in the core's order."""
    # The main thread first, as core/notes.main_thread_first orders the notes.
    order = [kid.pid] + [t for t in kid.threads if t != kid.pid]
    order.sort(key=lambda c: kid.threads.get(c) != pid)
    return [{"tid": kid.threads[c], "name": thread_name(pid, kid.threads[c]),
             "core_lwp": target_ns.get(kid.threads[c]), "child_tid": c} for c in order]


def _why_no_core(target: Target, ended: stops.Stop, pattern: core_pattern.CorePattern,
                 staging: Path | None, kid: childmod.Child) -> str:
    how = (f"exited with status {os.WEXITSTATUS(ended.status)}" if ended.kind is StopKind.EXITED
           else f"died of signal {ended.sig} without a core")
    if ended.kind is StopKind.KILLED and ended.sig == signal.SIGKILL and kid.oom_killed():
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
