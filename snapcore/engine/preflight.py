"""Everything that could stop a snapshot or hurt the target, the host or the
operator, checked before the target is touched.

Each check gives a verdict: ok, warn or refuse, with a reason and a fix.
`snapcore check PID` shows them all; `snapcore PID` refuses on the first
refusal unless the operator overrides that check by name (--force CHECK),
and some checks cannot be overridden at all.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil

from snapcore.linux import arch
from snapcore.linux import cgroups
from snapcore.engine import child as childmod
from snapcore.core import corefile
from snapcore.engine import estimate
from snapcore.engine import fork
from snapcore.linux import ptrace
from snapcore.linux import seccomp
from snapcore.errors import ExitCode, SnapcoreError
from snapcore.linux.inject import peek
from snapcore.engine.ratelimit import RateLimiter, key_for, time_text
from snapcore.linux.procfs import (Target, mm_fingerprint, read, reading, syscall_instructions,
                     thread_state)

OK, WARN, REFUSE = "ok", "warn", "refuse"

# name -> (exit code of its refusal, whether --force may override it)
CHECKS = {
    "permission": (ExitCode.PERMISSION, False),
    "tracer": (ExitCode.BUSY, False),
    "state": (ExitCode.UNSUPPORTED, False),
    "seccomp": (ExitCode.UNSUPPORTED, False),
    "dumpable": (ExitCode.CORE_NOT_WRITTEN, True),
    "core-pattern": (ExitCode.CORE_NOT_WRITTEN, False),
    "core-limit": (ExitCode.CORE_NOT_WRITTEN, False),
    "output-dir": (ExitCode.OUTPUT, True),
    "disk": (ExitCode.OUTPUT, True),
    "memory": (ExitCode.MEMORY, True),
    "tasks": (ExitCode.LIMITS, True),
    "rate-limit": (ExitCode.RATE_LIMITED, True),
}
FORCEABLE = tuple(name for name, (_, forceable) in CHECKS.items() if forceable)

CAP_SYS_PTRACE = 19
CAP_SYS_ADMIN = 21


@dataclass
class Check:
    name: str
    verdict: str
    reason: str
    fix: str = ""

    @property
    def exit_code(self) -> ExitCode:
        return CHECKS[self.name][0]

    @property
    def forceable(self) -> bool:
        return CHECKS[self.name][1]


@dataclass
class Options:
    output_dir: Path
    min_free: str = "10%"  # free space to leave on the output filesystem
    max_per_hour: int = 4  # 0: no limit
    timeout: float = 2.0
    clock: object = time.time


@dataclass
class Preflight:
    target: Target
    checks: list[Check] = field(default_factory=list)
    core_estimate: int = 0
    core_pattern: corefile.CorePattern | None = None
    syscall_at: int = 0  # the `syscall` instruction injections will use
    filters: list = field(default_factory=list)  # the target's seccomp filters, parsed
    fingerprint: tuple = ()  # target.mm_fingerprint: its program, to notice an exec
    regions_missing: list[dict] = field(default_factory=list)

    def add(self, name: str, verdict: str, reason: str, fix: str = "") -> None:
        self.checks.append(Check(name, verdict, reason, fix))

    def refusals(self, forced=()) -> list[Check]:
        return [c for c in self.checks
                if c.verdict == REFUSE and not (c.forceable and c.name in forced)]

    def as_dicts(self) -> list[dict]:
        return [dict(asdict(c), forceable=c.forceable) for c in self.checks]


class Refused(SnapcoreError):
    """A preflight check said no; its exit code is the check's."""

    def __init__(self, check: Check, pid: int):
        super().__init__(check.reason, check.fix, pid=pid, stage="preflight")
        self.exit_code = check.exit_code
        self.check = check.name if check.forceable else ""
        self.check_name = check.name


def run(pid: int, opts: Options) -> Preflight:
    """Every check; reads /proc and the filesystem, and stops the target's main
    thread for a moment only to read its seccomp filters (PTRACE_SECCOMP_GET_FILTER
    works on a stopped tracee only)."""
    with reading(pid, "preflight"):
        return _run(pid, opts)


