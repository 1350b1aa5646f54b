"""snapcore stacks: every thread's stacks from a snapshot, read by the
reader of the runtime the target runs (core/readers), once or sampled.

Sampling (--samples N) is N snapshots, each one fork window of the target's,
read and then removed (--keep keeps them).  The rate limit counts the run,
not each sample: the first sample is an ordinary snapshot in the output
directory (refused as any other when the program has had --max-per-hour this
hour, and recorded as one), the others are taken into a private directory
inside it with no limit of their own and removed with it.  Every other check
(memory, disk, the target's state) runs before each sample: a host that runs
short of memory mid-run stops the run there, with what was sampled so far.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import click

from snapcore.cli import render as report
from snapcore.cli.app import cli, fail
from snapcore.cli.opening import executable as exe_for
from snapcore.cli.opening import find
from snapcore.cli.options import (EXIT_CODES_HELP, common_options, make_request, one_target,
                                  pid_argument, snap_options, target_options)
from snapcore.core.runtimes import LANGS
from snapcore.errors import BadInput, OutputError, SnapcoreError, Stage

lang_option = click.option(
    "--lang", type=click.Choice(LANGS), default="auto", show_default=True,
    help="Whose stacks: auto recognises the runtime from the process (libpython or "
         "python3.X: pystack; libjvm.so: that JDK's jhsdb; a Go binary: delve); native "
         "is gdb's backtraces.")
native_option = click.option(
    "--native", is_flag=True,
    help="With a runtime's stacks, the native (C) frames too, where the reader can.")


@cli.command(epilog=EXIT_CODES_HELP)
@pid_argument()
@target_options
@click.option("--core", "core_file", type=click.Path(exists=True, dir_okay=False,
                                                      path_type=Path),
              help="Read an existing snapshot instead of taking one.")
@click.option("--exe", type=click.Path(exists=True, dir_okay=False),
              help="The executable of --core (default: from its record, else from the "
                   "core's notes).")
@click.option("--discard", is_flag=True,
              help="Remove the snapshot once its stacks are printed (it is kept by "
                   "default, like any other, and counts toward --max-per-hour either way).")
@lang_option
@native_option
@click.option("--samples", type=click.IntRange(1, 10000), default=1, show_default=True,
              help="Take N snapshots, each a fork window of the target's, and print the "
                   "merged stacks with counts (one --max-per-hour slot for the run).")
@click.option("--interval", type=click.FloatRange(0, 3600), default=1.0, show_default=True,
              metavar="SECONDS", help="Seconds from one sample's start to the next's.")
@click.option("--format", "fmt", type=click.Choice(["text", "collapsed"]), default="text",
              help="With --samples: the hottest stacks (text) or one line per stack and "
                   "its count (collapsed: flamegraph.pl and speedscope input).")
@click.option("--keep", is_flag=True,
              help="With --samples: keep each sample's core (default: removed once read).")
@common_options
@snap_options
def stacks(pid, name_pattern, take_all, pidfile, unit, core_file, exe, discard, lang, native,
           samples, interval, fmt, keep, output_dir, writer, as_json, timeout, min_free,
           max_per_hour, asked: dict):
    """Every thread's stacks, like gstack or jstack, with a pause of milliseconds.

    Takes a snapshot of PID and prints each thread's stacks as its runtime
    names them (Python, Java, Go; else gdb's backtraces), saying which reader
    read them, and where the snapshot is kept (or removes it: --discard); or
    reads an existing one with --core FILE.  With --samples N, a sampling
    profiler: N snapshots, merged.
    """
    from snapcore.core.readers import read_core
    kept = None
    try:
        if core_file is not None:
            if samples > 1:
                raise BadInput("--samples takes a process, not --core", "give a PID",
                               stage=Stage.USAGE)
            exe = exe_for(find(str(core_file), None)[0], core_file, exe)
            result = read_core(core_file, exe, lang, native)
        else:
            target = _target(pid, name_pattern, take_all, pidfile, unit)
            request = make_request(output_dir, timeout, min_free, max_per_hour, writer,
                                   keep_exe=True, **asked)
            if samples > 1:
                from snapcore.cli.sampling import run_samples
                run_samples(target, request, samples, interval, lang, native, fmt, keep,
                            as_json)
                return
            snap = _snapshot(target, request)
            exe, core_file = snap.target.exe, snap.core_path
            try:
                from snapcore.cli.snap import executable
                result = read_core(core_file, executable(snap), lang, native)
            finally:
                _close(snap)
                kept = _keep_or_discard(snap, discard)
            if kept is not None:
                keep_stacks(snap.core_path, result)
    except SnapcoreError as exc:
        fail(exc, as_json)
    if as_json:
        report.print_json({"ok": True, "core": str(core_file), "exe": exe,
                           "stacks": result.render(), **result.to_dict(),
                           "discarded": discard and core_file is not None and kept is None})
    else:
        click.echo(result.render())
        if kept is not None:
            report.say(f"snapcore: the snapshot is kept: {kept} (--discard to not keep it)")


def keep_stacks(core: Path, stacks) -> None:
    """Keep the stacks beside the snapshot for `info`; a failure to (a full
    disk) is a warning: the stacks were read and are printed all the same."""
    from snapcore.core import keptstacks
    try:
        keptstacks.keep(core, stacks)
    except (OSError, SnapcoreError) as exc:
        report.say(f"snapcore: warning: the stacks are not kept beside {core.name}: "
                   f"{getattr(exc, 'strerror', None) or exc}")


def _target(pid, name_pattern, take_all, pidfile, unit) -> int:
    if not (pid or name_pattern or pidfile or unit):
        raise BadInput("give a PID (or --name, --pidfile, --unit), or --core FILE",
                       "see snapcore stacks --help", stage=Stage.USAGE)
    return one_target(pid, name_pattern, take_all, pidfile, unit)


def _snapshot(pid: int, request):
    from snapcore.cli.snap import take_each
    result = take_each([pid], request)[0]
    if isinstance(result, SnapcoreError):
        raise result
    if result.core_path is None:
        _close(result)
        raise OutputError(f"core_pattern hands cores to "
                          f"{result.core_pattern.handler}: no core here to read",
                          report.pipe_lookup(result), stage=Stage.STACKS)
    return result


def _close(result) -> None:
    from snapcore.cli.snap import close_exe
    close_exe(result)


def _keep_or_discard(result, discard: bool) -> str | None:
    """The kept core's path and size, or None once it is removed."""
    from snapcore.units import human
    if discard:
        result.core_path.unlink(missing_ok=True)
        if result.sidecar_path is not None:
            result.sidecar_path.unlink(missing_ok=True)
        return None
    return f"{result.core_path} ({human(result.core_size)})"


def sample_once(pid: int, request, lang: str, native: bool, keep: bool):
    """One sample: a snapshot, its stacks read, its core removed unless kept.
    (Snapshot, Stacks)."""
    from snapcore.cli.snap import executable
    from snapcore.core.readers import read_core
    snap = _snapshot(pid, request)
    try:
        return snap, read_core(snap.core_path, executable(snap), lang, native)
    finally:
        _close(snap)
        _keep_or_discard(snap, discard=not keep)


def private_dir(output_dir: Path) -> Path:
    """Where samples after the first go: new, 0700, inside the output
    directory (the same filesystem, so the disk check means the same)."""
    return Path(tempfile.mkdtemp(prefix=".snapcore-samples-", dir=output_dir))


def later_request(request, directory: Path):
    return replace(request, output_dir=directory, max_per_hour=0)


def remove_dir(directory: Path, keep: bool) -> None:
    if not keep:
        shutil.rmtree(directory, ignore_errors=True)


def pace(started: float, interval: float) -> None:
    """Until the next sample, give or take 10 % at random: samples at a fixed
    period alias with periodic work (a 100 ms loop sampled every 300 ms is
    seen in one phase of it only)."""
    import random
    time.sleep(max(0.0, interval * random.uniform(0.9, 1.1) - (time.monotonic() - started)))
