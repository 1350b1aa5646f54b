"""The checks about what snapcore will run in the process: its seccomp
filters, which belong to threads, must let every injected call run in the
thread that will run them; and the fork must not wait for a thread the
window holds (a userfaultfd with fork events).
"""

from __future__ import annotations

import os

from snapcore.engine import calls
from snapcore.engine.checks_process import CAP_SYS_ADMIN, _has_cap, exec_race
from snapcore.engine.kernelerrors import meaning
from snapcore.engine.request import Request
from snapcore.engine.verdicts import OK, REFUSE, Preflight
from snapcore.errors import Stage
from snapcore.linux import arch, ptrace, seccomp
from snapcore.linux.procfs import thread_seccomp
from snapcore.linux.proctext import proc_open
from snapcore.linux.userfaultfd import EVENT_FORK, REGISTERED, features
from snapcore.linux.window import peek


def planned_syscalls(threads: int) -> list[tuple[str, str, tuple[int, ...]]]:
    """Every syscall snapcore may inject whose refusal would stop a snapshot
    (engine/calls.py): (who runs it, name, args), pointers and pids as 0.
    All run under the runner's seccomp filters: the fork thread, the tasks
    it makes and the child inherit them.  The engine checks each again just
    before it runs, with its real address and arguments."""
    return [(c.who, c.name, c.judged()) for c in calls.planned(threads)]


def planned_refusals(threads: int):
    """refused(guard, at) -> which planned calls a thread's filters would not
    let run from the `syscall` at `at` ("" when all would run)."""
    planned = calls.planned(threads)

    def refused(guard: seccomp.Guard, at: int) -> str:
        return "; ".join(f"{c.name} in the {c.who}: {seccomp.describe(ret)}"
                         for c in planned
                         if seccomp.action(ret := guard.allows(c.nr, c.judged(), at))
                         not in seccomp.HARMLESS)
    return refused


def check_seccomp(pre: Preflight, opts: Request, candidates: list[int]) -> None:
    """Seccomp filters belong to threads.  The thread that runs the injected
    calls (and so the fork thread and the child after it) must be one whose
    own filters let every planned call run: find one, and the first `syscall`
    address from which all would.  The window reads the filters again, once
    no thread can install one (engine/fork.py: choose_runner)."""
    t = pre.plan.target
    modes = {tid: thread_seccomp(t.pid, tid) for tid in t.threads}
    if not any(modes.values()):
        pre.add("seccomp", OK, "no seccomp filter")
        return
    free = [tid for tid, mode in modes.items() if mode == 0]
    if free:
        pre.add("seccomp", OK, f"thread {free[0]} has no seccomp filter (filters belong to "
                f"threads: {len(modes) - len(free)} of {len(modes)} have some)")
        return
    if all(mode == 1 for mode in modes.values()):
        pre.add("seccomp", REFUSE, f"process {t.pid} ({t.name}) runs in strict seccomp "
                "mode: any injected syscall but read/write/exit kills it",
                "it cannot be snapshot safely")
        return
    why_not = _unreadable_filters()
    if why_not:
        pre.add("seccomp", REFUSE, f"process {t.pid} ({t.name}) has seccomp filters, and "
                f"{why_not[0]}", why_not[1])
        return
    _judge_threads(pre, opts, candidates, [tid for tid, mode in modes.items() if mode == 2])