def _run(pid: int, opts: Options) -> Preflight:
    pre = Preflight(read(pid))
    t = pre.target
    _permission(pre)
    if t.tracer:
        pre.add("tracer", REFUSE, f"process {pid} ({t.name}) is already traced by "
                f"{t.tracer} ({_name_of(t.tracer)})",
                "busy: detach gdb/strace (or wait for the other snapcore) first")
    else:
        pre.add("tracer", OK, "not traced")
    _state(pre)
    usable = not pre.refusals()
    if usable:
        pre.fingerprint = mm_fingerprint(pid)
        candidates = syscall_instructions(pid)
        pre.syscall_at = candidates[0]
        _seccomp(pre, opts, candidates)
    else:
        pre.add("seccomp", OK if t.seccomp == 0 else REFUSE,
                f"Seccomp: {t.seccomp}", "not evaluated: the process cannot be snapshot")
    _dumpable(pre)
    pattern = _core_destination(pre)
    pre.core_pattern = pattern
    _output_dir(pre, opts)
    maps = estimate.read_smaps(pid) if usable and not t.kernel_thread else []
    _disk(pre, opts, maps, pattern)
    _memory(pre, maps)
    _tasks(pre)
    _rate(pre, opts)
    pre.regions_missing = [{"start": m.start, "end": m.end,
                            "kind": "dontfork" if "dc" in m.flags else "wipeonfork",
                            "path": m.path}
                           for m in maps if "dc" in m.flags or "wf" in m.flags]
    return pre


def _capabilities() -> int:
    with open("/proc/self/status") as f:
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


def _permission(pre: Preflight) -> None:
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


def _state(pre: Preflight) -> None:
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
    elif t.pid == me or t.pid in {p.pid for p in psutil.Process(me).parents()}:
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
                    f"(e.g. {stuck[0]})", "snapcore waits up to --timeout for them, then "
                    "leaves the process untouched")
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
             ("target", "mmap", (0, fork.PAGE, fork.PROT_READ_WRITE,
                                 fork.MAP_PRIVATE_ANONYMOUS, -1, 0)),
             ("target", "munmap", (0, fork.PAGE)),
             ("target", "clone", (fork.SNAPSHOT_FLAGS, 0, 0, 0, 0)),
             ("target", "clone", (fork.SNAPSHOT_FLAGS_ADOPTED, 0, 0, 0, 0))]
    for name, args in childmod.CHILD_SYSCALLS:
        calls.append(("child", name, args))
    calls.append(("child", "close", (0,)))  # close_range's fallback, kernels before 5.9
    if threads > 1:
        calls.append(("child", "clone", (childmod.CLONE_THREAD_FLAGS, 0, 0, 0, 0)))
    return calls


def _seccomp(pre: Preflight, opts: Options, candidates: list[int]) -> None:
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
        with ptrace.signals_held([signal.SIGCHLD]):
            raw = peek(t.pid, ptrace.seccomp_filters, opts.timeout)
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


def _dumpable(pre: Preflight) -> None:
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


def _core_destination(pre: Preflight) -> corefile.CorePattern:
    t = pre.target
    pattern = corefile.read_core_pattern()
    if pattern.kind == "pipe":
        try:
            with open("/proc/sys/kernel/core_pipe_limit") as f:
                limit = f.read().strip()
        except OSError:
            limit = "?"
        pre.add("core-pattern", WARN, f"core_pattern pipes cores to {pattern.handler} "
                f"(core_pipe_limit {limit}): the core goes there, not to the output "
                "directory", "look it up with the handler's tools (coredumpctl)")
    elif pattern.kind == "absolute" and not os.path.isdir(
            corefile.target_root(t.pid) + os.path.dirname(pattern.pattern)):
        pre.add("core-pattern", REFUSE, f"core_pattern writes to "
                f"{os.path.dirname(pattern.pattern)}, which does not exist for the process",
                "create it or fix kernel.core_pattern")
    else:
        pre.add("core-pattern", OK, f"{pattern.kind}: {pattern.pattern}"
                + (" (core_uses_pid)" if pattern.uses_pid else ""))
    if pattern.kind != "pipe" and t.core_hard == 0:
        pre.add("core-limit", REFUSE, f"hard RLIMIT_CORE of {t.pid} ({t.name}) is 0: the "
                "kernel will write no core", "raise it where the process is started "
                "(ulimit -Hc, LimitCORE= in its systemd unit)")
    else:
        soft = "unlimited" if t.core_soft >= (1 << 63) else estimate.human(t.core_soft)
        hard = "unlimited" if t.core_hard >= (1 << 63) else estimate.human(t.core_hard)
        pre.add("core-limit", OK, f"RLIMIT_CORE soft {soft}, hard {hard} (the child "
                "raises its soft limit to the hard one)")
    return pattern


