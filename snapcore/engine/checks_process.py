"""The checks about the process itself: may it be traced, is it traced
already, is it in a state that can stop, would its seccomp filters let every
injected call run, did it keep its memory out of cores.
"""

from __future__ import annotations

import os


from snapcore.engine.plan import Plan
from snapcore.engine.verdicts import OK, REFUSE, WARN, Preflight
from snapcore.errors import NoSuchProcess, PermissionDenied, Stage, TargetReplaced
from snapcore.linux import arch
from snapcore.linux.procfs import mm_fingerprint, start_time, thread_name
from snapcore.linux.procstat import capabilities

CAP_SYS_PTRACE = 19


CAP_SYS_ADMIN = 21


def _has_cap(cap: int) -> bool:
    """Whether snapcore has capability `cap` now (the checks: pre.plan.facts)."""
    return bool(capabilities() & (1 << cap))


def _in_container() -> bool:
    return os.path.exists("/.dockerenv") or os.path.exists("/run/.containerenv")


def check_permission(pre: Preflight) -> None:
    t, facts = pre.plan.target, pre.plan.facts
    cap = bool(facts.capabilities & (1 << CAP_SYS_PTRACE))
    scope = facts.ptrace_scope
    me = os.geteuid()
    container = " (in a container, start it with --cap-add SYS_PTRACE)" if _in_container() \
        else ""
    if scope == 3:
        pre.add("permission", REFUSE, "kernel.yama.ptrace_scope is 3: no process may be "
                "traced until reboot", "nothing to do until the next boot")
    elif not cap and scope == 2:
        pre.add("permission", REFUSE, "kernel.yama.ptrace_scope is 2: only CAP_SYS_PTRACE "
                "may trace", "run as root (sudo)" + container)
    elif not cap and t.uid != me:
        pre.add("permission", REFUSE, f"process {t.pid} belongs to uid {t.uid}, you are "
                f"uid {me}", "run as root (sudo) or with CAP_SYS_PTRACE" + container)
    elif not cap and scope == 1:
        pre.add("permission", REFUSE, "kernel.yama.ptrace_scope is 1: only a parent may "
                "trace its children without CAP_SYS_PTRACE",
                "run as root (sudo), or set kernel.yama.ptrace_scope=0" + container)
    elif t.elf_class < 0:
        pre.add("permission", REFUSE, f"not permitted to read process {t.pid}'s executable "
                f"({t.name})", "run snapcore as root (sudo) or as the process's owner"
                + container)
    else:
        how = "CAP_SYS_PTRACE" if cap else f"same user (uid {me})"
        pre.add("permission", OK, f"may trace: {how}"
                + (f"; ptrace_scope {scope}" if scope is not None else ""))


def check_state(pre: Preflight) -> None:
    t, facts = pre.plan.target, pre.plan.facts
    me = os.getpid()
    if t.state in "ZX":
        pre.add("state", REFUSE, f"process {t.pid} ({t.name}) is a zombie",
                "it has exited; there is no memory left to dump")
    elif t.tgid != t.pid:
        pre.add("state", REFUSE, f"{t.pid} is a thread of process {t.tgid}, not a process",
                f"snapshot the process: snapcore {t.tgid}")
    elif t.kernel_thread:
        pre.add("state", REFUSE, f"process {t.pid} ({t.name}) is a kernel thread",
                "kernel threads have no user memory to dump")
    elif t.pid == me or t.pid in facts.my_ancestors:
        pre.add("state", REFUSE, f"process {t.pid} ({t.name}) is snapcore itself or one "
                "of its parents", "run snapcore from another shell")
    elif t.state in "Tt":
        pre.add("state", REFUSE, f"process {t.pid} ({t.name}) is stopped (state {t.state})",
                "it must stay stopped: resume it (kill -CONT) before a snapshot")
    elif t.elf_class != 2 or t.elf_machine != arch.ELF_MACHINE:
        pre.add("state", REFUSE, f"process {t.pid} ({t.name}) is not a 64-bit {arch.NAME} "
                "process", f"snapcore supports 64-bit {arch.NAME} processes only")
    elif where := facts.cgroups.frozen():
        pre.add("state", REFUSE, f"process {t.pid} ({t.name}) is in a frozen cgroup "
                f"({where}): it cannot stop for a snapshot until it is thawed",
                "thaw it first (freezer.state THAWED, or cgroup.freeze 0)")
    else:
        stuck = [tid for tid in t.threads if facts.thread_state(tid) == "D"]
        if stuck:
            pre.add("state", WARN, f"{len(stuck)} thread(s) in uninterruptible sleep "
                    f"(e.g. {stuck[0]})", "snapcore waits up to its stop timeout for them, "
                    "then leaves the process untouched", setting="timeout")
        else:
            pre.add("state", OK, f"running (state {t.state}), {len(t.threads)} thread(s)")


def exec_race(plan: Plan, exc, stage: Stage):
    """What a refusal to trace the target really was.  ptrace answers EPERM,
    not ESRCH, to a task whose exit has begun: the main thread that another
    thread's exec replaces (de_thread), when snapcore named it by its pid
    just before, and the exec is through by the time the answer comes.  A
    process whose memory layout or executable changed since the preflight
    was exec'ing: say so, not "run as root".  Other errors are given back.
    Read live: what the process is now, not what the preflight saw."""
    t = plan.target
    if not isinstance(exc, PermissionDenied) or not plan.fingerprint \
            or exc.pid not in (t.pid, *t.threads):
        return exc
    try:
        gone = start_time(t.pid) != t.start_time  # its pid is another process's now
        changed = (mm_fingerprint(t.pid) != plan.fingerprint
                   or os.readlink(f"/proc/{t.pid}/exe") != t.exe)
    except OSError:
        gone = True
    if gone:
        return NoSuchProcess(f"process {t.pid} exited while snapcore attached",
                             "nothing to snapshot", pid=t.pid, stage=stage)
    if not changed:
        return exc
    return TargetReplaced(f"the process {t.pid} exec'd a new program while snapcore "
                          "attached", "nothing was done to it; try again", pid=t.pid,
                          stage=stage)


def check_dumpable(pre: Preflight) -> None:
    t = pre.plan.target
    # /proc/PID/* belong to root when the process is not dumpable
    # (fs/proc/base.c: task_dump_owner); for root's processes it cannot show.
    if t.euid != 0 and t.proc_owner == 0 and not t.kernel_thread:
        pre.add("dumpable", REFUSE, f"process {t.pid} ({t.name}) made itself non-dumpable "
                "(PR_SET_DUMPABLE 0 or a set-uid start): it keeps its memory out of cores",
                "respect that, unless you own the secrets in it")
    else:
        pre.add("dumpable", OK, "dumpable" + (" (checked again in the child)"
                                              if t.euid == 0 else ""))


def name_of(pid: int) -> str:
    return thread_name(pid, pid) or "?"
