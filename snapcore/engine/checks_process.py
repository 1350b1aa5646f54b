"""The checks about the process itself: may it be traced, is it traced
already, is it in a state that can stop, would its seccomp filters let every
injected call run, did it keep its memory out of cores.
"""

from __future__ import annotations

import os


from snapcore.engine import child as childmod
from snapcore.engine import fork
from snapcore.engine.verdicts import OK, REFUSE, WARN, Options, Preflight
from snapcore.errors import NoSuchProcess, PermissionDenied, SnapcoreError, Stage
from snapcore.linux import arch, cgroups, ptrace, seccomp
from snapcore.linux.inject import TargetReplaced
from snapcore.linux.procfs import (ancestors, mm_fingerprint, start_time, thread_name,
                                   thread_state)
from snapcore.linux.proctext import proc_open
from snapcore.linux.window import peek

CAP_SYS_PTRACE = 19


CAP_SYS_ADMIN = 21


def _capabilities() -> int:
    with proc_open("/proc/self/status") as f:
        for line in f:
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    return 0


def _has_cap(cap: int) -> bool:
    return bool(_capabilities() & (1 << cap))


def _ptrace_scope() -> int | None:
    try:
        with open("/proc/sys/kernel/yama/ptrace_scope") as f:
            return int(f.read())
    except OSError:
        return None  # no Yama: classic ptrace rules


def _in_container() -> bool:
    return os.path.exists("/.dockerenv") or os.path.exists("/run/.containerenv")


def check_permission(pre: Preflight) -> None:
    t = pre.target
    cap = _has_cap(CAP_SYS_PTRACE)
    scope = _ptrace_scope()
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
    t = pre.target
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
    elif t.pid == me or t.pid in ancestors(me):
        pre.add("state", REFUSE, f"process {t.pid} ({t.name}) is snapcore itself or one "
                "of its parents", "run snapcore from another shell")
    elif t.state in "Tt":
        pre.add("state", REFUSE, f"process {t.pid} ({t.name}) is stopped (state {t.state})",
                "it must stay stopped: resume it (kill -CONT) before a snapshot")
    elif t.elf_class != 2 or t.elf_machine != arch.ELF_MACHINE:
        pre.add("state", REFUSE, f"process {t.pid} ({t.name}) is not a 64-bit x86_64 "
                "process", "snapcore supports 64-bit x86_64 processes only")
    elif cgroups.frozen(t.pid):
        where = cgroups.frozen(t.pid)
        pre.add("state", REFUSE, f"process {t.pid} ({t.name}) is in a frozen cgroup "
                f"({where}): it cannot stop for a snapshot until it is thawed",
                "thaw it first (freezer.state THAWED, or cgroup.freeze 0)")
    else:
        stuck = [tid for tid in t.threads if _safe_state(t.pid, tid) == "D"]
        if stuck:
            pre.add("state", WARN, f"{len(stuck)} thread(s) in uninterruptible sleep "
                    f"(e.g. {stuck[0]})", "snapcore waits up to its stop timeout for them, "
                    "then leaves the process untouched", setting="timeout")
        else:
            pre.add("state", OK, f"running (state {t.state}), {len(t.threads)} thread(s)")


def _safe_state(pid: int, tid: int) -> str:
    try:
        return thread_state(pid, tid)
    except OSError:
        return "?"


