"""The checks about the target's limits: the memory copy-on-write may cost
(MemAvailable, memory cgroups, memory.oom.group), and the tasks the snapshot
adds under its pids cgroup and RLIMIT_NPROC.
"""

from __future__ import annotations

from snapcore import units
from snapcore.core.dumprules import CoreSize
from snapcore.engine import estimate
from snapcore.engine.checks_writer import SHARED_FILL_WORTH
from snapcore.engine.verdicts import OK, REFUSE, WARN, Preflight
from snapcore.linux.procstat import RLIM_INFINITY

# A cgroup namespace of snapcore's own (a debug container's) hides the
# cgroups outside it: /proc/PID/cgroup names them "/../..." (relative to the
# reader's namespace root), and the cgroup filesystem mounted there shows
# none of them.  No limit found then means nothing.
BLIND_FIX = ("run snapcore in the host's cgroup namespace, e.g. kubectl debug "
             "node/NODE, or nsenter -C -t 1")


def _blind(entry: str) -> str:
    return (f"cannot see the target's cgroup limits from this cgroup namespace "
            f"(its cgroup is {entry})")


def check_memory(pre: Preflight, maps, sizes: CoreSize | None) -> None:
    facts = pre.plan.facts
    if not maps:
        pre.add("memory", OK, "not estimated")
        return
    # The kernel's dump allocates never-written shared memory (maps.data_runs):
    # the target keeps it, as if it had written it.
    filled = sizes.shared_unwritten if sizes and pre.plan.writer == "kernel" else 0
    worst = estimate.cow_worst_case(maps) + filled
    pre.plan.memory_worst = worst
    info = facts.meminfo
    available = info.get("MemAvailable", 0)
    problems, warnings = [], []
    if worst > available:
        problems.append(f"MemAvailable is {units.human(available)}")
    elif worst > available // 2:
        warnings.append(f"that is over half of MemAvailable ({units.human(available)})")
    if facts.overcommit == 2:
        room = info.get("CommitLimit", 0) - info.get("Committed_AS", 0)
        need = estimate.private_writable_size(maps)
        if need > room:
            problems.append(f"strict overcommit leaves {units.human(room)} to commit and "
                            f"fork needs {units.human(need)}")
    cgroup = facts.cgroups.memory_headroom()
    pre.plan.memory_room = min(available, cgroup[1]) if cgroup else available
    pre.plan.memory_limit_file = cgroup[0] if cgroup else ""
    if cgroup and worst > cgroup[1]:
        problems.append(f"its cgroup has {units.human(cgroup[1])} left below "
                        f"{cgroup[0]}")
    grouped = _oom_group(pre, worst, available, problems, warnings)
    what = (f"if the target rewrites all its private memory while the child lives, the "
            f"copies cost up to {units.human(worst - filled)}")
    worth = filled >= SHARED_FILL_WORTH
    if worth:
        what += (f"; the kernel's dump allocates {units.human(filled)} of shared memory the "
                 "process never wrote, which it keeps (snapcore's writer does not)")
    unseen = facts.cgroups.hidden("memory")
    if problems:
        pre.add("memory", REFUSE, f"{what}; {'; '.join(problems)}",
                GROUP_FIX if grouped else "snapshot when the machine has more free memory")
    elif unseen:
        pre.add("memory", WARN, f"{what}; {'; '.join(warnings + [_blind(unseen)])}",
                BLIND_FIX)
    elif worth:
        pre.add("memory", WARN, "; ".join([what] + warnings),
                "let snapcore's writer write the core",
                setting="writer")
    elif warnings:
        pre.add("memory", WARN, f"{what}; {'; '.join(warnings)}",
                "an OOM kill there takes the target too: snapshot when it uses less memory"
                if grouped else "the child has oom_score_adj 1000: the OOM killer takes "
                "it first")
    elif cgroup and cgroup[1] < available:
        pre.add("memory", OK, f"copy-on-write worst case {units.human(worst)}, "
                f"{units.human(cgroup[1])} left under its cgroup's limit ({cgroup[0]})")
    else:
        pre.add("memory", OK, f"copy-on-write worst case {units.human(worst)}, "
                f"{units.human(available)} available")


GROUP_FIX = ("snapshot when it uses less memory, or raise its memory limit (forced, an OOM "
             "kill would take the target too)")


def _oom_group(pre: Preflight, worst: int, available: int, problems, warnings) -> bool:
    """With memory.oom.group set at or below a limit (or anywhere on the path,
    for the machine's own OOM), an OOM kill takes every task of that cgroup:
    the child's oom_score_adj 1000 no longer spares the target.  The copies
    may then take half the room there at most (refused beyond, forceable like
    the rest of this check), and the dump's controller keeps to that half."""
    found = pre.plan.facts.cgroups.oom_group()
    if found is None:
        return False
    group, tightest = found
    where, room = "the machine's MemAvailable", available
    if tightest is not None and tightest[1] < available:
        where, room = tightest
        pre.plan.memory_limit_file = tightest[0]
    pre.plan.memory_room = min(pre.plan.memory_room, room // 2)
    said = (f"{group}/memory.oom.group is 1: an OOM kill under {where} takes every task "
            f"of that cgroup, the target with the child")
    if worst > room // 2:
        problems.append(f"{said}, and the worst case is over half of the "
                        f"{units.human(room)} left there")
    else:
        warnings.append(said)
    return True


def tasks_added(threads: int, writer: str = "kernel") -> int:
    """Most tasks a snapshot adds at once, for the whole dump: the fork
    thread, the sentinel and the child (engine/forkthread.py), and for the
    kernel's writer one recreated thread in the child per other thread
    (snapcore's writer recreates none)."""
    return 3 if writer == "snapcore" else threads + 2


def check_tasks(pre: Preflight) -> None:
    """The snapshot's tasks count against the target's pids cgroup and its
    user's RLIMIT_NPROC (kernel/fork.c: copy_process checks both): near either
    limit, they would make the target's own fork or pthread_create fail."""
    t, facts = pre.plan.target, pre.plan.facts
    need = tasks_added(len(t.threads), pre.plan.writer)
    limits = []
    cgroup = facts.cgroups.tasks_headroom()
    if cgroup is not None:
        limits.append((cgroup[0], cgroup[1]))
    nproc = facts.limits.get("Max processes", (RLIM_INFINITY,))[0]
    if t.uid != 0 and nproc != RLIM_INFINITY:  # root's user is exempt
        limits.append((f"RLIMIT_NPROC of uid {t.uid} ({nproc})",
                       nproc - facts.tasks_of_user(t.uid)))
    tight = [(what, room) for what, room in limits if room - need < need]
    if tight:
        what, room = tight[0]
        pre.add("tasks", REFUSE, f"the snapshot adds up to {need} tasks and {what} leaves "
                f"room for {room}: the process's own forks and threads would fail",
                "raise the limit, or snapshot the main thread only", setting="threads")
    elif unseen := facts.cgroups.hidden("pids"):
        pre.add("tasks", WARN, f"the snapshot adds up to {need} tasks; {_blind(unseen)}",
                BLIND_FIX)
    elif limits:
        pre.add("tasks", OK, f"the snapshot adds up to {need} tasks; room for "
                f"{min(room for _, room in limits)}")
    else:
        pre.add("tasks", OK, f"the snapshot adds up to {need} tasks; no task limit")