def _existing_ancestor(path: Path) -> Path:
    """The nearest directory on the way up that exists (os.path.exists, unlike
    Path.exists, answers False instead of raising where search is denied)."""
    while not os.path.exists(path) and path != path.parent:
        path = path.parent
    return path


def _output_dir(pre: Preflight, opts: Options) -> None:
    out = Path(opts.output_dir).absolute()
    existing = _existing_ancestor(out)
    try:
        if not existing.is_dir():
            pre.add("output-dir", REFUSE, f"{existing} is not a directory",
                    "choose another one with -o DIR")
        elif not os.access(existing, os.W_OK | os.X_OK):
            pre.add("output-dir", REFUSE, f"{existing} is not writable for you",
                    "choose another one with -o DIR")
        elif existing == out and (out.stat().st_mode & 0o1002) == 0o0002:
            pre.add("output-dir", REFUSE, f"{out} is world-writable without the sticky "
                    "bit: anyone could replace a core", "chmod 0700 it, or choose another "
                    "with -o")
        else:
            pre.add("output-dir", OK, str(out) + ("" if existing == out
                                                  else " (will be created)"))
    except OSError as exc:
        pre.add("output-dir", REFUSE, f"cannot use {out}: {exc.strerror}",
                "choose another one with -o DIR")


def _min_free(spec: str, fs_size: int) -> int:
    spec = spec.strip()
    if spec.endswith("%"):
        return int(fs_size * float(spec[:-1]) / 100)
    return estimate.parse_size(spec)


def _disk(pre: Preflight, opts: Options, maps, pattern: corefile.CorePattern) -> None:
    t = pre.target
    if pattern.kind == "pipe":
        pre.add("disk", OK, "the core goes to the pipe handler")
        return
    if not maps:
        pre.add("disk", OK, "not estimated")
        return
    size = estimate.core_size(maps, estimate.coredump_filter(t.pid), len(t.threads))
    pre.core_estimate = size
    out = _existing_ancestor(Path(opts.output_dir).absolute())
    places = {str(out)}
    root = corefile.target_root(t.pid)
    if pattern.kind == "absolute":
        places.add(root + os.path.dirname(pattern.pattern))
    elif root:
        places.add(_existing_ancestor(Path(f"{root}/var/tmp")).as_posix())
    elif t.uid != os.geteuid():
        places.add("/var/tmp")  # where the kernel writes for another user
    for place in sorted(places):
        try:
            free, fs_size = estimate.free_space(place)
        except OSError as exc:
            pre.add("disk", REFUSE, f"cannot see the free space of {place}: {exc.strerror}",
                    "choose another -o DIR")
            return
        reserve = _min_free(opts.min_free, fs_size)
        if size > free - reserve:
            pre.add("disk", REFUSE, f"the core needs about {estimate.human(size)}, "
                    f"{place} has {estimate.human(free)} free and keeps "
                    f"{estimate.human(reserve)} in reserve (--min-free {opts.min_free})",
                    "free space, choose another -o DIR, or lower --min-free")
            return
    pre.add("disk", OK, f"core about {estimate.human(size)}; room in "
            f"{', '.join(sorted(places))}")