def planned_syscalls(threads: int) -> list[tuple[str, str, tuple[int, ...]]]:
    """Every syscall snapcore injects: (where, name, args), pointers and pids as 0.
    The engine checks each again just before it runs, with its real arguments."""
    calls = [("target", "clone", (fork.INTERMEDIATE_FLAGS, 0, 0, 0, 0)),
             ("target", "wait4", (0, 0, fork.REAP_OPTIONS, 0)),
             ("target", "prctl", (fork.PR_GET_CHILD_SUBREAPER, 0)),
             ("target", "prctl", (fork.PR_SET_NAME, 0)),
             ("target", "mmap", (0, arch.PAGE_SIZE, fork.PROT_READ_WRITE,
                                 fork.MAP_PRIVATE_ANONYMOUS, -1, 0)),
             ("target", "munmap", (0, arch.PAGE_SIZE)),
             ("target", "clone", (fork.SNAPSHOT_FLAGS, 0, 0, 0, 0)),
             ("target", "clone", (fork.SNAPSHOT_FLAGS_ADOPTED, 0, 0, 0, 0))]
    for name, args in childmod.CHILD_SYSCALLS:
        calls.append(("child", name, args))
    calls.append(("child", "close", (0,)))  # close_range's fallback, kernels before 5.9
    if threads > 1:
        calls.append(("child", "clone", (childmod.CLONE_THREAD_FLAGS, 0, 0, 0, 0)))
    return calls


def check_seccomp(pre: Preflight, opts: Options, candidates: list[int]) -> None:
    """Judge every planned syscall at each candidate `syscall` instruction (a
    filter may look at the instruction pointer) and keep the first address
    where all would run."""
    t = pre.target
    if t.seccomp == 0:
        pre.add("seccomp", OK, "no seccomp filter")
        return
    if t.seccomp == 1:
        pre.add("seccomp", REFUSE, f"process {t.pid} ({t.name}) runs in strict seccomp "
                "mode: any injected syscall but read/write/exit kills it",
                "it cannot be snapshot safely")
        return
    if not _has_cap(CAP_SYS_ADMIN):
        pre.add("seccomp", REFUSE, f"process {t.pid} ({t.name}) has seccomp filters, and "
                "reading them needs CAP_SYS_ADMIN", "run as root (sudo)")
        return
    try:
        raw = peek(t.pid, ptrace.seccomp_filters, opts.timeout)  # SIGCHLD: see run()
        pre.filters = [seccomp.parse(r) for r in raw]
        guard = seccomp.Guard(pre.filters, arch.AUDIT_ARCH)
        blocked: list[str] = []
        for at in candidates:
            blocked = [f"{name} in the {where}: {seccomp.describe(ret)}"
                       for where, name, args in planned_syscalls(len(t.threads))
                       if seccomp.action(ret := guard.allows(arch.NR[name], args, at))
                       not in seccomp.HARMLESS]
            if not blocked:
                pre.syscall_at = at
                break
    except (SnapcoreError, seccomp.FilterError) as exc:
        raced = exec_race(pre, exc, Stage.PREFLIGHT)
        if raced is not exc:
            raise raced from None
        pre.add("seccomp", REFUSE, f"cannot evaluate the seccomp filters of {t.pid}: "
                f"{exc}", "leave this process alone, or snapshot it with gcore")
        return
    if blocked:
        pre.add("seccomp", REFUSE, f"the seccomp filters of {t.pid} ({t.name}) would not "
                f"allow {'; '.join(blocked)}", "an injected syscall must never be denied "
                "or kill the process: it cannot be snapshot safely")
    else:
        pre.add("seccomp", OK, f"{len(pre.filters)} seccomp filter(s) allow every injected "
                f"syscall from {pre.syscall_at:#x}")


def exec_race(pre: Preflight, exc, stage: Stage):
    """What a refusal to trace the target really was.  ptrace answers EPERM,
    not ESRCH, to a task whose exit has begun: the main thread that another
    thread's exec replaces (de_thread), when snapcore named it by its pid
    just before, and the exec is through by the time the answer comes.  A
    process whose memory layout or executable changed since the preflight
    was exec'ing: say so, not "run as root".  Other errors are given back."""
    t = pre.target
    if not isinstance(exc, PermissionDenied) or not pre.fingerprint \
            or exc.pid not in (t.pid, *t.threads):
        return exc
    try:
        gone = start_time(t.pid) != t.start_time  # its pid is another process's now
        changed = (mm_fingerprint(t.pid) != pre.fingerprint
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
    t = pre.target
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
