"""The checks about the host: where the core goes and whether it fits,
the memory copy-on-write may cost, the tasks the snapshot adds under the
process's limits, and the rate limit.
"""

from __future__ import annotations

import os
from pathlib import Path

from snapcore import units
from snapcore.core import core_pattern, placement
from snapcore.engine import checks_writer, estimate
from snapcore.engine.ratelimit import RateLimiter, label, program, time_text
from snapcore.engine.verdicts import OK, REFUSE, WARN, Options, Preflight
from snapcore.linux import cgroups
from snapcore.linux.procfs import read_status


def check_core_destination(pre: Preflight, opts: Options,
                           size: int) -> core_pattern.CorePattern:
    """Who writes the core (checks_writer.py), then, for the kernel's
    writer, whether core_pattern and RLIMIT_CORE let it."""
    t = pre.target
    pattern = core_pattern.read_core_pattern()
    checks_writer.choose_writer(pre, opts, pattern, size)
    if pre.writer == "snapcore":
        pre.add("core-pattern", OK, f"{pattern.pattern} ({pattern.kind}): not used, "
                "snapcore writes the core")
        pre.add("core-limit", OK, f"RLIMIT_CORE {_limits_text(t)}: not used, a snapshot is "
                "not a crash (gcore ignores the limit too)")
        return pattern
    if pattern.kind == "pipe":
        try:
            with open("/proc/sys/kernel/core_pipe_limit") as f:
                limit = f.read().strip()
        except OSError:
            limit = "?"
        pre.add("core-pattern", WARN, f"core_pattern pipes cores to {pattern.handler} "
                f"(core_pipe_limit {limit}): the core goes there, not to the output "
                "directory", "look it up with the handler's tools (coredumpctl), or let "
                "snapcore write it", setting="writer")
    elif pattern.kind == "absolute" and not os.path.isdir(
            placement.target_root(t.pid) + os.path.dirname(pattern.pattern)):
        pre.add("core-pattern", REFUSE, f"core_pattern writes to "
                f"{os.path.dirname(pattern.pattern)}, which does not exist for the process",
                "create it, fix kernel.core_pattern, or let snapcore write the core",
                setting="writer")
    else:
        pre.add("core-pattern", OK, f"{pattern.kind}: {pattern.pattern}"
                + (" (core_uses_pid)" if pattern.uses_pid else ""))
    if pattern.kind != "pipe" and t.core_hard == 0:
        pre.add("core-limit", REFUSE, f"hard RLIMIT_CORE of {t.pid} ({t.name}) is 0: the "
                "kernel will write no core", "raise it where the process is started "
                "(ulimit -Hc, LimitCORE= in its systemd unit), or let snapcore write it",
                setting="writer")
    else:
        pre.add("core-limit", OK, f"RLIMIT_CORE {_limits_text(t)} (the child raises its "
                "soft limit to the hard one)")
    return pattern


def _limits_text(t) -> str:
    soft = "unlimited" if t.core_soft >= (1 << 63) else units.human(t.core_soft)
    hard = "unlimited" if t.core_hard >= (1 << 63) else units.human(t.core_hard)
    return f"soft {soft}, hard {hard}"


def _existing_ancestor(path: Path) -> Path:
    """The nearest directory on the way up that exists (os.path.exists, unlike
    Path.exists, answers False instead of raising where search is denied)."""
    while not os.path.exists(path) and path != path.parent:
        path = path.parent
    return path


def check_output_dir(pre: Preflight, opts: Options) -> None:
    if opts.to_stdout:
        pre.add("output-dir", OK, "standard output (the rate limit's state stays in "
                f"{Path(opts.output_dir).absolute()})")
        return
    out = Path(opts.output_dir).absolute()
    existing = _existing_ancestor(out)
    try:
        if not existing.is_dir():
            pre.add("output-dir", REFUSE, f"{existing} is not a directory",
                    "choose another output directory", setting="output_dir")
        elif not os.access(existing, os.W_OK | os.X_OK):
            pre.add("output-dir", REFUSE, f"{existing} is not writable for you",
                    "choose another output directory", setting="output_dir")
        elif existing == out and (out.stat().st_mode & 0o1002) == 0o0002:
            pre.add("output-dir", REFUSE, f"{out} is world-writable without the sticky "
                    "bit: anyone could replace a core", "chmod 0700 it, or choose another "
                    "with -o")
        else:
            pre.add("output-dir", OK, str(out) + ("" if existing == out
                                                  else " (will be created)"))
    except OSError as exc:
        pre.add("output-dir", REFUSE, f"cannot use {out}: {exc.strerror}",
                "choose another output directory", setting="output_dir")


def _min_free(spec: str, fs_size: int) -> int:
    spec = spec.strip()
    if spec.endswith("%"):
        return int(fs_size * float(spec[:-1]) / 100)
    return units.parse_size(spec)