def _memory(pre: Preflight, maps) -> None:
    t = pre.target
    if not maps:
        pre.add("memory", OK, "not estimated")
        return
    worst = estimate.cow_worst_case(maps)
    info = estimate.meminfo()
    available = info.get("MemAvailable", 0)
    problems, warnings = [], []
    if worst > available:
        problems.append(f"MemAvailable is {estimate.human(available)}")
    elif worst > available // 2:
        warnings.append(f"that is over half of MemAvailable ({estimate.human(available)})")
    if estimate.overcommit_mode() == 2:
        room = info.get("CommitLimit", 0) - info.get("Committed_AS", 0)
        need = estimate.private_writable_size(maps)
        if need > room:
            problems.append(f"strict overcommit leaves {estimate.human(room)} to commit and "
                            f"fork needs {estimate.human(need)}")
    cgroup = cgroups.memory_headroom(t.pid)
    if cgroup and worst > cgroup[1]:
        problems.append(f"its cgroup has {estimate.human(cgroup[1])} left below "
                        f"{cgroup[0]}")
    what = (f"if the target rewrites all its private memory while the child lives, the "
            f"copies cost up to {estimate.human(worst)}")
    if problems:
        pre.add("memory", REFUSE, f"{what}; {'; '.join(problems)}",
                "snapshot when the machine has more free memory")
    elif warnings:
        pre.add("memory", WARN, f"{what}; {'; '.join(warnings)}",
                "the child has oom_score_adj 1000: the OOM killer takes it first")
    else:
        pre.add("memory", OK, f"copy-on-write worst case {estimate.human(worst)}, "
                f"{estimate.human(available)} available")


def tasks_added(threads: int) -> int:
    """Most tasks a snapshot adds at once: in the window the intermediate task
    and the child; then the child and one recreated thread per other thread."""
    return max(2, threads)


def _tasks_of_user(uid: int) -> int:
    """Tasks (threads included) of real uid `uid`: what RLIMIT_NPROC counts."""
    count = 0
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                if _real_uid(entry.name) == uid:
                    count += len(os.listdir(f"/proc/{entry.name}/task"))
            except (OSError, StopIteration):
                continue
    return count


def _real_uid(pid: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        return int(next(line for line in f if line.startswith("Uid:")).split()[1])


def _nproc_limit(pid: int) -> int | None:
    with open(f"/proc/{pid}/limits") as f:
        for line in f:
            if line.startswith("Max processes"):
                soft = line.split()[2]
                return None if soft == "unlimited" else int(soft)
    return None


def _tasks(pre: Preflight) -> None:
    """The snapshot's tasks count against the target's pids cgroup and its
    user's RLIMIT_NPROC (kernel/fork.c: copy_process checks both): near either
    limit, they would make the target's own fork or pthread_create fail."""
    t = pre.target
    need = tasks_added(len(t.threads))
    limits = []
    cgroup = cgroups.tasks_headroom(t.pid)
    if cgroup is not None:
        limits.append((cgroup[0], cgroup[1]))
    nproc = _nproc_limit(t.pid) if t.uid != 0 else None  # root's user is exempt
    if nproc is not None:
        limits.append((f"RLIMIT_NPROC of uid {t.uid} ({nproc})",
                       nproc - _tasks_of_user(t.uid)))
    tight = [(what, room) for what, room in limits if room - need < need]
    if tight:
        what, room = tight[0]
        pre.add("tasks", REFUSE, f"the snapshot adds up to {need} tasks and {what} leaves "
                f"room for {room}: the process's own forks and threads would fail",
                "raise the limit, or snapshot with --threads main")
    elif limits:
        pre.add("tasks", OK, f"the snapshot adds up to {need} tasks; room for "
                f"{min(room for _, room in limits)}")
    else:
        pre.add("tasks", OK, f"the snapshot adds up to {need} tasks; no task limit")


def _rate(pre: Preflight, opts: Options) -> None:
    t = pre.target
    limiter = RateLimiter(opts.output_dir, opts.max_per_hour, opts.clock)
    if opts.max_per_hour <= 0:
        pre.add("rate-limit", OK, "no limit (--max-per-hour 0)")
        return
    key = key_for(t.exe, t.pid)
    try:
        when = limiter.next_allowed(key)
        taken = len(limiter.recent(key))
    except OSError:
        pre.add("rate-limit", OK, "no snapshots recorded yet")
        return
    if when is not None:
        pre.add("rate-limit", REFUSE, f"{taken} snapshots of {key} in the last hour "
                f"(--max-per-hour {opts.max_per_hour}); next allowed at {time_text(when)}",
                "wait, or raise --max-per-hour")
    else:
        pre.add("rate-limit", OK, f"{taken} of {opts.max_per_hour} snapshots of {key} "
                "in the last hour")


def _name_of(pid: int) -> str:
    try:
        return psutil.Process(pid).name()
    except psutil.Error:
        return "?"
