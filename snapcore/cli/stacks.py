"""snapcore stacks: every thread's stacks from a snapshot, read by the
reader of the runtime the target runs (core/readers), once or sampled.

Sampling (--samples N) is N snapshots, each one fork window of the target's,
read and then removed (--keep-cores keeps them).  The rate limit counts the run,
not each sample: the first sample is an ordinary snapshot in the output
directory (refused as any other when the program has had --max-per-hour this
hour, and recorded as one), the others are taken into a private directory
inside it with no limit of their own and removed with it.  Every other check
(memory, disk, the target's state) runs before each sample: a host that runs
short of memory mid-run stops the run there, with what was sampled so far.
"""

from __future__ import annotations

from pathlib import Path

import click

from snapcore.cli import render as report
from snapcore.cli.app import cli, fail
from snapcore.cli.opening import executable as exe_for
from snapcore.cli.opening import find
from snapcore.cli.options import (EXIT_CODES_HELP, common_options, lang_option, make_request,
                                  native_option, one_target, pid_argument, snap_options,
                                  target_options)
from snapcore.errors import BadInput, SnapcoreError, Stage


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
@click.option("--keep-cores", "keep", is_flag=True,
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
            from snapcore.cli import stacksnap
            snap = stacksnap.take(target, request)
            exe, core_file = snap.target.exe, snap.core_path
            result, kept = stacksnap.read(snap, lang, native, discard)
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


def _target(pid, name_pattern, take_all, pidfile, unit) -> int:
    if not (pid or name_pattern or pidfile or unit):
        raise BadInput("give a PID (or --name, --pidfile, --unit), or --core FILE",
                       "see snapcore stacks --help", stage=Stage.USAGE)
    return one_target(pid, name_pattern, take_all, pidfile, unit)
