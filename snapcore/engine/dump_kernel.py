"""The kernel's writer: make the child safe, let the kernel dump it (SIGABRT,
engine/dump.py), find the core it wrote, name the threads as the target
does, and store it in the output directory.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import time
from pathlib import Path

from snapcore.core import core_pattern, notes, placement, store
from snapcore.engine import child as childmod
from snapcore.engine import dump, phase
from snapcore.engine.controller import Controller
from snapcore.engine.kernelerrors import decided
from snapcore.engine.phase import Dumped, Run
from snapcore.errors import CoreNotWritten, Stage
from snapcore.linux import stops
from snapcore.linux.procfs import Target, thread_name
from snapcore.linux.stops import StopKind


@decided
def dump_and_store(run: Run) -> Dumped:
    target, pattern, forked = run.plan.target, run.plan.core_pattern, run.forked
    where = None if pattern.kind == "pipe" else core_pattern.expand(
        pattern, pid=run.kid.pid, uid=target.uid, gid=target.gid, comm=target.name,
        exe=target.exe, soft_limit=target.core_hard, ns_pid=forked.child_ns_pid)
    if where is not None and pattern.kind == "absolute" and run.root:
        where = glob.escape(run.root) + where  # written in the target's view of the files
    since = time.time()  # the dump's start, for finding the file
    try:
        dumped, ended, controller = _dump(run, where)
        return _store(run, where, since, dumped, ended, controller)
    except BaseException:
        if pattern.kind == "absolute":
            # A staging directory goes with its contents; a partial core in the
            # administrator's directory is removed here, if it is this one's.
            store.remove_partial(where, since, {target.uid, target.euid},
                                 forked.child_ns_pid)
        raise


def _dump(run: Run, where: str | None) -> tuple[Dumped, stops.Stop, Controller]:
    """Make the child safe, let the kernel dump it, and make sure it is gone."""
    plan, forked, kid = run.plan, run.forked, run.kid
    target, at = plan.target, plan.syscall_at
    controller = phase.controller(run, lambda: store.bytes_written(where, run.staging),
                                  plan.core_estimate)
    with phase.child_phase(run):
        deadline = time.monotonic() + 30 + 0.01 * len(forked.others)
        childmod.prepare(kid, at, core_hard=target.core_hard,
                         staging=placement.as_seen_by_target(run.staging, run.root)
                         if run.staging else None, name=target.name,
                         allow_undumpable="dumpable" in run.request.force, deadline=deadline)
        childmod.resurrect(kid, at, forked.others, deadline)
        childmod.lower_priority(kid, at, deadline)
        ended, dump_seconds = dump.dump(kid, forked.runner, controller)
    dumped = Dumped(core_path=None, core_size=0, dump_seconds=dump_seconds,
                    threads=len(kid.threads), thread_map=_thread_map(target.pid, run),
                    notes=kid.notes + controller.notes, priority_steps=controller.steps)
    return dumped, ended, controller


def _store(run: Run, where: str | None, since: float, dumped: Dumped, ended: stops.Stop,
           controller: Controller) -> Dumped:
    """Find the core the kernel wrote, name the threads as the target does, and
    put it in the output directory."""
    target, pattern, kid = run.plan.target, run.plan.core_pattern, run.kid
    pid = target.pid
    if pattern.kind == "pipe":
        # The handler has whatever the kernel sent it; nothing to find here.
        if not ended.core_dumped:
            dumped.notes.append(_why_no_core(target, ended, pattern, None, kid))
        elif len(kid.threads) > 1:
            dumped.notes.append("the handler's copy names the child's thread ids, which "
                                "snapcore cannot rewrite there: gdb lists each thread "
                                "twice, once without registers (thread_map gives the pairs)")
        return dumped
    controller.raise_failure(pid, "the child was killed")
    if not ended.core_dumped:
        raise CoreNotWritten(_why_no_core(target, ended, pattern, run.staging, kid),
                             pid=pid, stage=Stage.DUMP)
    assert where is not None  # not a pipe
    rejected: list[str] = []
    core = store.open_core(where, run.staging, since, {target.uid, target.euid}, rejected)
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
        _rename_threads(run, core, dumped)
        dumped.core_path = store.store(core, run.output_dir,
                                       placement.core_name(target.name, pid, run.taken_at))
    finally:
        core.close()
    return dumped


def _rename_threads(run: Run, core: store.OpenCore, dumped: Dumped) -> None:
    """The notes name the child's threads as its pid namespace sees them;
    write the target's own ids (in that namespace too) in their place."""
    kid, target_ns, pid = run.kid, run.target_ns, run.plan.target.pid
    layout = notes.check_core(core, run.forked.child_ns_pid)
    renames = {kid.ns_tids[c]: ns for c, t in kid.threads.items()
               if (ns := target_ns.get(t)) is not None}
    if len(renames) < len(kid.threads):
        dumped.notes.append("threads that ended right after the fork keep the child's "
                            "ids in the core")
    main = target_ns.get(pid)
    notes.rename_threads(core, layout, renames, main or 0)
    if main is not None:
        notes.main_thread_first(core, main)


def _thread_map(pid: int, run: Run) -> list[dict]:
    """Target thread id, its name, and the LWP the core names it by (its own id
    in its pid namespace, once the notes are rewritten), in the core's order."""
    kid = run.kid
    # The main thread first, as core/notes.main_thread_first orders the notes.
    order = [kid.pid] + [t for t in kid.threads if t != kid.pid]
    order.sort(key=lambda c: kid.threads.get(c) != pid)
    return [{"tid": kid.threads[c], "name": thread_name(pid, kid.threads[c]),
             "core_lwp": run.target_ns.get(kid.threads[c]), "child_tid": c} for c in order]


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
