"""The phases after preflight: the fork (the one stop window), then the
writer the preflight chose, behind one door (engine/phase.py): the kernel's
(engine/dump_kernel.py) or snapcore's (engine/dump_snapcore.py).  Whatever
happens after the fork, the child is ended and the fork thread reaps it and
leaves (fork.finish).
"""

from __future__ import annotations

from snapcore.engine import child as childmod
from snapcore.engine import dump, dump_kernel, dump_snapcore, interrupts, keeper
from snapcore.engine import fork as forkmod
from snapcore.engine.checks_seccomp import planned_refusals
from snapcore.engine.identity import identity_check
from snapcore.engine.phase import Dumped, Job, Run
from snapcore.errors import Stage
from snapcore.linux.procfs import ns_tid

WRITERS = {"kernel": dump_kernel, "snapcore": dump_snapcore}


def fork_and_dump(job: Job, pidfd: int) -> Dumped:
    """Fork the target in one stop window, then let the chosen writer dump
    the child and store its core."""
    plan, target = job.plan, job.plan.target
    forked: forkmod.Forked | None = None
    kid: childmod.Child | None = None
    job.memory.begin()
    try:
        # A stop request between fork's return and here would leave the fork
        # thread and the child to no one: until both are in hand it waits.
        with interrupts.cleanup():
            forked = forkmod.fork(
                target.pid, plan.syscall_at,
                threads=target.threads if job.request.threads == "all" else None,
                timeout=job.request.timeout, check=identity_check(plan, pidfd, Stage.CAPTURE),
                planned=planned_refusals(len(target.threads)), pages=plan.stale_pages,
                sites=plan.sites)
            kid = _child_of(forked)
        held = [forked.runner, *forked.others]
        run = Run.after_fork(job, forked, kid,
                             {t.tid: ns_tid(target.pid, t.tid) for t in held})
        dumped = WRITERS[plan.writer].dump_and_store(run)
    except BaseException:
        if forked is not None:
            with interrupts.cleanup():
                if kid is not None:
                    dump.kill(kid)
                forkmod.finish(forked.thread)
        raise
    with interrupts.cleanup():
        dump.kill(kid)  # a no-op: each writer ends it
        dumped.notes += forkmod.finish(forked.thread)
    dumped.pause, dumped.child_pid = forked.timings, kid.pid
    return dumped


def _child_of(forked: forkmod.Forked) -> childmod.Child:
    kid = childmod.Child(forked.child, guard=forked.thread.guard, notes=list(forked.notes),
                         page=forked.thread.page)
    kid.ns_tids[kid.pid] = forked.child_ns_pid
    kid.keeper = lambda: keeper.service(forked.thread)
    kid.parent = forkmod.Parent(forked.thread)
    return kid