def _unreadable_filters() -> tuple[str, str] | None:
    """Why this snapcore cannot read another process's filters: the kernel
    shows them only to a tracer with CAP_SYS_ADMIN that is under no seccomp
    filter itself (kernel/seccomp.c: get_nth_filter's callers).  A container
    runtime's defaults take both away: its capability set has no SYS_ADMIN,
    and its default seccomp profile confines whatever runs in it."""
    admin, confined = _has_cap(CAP_SYS_ADMIN), bool(_own_seccomp())
    unconfine = ("--security-opt seccomp=unconfined (podman, docker), or kubectl debug "
                 "--profile=sysadmin")
    if not admin and confined:
        return ("the kernel shows them only to a tracer that has CAP_SYS_ADMIN and is under "
                "no seccomp filter itself: snapcore has neither (a container's default "
                "capabilities and seccomp profile)", "run it privileged, or with "
                f"--cap-add SYS_ADMIN and {unconfine}")
    if not admin:
        if os.geteuid() != 0:
            return ("reading them needs CAP_SYS_ADMIN", "run as root (sudo)")
        return ("reading them needs CAP_SYS_ADMIN, which this root lacks (a container's "
                "default capabilities)", "add it: --cap-add SYS_ADMIN (podman, docker), "
                "or kubectl debug --profile=sysadmin")
    if confined:
        return ("the kernel shows them only to a tracer that is under no seccomp filter "
                "itself, and snapcore runs under one (a container runtime's default "
                "profile)", f"run snapcore unconfined: {unconfine}")
    return None


def _own_seccomp() -> int:
    with proc_open("/proc/self/status") as f:
        for line in f:
            if line.startswith("Seccomp:"):
                return int(line.split()[1])
    return 0


def _judge_threads(pre: Preflight, opts: Request, candidates: list[int],
                   filtered: list[int]) -> None:
    """Read the filters of the threads that have some, main thread first, until
    one allows every planned call from one of the `syscall` candidates."""
    t = pre.plan.target
    refused_by = planned_refusals(len(t.threads))
    order = sorted(filtered, key=lambda tid: tid != t.pid)
    reasons: list[str] = []
    for tid in order[:8]:  # each read holds that thread for a moment
        try:
            raw = peek(tid, ptrace.seccomp_filters, opts.timeout)  # SIGCHLD: see run()
            guard = seccomp.Guard([seccomp.parse(r) for r in raw], arch.AUDIT_ARCH)
            for at in candidates:
                blocked = refused_by(guard, at)
                if not blocked:
                    pre.plan.syscall_at = at
                    pre.add("seccomp", OK, f"thread {tid}'s {len(raw)} seccomp filter(s) "
                            f"allow every injected syscall from {at:#x}")
                    return
            reasons.append(f"thread {tid}: {blocked}")
        except (ptrace.PtraceFailed, seccomp.FilterError) as failed:
            exc = meaning(failed)  # what the peek's ptrace failure means
            raced = exec_race(pre.plan, exc, Stage.PREFLIGHT)
            if raced is not exc:
                raise raced from None
            reasons.append(f"thread {tid}: cannot evaluate its filters ({exc})")
    pre.add("seccomp", REFUSE, f"the seccomp filters of {t.pid} ({t.name}) would not allow "
            f"snapcore's calls in any thread ({'; '.join(reasons[:2])})", "an injected "
            "syscall must never be denied or kill the process: it cannot be snapshot safely")


def check_userfaultfd(pre: Preflight, maps) -> None:
    """A fork copies memory registered with a userfaultfd that asked for fork
    events only once its monitor has read the event (fs/userfaultfd.c:
    dup_userfaultfd_complete): a monitor thread snapcore holds would never
    read it.  The window lets the target go at its timeout all the same."""
    t = pre.plan.target
    registered = [m for m in maps if m.flags & set(REGISTERED)]
    if not registered:
        pre.add("userfaultfd", OK, "no memory registered with a userfaultfd")
        return
    found = features(t.pid)
    if any(f & EVENT_FORK for f in found):
        pre.add("userfaultfd", REFUSE, f"process {t.pid} ({t.name}) has a userfaultfd with "
                "fork events: its fork waits until its monitor reads the event, and the "
                "monitor is a thread snapcore would hold", "it cannot be snapshot: a fork "
                "would stall it until the stop timeout")
    elif not found:
        pre.add("userfaultfd", REFUSE, f"process {t.pid} ({t.name}) has memory registered "
                "with a userfaultfd it holds no descriptor of (a monitor elsewhere may ask "
                "for fork events, and its fork would wait for that monitor)",
                "it cannot be snapshot safely")
    else:
        pre.add("userfaultfd", OK, f"{len(registered)} mapping(s) under a userfaultfd "
                "without fork events")
