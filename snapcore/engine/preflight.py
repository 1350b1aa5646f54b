"""Everything that could stop a snapshot or hurt the target, the host or the
operator, checked before the target is touched.

Each check gives a verdict: ok, warn or refuse, with a reason and a fix.
`snapcore check PID` shows them all; `snapcore PID` refuses on the first
refusal unless the operator overrides that check by name (--force CHECK),
and some checks cannot be overridden at all.
"""

from __future__ import annotations

import signal

from snapcore.core import core_pattern, dumprules
from snapcore.engine import checks_host, checks_limits, checks_process, checks_seccomp, leftovers
from snapcore.engine.plan import Plan
from snapcore.engine.request import Request
from snapcore.engine.verdicts import (CHECKS, FORCEABLE, OK, REFUSE, WARN, Check,  # noqa: F401
                                      Preflight, Refused)
from snapcore.errors import Stage
from snapcore.linux import landing, maps, stops
from snapcore.linux.facts import Facts
from snapcore.linux.procfs import read, reading, syscall_instructions


def run(pid: int, opts: Request) -> Preflight:
    """Every check; reads /proc and the filesystem, and stops the target's main
    thread for a moment only to read its seccomp filters (PTRACE_SECCOMP_GET_FILTER
    works on a stopped tracee only).  SIGCHLD is blocked meanwhile, as the
    ptrace waits need (linux/stops.py)."""
    with stops.signals_held([signal.SIGCHLD]), reading(pid, Stage.PREFLIGHT):
        return _run(pid, opts)


def _run(pid: int, opts: Request) -> Preflight:
    facts = Facts(pid)  # each /proc file the checks read, read once
    pre = Preflight(Plan(read(pid, facts), facts, core_pattern.read_core_pattern()))
    t = pre.plan.target
    checks_process.check_permission(pre)
    if t.tracer:
        pre.add("tracer", REFUSE, f"process {pid} ({t.name}) is already traced by "
                f"{t.tracer} ({checks_process.name_of(t.tracer)})",
                "busy: detach gdb/strace (or wait for the other snapcore) first")
    else:
        pre.add("tracer", OK, "not traced")
    checks_process.check_state(pre)
    usable = not pre.refusals()
    if usable:
        pre.plan.fingerprint = facts.stat.fingerprint  # checked live at each stop (identity.py)
        candidates = syscall_instructions(pid)
        pre.plan.syscall_at = candidates[0]
        pre.plan.sites = landing.find(pid, pre.plan.facts.status)
        checks_seccomp.check_seccomp(pre, opts, candidates)
    else:
        pre.add("seccomp", OK if t.seccomp == 0 else REFUSE,
                f"Seccomp: {t.seccomp}", "not evaluated: the process cannot be snapshot")
    checks_process.check_dumpable(pre)
    vmas = maps.read_smaps(pid) if usable and not t.kernel_thread else []
    checks_seccomp.check_userfaultfd(pre, vmas)
    pre.plan.stale_pages = leftovers.stale_pages(pid, vmas)
    sizes = dumprules.core_size(pid, vmas, len(t.threads), facts.coredump_filter) \
        if vmas else None
    pattern = pre.plan.core_pattern
    checks_host.check_core_destination(pre, opts, sizes)
    checks_host.check_output_dir(pre, opts)
    checks_host.check_staging(pre, opts, pattern)
    checks_host.check_disk(pre, opts, sizes, pattern)
    checks_limits.check_memory(pre, vmas, sizes)
    checks_limits.check_tasks(pre)
    checks_host.check_rate(pre, opts)
    pre.plan.regions_missing = [{"start": m.start, "end": m.end,
                            "kind": "dontfork" if "dc" in m.flags else "wipeonfork",
                            "path": m.path}
                           for m in vmas if "dc" in m.flags or "wf" in m.flags]
    return pre