def check_disk(pre: Preflight, opts: Options, maps, pattern: core_pattern.CorePattern) -> None:
    t = pre.target
    if maps:
        sizes = estimate.core_size(maps, estimate.coredump_filter(t.pid), len(t.threads))
        pre.core_estimate, pre.core_apparent = sizes.allocated, sizes.apparent
    if opts.to_stdout and pre.writer == "snapcore":
        pre.add("disk", OK, "the core goes to standard output")
        return
    if pattern.kind == "pipe" and pre.writer == "kernel":
        pre.add("disk", OK, "the core goes to the pipe handler")
        return
    if not maps:
        pre.add("disk", OK, "not estimated")
        return
    # What the disk must hold: holes take nothing (compressed: see disk_need).
    size, how = checks_writer.disk_need(pre, opts, sizes.allocated)
    out = _existing_ancestor(Path(opts.output_dir).absolute())
    places = checks_writer.disk_places(pre, opts, str(out), pattern)
    for place in sorted(places):
        try:
            free, fs_size = estimate.free_space(place)
        except OSError as exc:
            pre.add("disk", REFUSE, f"cannot see the free space of {place}: {exc.strerror}",
                    "choose another output directory", setting="output_dir")
            return
        reserve = _min_free(opts.min_free, fs_size)
        if size > free - reserve:
            pre.add("disk", REFUSE, f"the core needs about {units.human(size)}{how}, "
                    f"{place} has {units.human(free)} free and keeps "
                    f"{units.human(reserve)} in reserve ({opts.min_free})",
                    "free space, choose another output directory, or keep less in reserve",
                    setting="min_free")
            return
    pre.add("disk", OK, f"core about {units.human(size)} on disk{how} "
            f"({units.human(sizes.apparent)} with its holes); room in "
            f"{', '.join(sorted(places))}")


def check_memory(pre: Preflight, maps) -> None:
    t = pre.target
    if not maps:
        pre.add("memory", OK, "not estimated")
        return
    worst = estimate.cow_worst_case(maps)
    info = estimate.meminfo()
    available = info.get("MemAvailable", 0)
    problems, warnings = [], []
    if worst > available:
        problems.append(f"MemAvailable is {units.human(available)}")
    elif worst > available // 2:
        warnings.append(f"that is over half of MemAvailable ({units.human(available)})")
    if estimate.overcommit_mode() == 2:
        room = info.get("CommitLimit", 0) - info.get("Committed_AS", 0)
        need = estimate.private_writable_size(maps)
        if need > room:
            problems.append(f"strict overcommit leaves {units.human(room)} to commit and "
                            f"fork needs {units.human(need)}")
    cgroup = cgroups.memory_headroom(t.pid)
    pre.memory_room = min(available, cgroup[1]) if cgroup else available
    pre.memory_limit_file = cgroup[0] if cgroup else ""
    if cgroup and worst > cgroup[1]:
        problems.append(f"its cgroup has {units.human(cgroup[1])} left below "
                        f"{cgroup[0]}")
    what = (f"if the target rewrites all its private memory while the child lives, the "
            f"copies cost up to {units.human(worst)}")
    if problems:
        pre.add("memory", REFUSE, f"{what}; {'; '.join(problems)}",
                "snapshot when the machine has more free memory")
    elif warnings:
        pre.add("memory", WARN, f"{what}; {'; '.join(warnings)}",
                "the child has oom_score_adj 1000: the OOM killer takes it first")
    else:
        pre.add("memory", OK, f"copy-on-write worst case {units.human(worst)}, "
                f"{units.human(available)} available")


def tasks_added(threads: int, writer: str = "kernel") -> int:
    """Most tasks a snapshot adds at once: in the window the intermediate task
    and the child; then, for the kernel's writer, the child and one recreated
    thread per other thread (snapcore's writer recreates none)."""
    return 2 if writer == "snapcore" else max(2, threads)


def _tasks_of_user(uid: int) -> int:
    """Tasks (threads included) of real uid `uid`: what RLIMIT_NPROC counts."""
    count = 0
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                if _real_uid(entry.name) == uid:
                    count += len(os.listdir(f"/proc/{entry.name}/task"))
            except (OSError, KeyError):
                continue
    return count


def _real_uid(pid: str) -> int:
    return int(read_status(int(pid))["Uid"].split()[0])


def _nproc_limit(pid: int) -> int | None:
    with open(f"/proc/{pid}/limits") as f:
        for line in f:
            if line.startswith("Max processes"):
                soft = line.split()[2]
                return None if soft == "unlimited" else int(soft)
    return None


def check_tasks(pre: Preflight) -> None:
    """The snapshot's tasks count against the target's pids cgroup and its
    user's RLIMIT_NPROC (kernel/fork.c: copy_process checks both): near either
    limit, they would make the target's own fork or pthread_create fail."""
    t = pre.target
    need = tasks_added(len(t.threads), pre.writer)
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
                "raise the limit, or snapshot the main thread only", setting="threads")
    elif limits:
        pre.add("tasks", OK, f"the snapshot adds up to {need} tasks; room for "
                f"{min(room for _, room in limits)}")
    else:
        pre.add("tasks", OK, f"the snapshot adds up to {need} tasks; no task limit")


def check_rate(pre: Preflight, opts: Options) -> None:
    t = pre.target
    limiter = RateLimiter(opts.output_dir, opts.max_per_hour, opts.clock)
    if opts.max_per_hour <= 0:
        pre.add("rate-limit", OK, "no limit")
        return
    key = program(t)
    try:
        when = limiter.next_allowed(key)
        taken = len(limiter.recent(key))
    except FileNotFoundError:
        pre.add("rate-limit", OK, "no snapshots recorded yet")
        return
    except (OSError, ValueError) as exc:
        pre.add("rate-limit", REFUSE, f"cannot read the rate limit's state: {exc}",
                "fix or remove .snapcore/state.json in the output directory")
        return
    if when is not None:
        pre.add("rate-limit", REFUSE, f"{taken} snapshots of {label(key)} in the last hour "
                f"(at most {opts.max_per_hour} an hour); next allowed at {time_text(when)}",
                "wait, or allow more an hour", setting="max_per_hour")
    else:
        pre.add("rate-limit", OK, f"{taken} of {opts.max_per_hour} snapshots of {label(key)} "
                "in the last hour")
