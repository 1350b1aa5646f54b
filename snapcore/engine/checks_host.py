"""The checks about the host: where the core goes (and is staged), whether it
fits, and the rate limit.  The memory and task limits: checks_limits.py.
"""

from __future__ import annotations

import os
from pathlib import Path

from snapcore import units
from snapcore.core import core_pattern, placement, staging
from snapcore.core.dumprules import CoreSize
from snapcore.engine import checks_writer, estimate
from snapcore.engine.ratelimit import RateLimiter, label, program, time_text
from snapcore.engine.request import Request
from snapcore.engine.verdicts import OK, REFUSE, WARN, Preflight
from snapcore.errors import OutputError


def check_core_destination(pre: Preflight, opts: Request, sizes: CoreSize | None) -> None:
    """Who writes the core (checks_writer.py), then, for the kernel's
    writer, whether core_pattern and RLIMIT_CORE let it."""
    t, pattern = pre.plan.target, pre.plan.core_pattern
    checks_writer.choose_writer(pre, opts, pattern, sizes)
    if pre.plan.writer == "snapcore":
        pre.add("core-pattern", OK, f"{pattern.pattern} ({pattern.kind}): not used, "
                "snapcore writes the core")
        pre.add("core-limit", OK, f"RLIMIT_CORE {_limits_text(t)}: not used, a snapshot is "
                "not a crash (gcore ignores the limit too)")
        return
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
            pre.plan.facts.root + os.path.dirname(pattern.pattern)):
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


def _limits_text(t) -> str:
    soft = "unlimited" if t.core_soft >= (1 << 63) else units.human(t.core_soft)
    hard = "unlimited" if t.core_hard >= (1 << 63) else units.human(t.core_hard)
    return f"soft {soft}, hard {hard}"


_existing_ancestor = placement.existing_ancestor


def check_output_dir(pre: Preflight, opts: Request) -> None:
    """The output directory can be made and written, and nobody else can
    choose where snapcore's files go there (placement.output_dir_problem)."""
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
        elif (problem := placement.output_dir_problem(out)) is not None:
            pre.add("output-dir", REFUSE, *problem, setting="output_dir")
        elif existing != out and (why := _cannot_create_in(existing)):
            pre.add("output-dir", REFUSE, f"{out} cannot be created: {existing} takes "
                    f"no new directory ({why})", "choose another output directory",
                    setting="output_dir")
        else:
            sticky = existing == out and out.stat().st_mode & 0o022
            pre.add("output-dir", OK, str(out) + (
                " (will be created)" if existing != out else
                " (sticky, others write there too: snapcore never follows a name in it)"
                if sticky else ""))
    except OSError as exc:
        pre.add("output-dir", REFUSE, f"cannot use {out}: {exc.strerror}",
                "choose another output directory", setting="output_dir")


def _cannot_create_in(parent: Path) -> str:
    """Why no directory can be made in `parent`, or "", found without making
    one (a check writes nothing).  Permission bits and read-only mounts are
    access(2)'s (it answers EROFS for either kind of read-only mount,
    fs/open.c `do_faccessat`), asked before this.  What access(2) passes for
    root and mkdir(2) still refuses is a filesystem of the kernel's own:
    proc and sysfs have no mkdir at all (EPERM, fs/namei.c `vfs_mkdir`), and
    in cgroup, tracefs or configfs a new directory is a kernel object, not a
    directory.  They count no blocks and no inodes: statfs(2) says f_blocks
    and f_files 0 (fs/libfs.c `simple_statfs`), where a tmpfs without a size
    limit still counts its inodes (ramfs alone is a false refusal).  The
    snapshot itself makes the directory (placement.prepare_output_dir)."""
    try:
        st = os.statvfs(parent)
    except OSError as exc:
        return exc.strerror or str(exc)
    if st.f_blocks or st.f_files:
        return ""
    return "a filesystem of the kernel's own, with no room for files"


def _min_free(spec: str, fs_size: int) -> int:
    spec = spec.strip()
    if spec.endswith("%"):
        return int(fs_size * float(spec[:-1]) / 100)
    return units.parse_size(spec)


def check_staging(pre: Preflight, opts: Request, pattern: core_pattern.CorePattern) -> None:
    """Where the kernel writes a relative core_pattern's core: the output
    directory, or a staging directory in a place the target's user can write,
    in the target's view of the files (staging.staging_base).  Nowhere
    writable there (a read-only root filesystem) is known now, before the
    target is touched; no override makes a read-only mount writable."""
    t = pre.plan.target
    if pre.plan.writer == "snapcore":
        pre.add("staging", OK, "none: snapcore's writer writes into the output directory "
                "itself")
        return
    if pattern.kind != "relative":
        pre.add("staging", OK, "none: core_pattern is " + ("a pipe" if pattern.kind == "pipe"
                                                           else "an absolute path"))
        return
    out = Path(opts.output_dir).absolute()
    try:
        base = staging.staging_base(out, t.uid, pre.plan.facts.root)
    except OutputError as exc:
        pre.add("staging", REFUSE, exc.message, exc.hint)
        return
    pre.add("staging", OK, "in the output directory" if base == str(out)
            else f"in {base}, then moved to the output directory")


def _places(opts: Request, pattern: core_pattern.CorePattern, root: str, uid: int) -> set:
    """Every filesystem the core is written to: the output directory, and where
    the kernel writes it first (core_pattern's directory, or the staging one);
    `root`: the target's (placement.target_root)."""
    out = Path(opts.output_dir).absolute()
    places = {str(_existing_ancestor(out))}
    if pattern.kind == "absolute":
        places.add(root + os.path.dirname(pattern.pattern))
    elif pattern.kind == "relative":
        try:
            places.add(str(_existing_ancestor(Path(staging.staging_base(out, uid, root)))))
        except OutputError:
            pass  # the staging check refuses
    return places


def check_disk(pre: Preflight, opts: Request, sizes: CoreSize | None,
               pattern: core_pattern.CorePattern) -> None:
    plan = pre.plan
    t = plan.target
    if sizes:
        plan.core_estimate, plan.core_apparent = sizes.on_disk(plan.writer), sizes.apparent
    if opts.to_stdout and plan.writer == "snapcore":
        pre.add("disk", OK, "the core goes to standard output")
        return
    if pattern.kind == "pipe" and plan.writer == "kernel":
        pre.add("disk", OK, "the core goes to the pipe handler")
        return
    if not sizes:
        pre.add("disk", OK, "not estimated")
        return
    # What the disk must hold: holes take nothing (compressed: see disk_need).
    size, how = checks_writer.disk_need(pre, opts, plan.core_estimate)
    # snapcore's writer writes into the output directory alone.
    places = ({str(_existing_ancestor(Path(opts.output_dir).absolute()))}
              if plan.writer == "snapcore" else _places(opts, pattern, plan.facts.root, t.uid))
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


def check_rate(pre: Preflight, opts: Request) -> None:
    t = pre.plan.target
    limiter = RateLimiter(opts.output_dir, opts.max_per_hour, opts.clock)
    if opts.max_per_hour <= 0:
        pre.add("rate-limit", OK, "no limit")
        return
    key = program(t)
    try:
        times = limiter.recent(key)  # read only: a check writes nothing
        when, taken = limiter.next_allowed(key, times), len(times)
    except FileNotFoundError:
        pre.add("rate-limit", OK, "no snapshots recorded yet")
        return
    except OutputError as exc:  # .snapcore or its state is not snapcore's (safefs.py)
        pre.add("rate-limit", REFUSE, f"cannot read the rate limit's state: {exc.message}",
                exc.hint)
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
