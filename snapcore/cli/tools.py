"""The commands that work with snapshots: stacks, watch, list and prune."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click
from rich.console import Console

from snapcore import units
from snapcore.cli import render as report
from snapcore.cli.app import cli, fail, stdout_console
from snapcore.cli.options import (EXIT_CODES_HELP, SnapRequest, check_force, common_options,
                                  is_size, make_options, one_target, snap_options, target_options)
from snapcore.cli.snap import exit_code_of, take_each
from snapcore.core import records
from snapcore.core.gdb import backtraces
from snapcore.core.placement import default_output_dir
from snapcore.engine import watch as watchmod
from snapcore.errors import BadInput, Interrupted, OutputError, SnapcoreError, Stage
from snapcore.units import parse_size


@cli.command(epilog=EXIT_CODES_HELP)
@click.argument("pid", metavar="[PID]", required=False)
@target_options
@click.option("--core", "core_file", type=click.Path(exists=True, dir_okay=False,
                                                      path_type=Path),
              help="Read an existing snapshot instead of taking one.")
@click.option("--exe", type=click.Path(exists=True, dir_okay=False),
              help="The executable of --core (default: from its record).")
@common_options
@snap_options
def stacks(pid, name_pattern, take_all, pidfile, unit, core_file, exe, output_dir, writer,
           as_json, timeout, min_free, max_per_hour, request: SnapRequest):
    """Every thread's backtrace, like gstack, with a pause of milliseconds.

    Takes a snapshot of PID (kept, like any other) and prints its stacks with
    gdb; or reads an existing one with --core FILE.
    """
    err = Console(stderr=True)
    try:
        if core_file is not None:
            exe = exe or _exe_from_record(core_file)
            text = backtraces(exe, core_file)
        else:
            if not (pid or name_pattern or pidfile or unit):
                raise BadInput("give a PID (or --name, --pidfile, --unit), or --core FILE",
                               "see snapcore stacks --help", stage=Stage.USAGE)
            target_pid = one_target(pid, name_pattern, take_all, pidfile, unit)
            check_force(request.force)
            opts = make_options(output_dir, timeout, min_free, max_per_hour, writer)
            result = take_each([target_pid], opts, request)[0]
            if isinstance(result, SnapcoreError):
                raise result
            if result.core_path is None:
                raise OutputError(f"core_pattern hands cores to "
                                  f"{result.core_pattern.handler}: no core here to read",
                                  report.pipe_lookup(result), stage=Stage.STACKS)
            exe, core_file = result.target.exe, result.core_path
            text = backtraces(exe, core_file)
    except SnapcoreError as exc:
        fail(exc, as_json, err)
    if as_json:
        report.print_json({"ok": True, "core": str(core_file), "exe": exe, "stacks": text})
    else:
        click.echo(text)


def _exe_from_record(core: Path) -> str:
    try:
        return json.loads(records.sidecar_path(core).read_text())["target"]["exe"]
    except (OSError, ValueError, KeyError):
        raise BadInput(f"no record beside {core} names its executable",
                       "give it with --exe", stage=Stage.USAGE) from None


@cli.command(epilog=EXIT_CODES_HELP)
@click.argument("pid", metavar="[PID]", required=False)
@target_options
@click.option("--interval", type=click.FloatRange(min=0.01), default=1.0, show_default=True,
              metavar="SECONDS", help="How often to sample the process.")
@click.option("--for", "hold", type=click.FloatRange(min=0), default=5.0, show_default=True,
              metavar="SECONDS", help="How long a condition must hold before it fires.")
@click.option("--cpu", type=click.FloatRange(min=0), metavar="PCT",
              help="Fire when the process uses at least PCT percent of a CPU.")
@click.option("--rss", metavar="SIZE", help="Fire when its resident memory reaches SIZE.")
@click.option("--threads-over", "threads_over", type=click.IntRange(min=1), metavar="N",
              help="Fire when it has at least N threads.")
@click.option("--fds", type=click.IntRange(min=1), metavar="N",
              help="Fire when it has at least N open file descriptors.")
@click.option("--count", type=click.IntRange(min=1), default=1, show_default=True,
              metavar="N", help="Stop after N snapshots.")
@click.option("--cooldown", type=click.FloatRange(min=0), default=300.0, show_default=True,
              metavar="SECONDS", help="At least this long between two snapshots.")
@common_options
@snap_options
def watch(pid, name_pattern, take_all, pidfile, unit, interval, hold, cpu, rss, threads_over,
          fds, count, cooldown, output_dir, writer, as_json, timeout, min_free, max_per_hour,
          request: SnapRequest):
    """Watch PID and snapshot it when a condition holds for --for seconds.

    Conditions: --cpu, --rss, --threads-over, --fds (any one fires). Takes at
    most --count snapshots, --cooldown apart, within the rate limit; exits
    when the process exits. Logs each sample and why it fired.
    """
    err = Console(stderr=True)
    try:
        target_pid = one_target(pid, name_pattern, take_all, pidfile, unit)
        conditions = watchmod.Conditions(cpu, None if rss is None else _size_option(rss),
                                         threads_over, fds)
        if not conditions.any():
            raise BadInput("no condition to watch for",
                           "give --cpu, --rss, --threads-over or --fds", stage=Stage.USAGE)
        check_force(request.force)
        opts = make_options(output_dir, timeout, min_free, max_per_hour, writer)
        taken, ended = [], ""

        def snapshot(reason):
            result = take_each([target_pid], opts, request, reason=reason)[0]
            if isinstance(result, SnapcoreError):
                raise result
            return result

        for event in watchmod.events(target_pid, conditions, snapshot, interval=interval,
                                     hold=hold, count=count, cooldown=cooldown):
            kind = event[0]
            if kind == "sample" and not as_json:
                met = f"  <- {'; '.join(event[2])}" if event[2] else ""
                err.print(f"{time.strftime('%H:%M:%S')} {event[1].text()}{met}",
                          markup=False, highlight=False)
            elif kind == "fire" and not as_json:
                err.print(f"snapcore: firing: {event[1]}", markup=False, highlight=False)
            elif kind == "snapshot":
                taken.append(event[1])
                if not as_json:
                    if isinstance(event[1], SnapcoreError):
                        report.print_error(event[1], err)
                    else:
                        click.echo(str(event[1].core_path or "(handed to core_pattern pipe)"))
            elif kind == "end":
                ended = event[1]
    except SnapcoreError as exc:
        fail(exc, as_json, err)
    except KeyboardInterrupt:
        fail(Interrupted("interrupted", "the process keeps running", stage=Stage.INTERRUPT),
              as_json, err)
    if as_json:
        report.print_json({"ok": not any(isinstance(t, SnapcoreError) for t in taken),
                           "ended": ended,
                           "snapshots": [{"ok": False, "error": report.error_dict(t)}
                                         if isinstance(t, SnapcoreError)
                                         else report.snapshot_dict(t) for t in taken]})
    else:
        err.print(f"snapcore: watch ended: {ended}", markup=False, highlight=False)
    sys.exit(exit_code_of(taken) if taken else 0)


def _size_option(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as exc:
        raise BadInput(str(exc), "e.g. 512M or 2G", stage=Stage.USAGE) from None


@cli.command(name="list")
@click.option("-o", "--output-dir", type=click.Path(file_okay=False, path_type=Path),
              help="The output directory to read (default as for snap).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@click.option("-q", "--quiet", is_flag=True, help="Print only the cores' paths.")
@click.option("--latest", is_flag=True, help="Only the newest snapshot (of --name, if given).")
@click.option("--name", "name_filter", metavar="TEXT",
              help="Only snapshots of processes whose name or executable contains TEXT.")
@click.option("--since", metavar="DURATION",
              help="Only snapshots taken within this long (e.g. 2h, 7d).")
def list_(output_dir, as_json, quiet, latest, name_filter, since):
    """The snapshots in the output directory, newest first.

    At a terminal, a table; otherwise tab-separated columns with full paths,
    one snapshot a line, for scripts.
    """
    err = Console(stderr=True)
    try:
        cutoff = None if since is None else time.time() - _duration(since, "--since")
    except SnapcoreError as exc:
        fail(exc, as_json, err)
    directory = output_dir or default_output_dir()
    if not directory.is_dir():
        err.print(f"snapcore: warning: no output directory {directory} (nothing snapshot "
                  "there yet, or another -o DIR)", markup=False, highlight=False,
                  soft_wrap=True)
    found = records.select(records.records(directory), name_filter, cutoff)
    found = found[:1] if latest else found
    if as_json:
        report.print_json({"ok": True, "snapshots": [report.record_dict(r) for r in found]})
    elif quiet:
        for record in found:
            if record.core is not None:
                click.echo(str(record.core))
    elif sys.stdout.isatty():
        report.print_records(found, stdout_console())
    else:
        report.print_records_plain(found)


@cli.command()
@click.option("-o", "--output-dir", type=click.Path(file_okay=False, path_type=Path),
              help="The output directory to prune (default as for snap).")
@click.option("--keep", type=click.IntRange(min=0), metavar="N",
              help="Keep the N newest snapshots of each program.")
@click.option("--older-than", metavar="DURATION",
              help="Remove snapshots older than this (e.g. 7d, 12h).")
@click.option("--max-total", metavar="SIZE",
              help="Remove the oldest snapshots until all together take at most SIZE.")
@click.option("--dry-run", is_flag=True, help="Say what would be removed; remove nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
def prune(output_dir, keep, older_than, max_total, dry_run, as_json):
    """Remove old snapshots (a core and its record together).

    Only snapshots with a snapcore record are considered: files snapcore did
    not write are never touched.
    """
    err = Console(stderr=True)
    try:
        if keep is None and older_than is None and max_total is None:
            raise BadInput("nothing to prune by", "give --keep, --older-than or --max-total",
                           stage=Stage.USAGE)
        age = None if older_than is None else _duration(older_than, "--older-than")
        if max_total is not None and not is_size(max_total):
            raise BadInput(f"invalid --max-total {max_total!r}", "give a size such as 20G",
                           stage=Stage.USAGE)
        total = None if max_total is None else parse_size(max_total)
    except SnapcoreError as exc:
        fail(exc, as_json, err)
    found = records.records(output_dir or default_output_dir())
    doomed = records.plan_prune(found, keep=keep, older_than=age, max_total=total)
    if not dry_run:
        for record in doomed:
            records.remove(record)
    if as_json:
        report.print_json({"ok": True, "dry_run": dry_run,
                           "removed": [report.record_dict(r) for r in doomed],
                           "kept": len(found) - len(doomed)})
    else:
        verb = "would remove" if dry_run else "removed"
        for record in doomed:
            click.echo(f"{verb} {record.core or record.sidecar}")
        click.echo(f"{verb} {len(doomed)} snapshot(s), kept {len(found) - len(doomed)}")


def _duration(text: str, option: str) -> float:
    """A duration with its unit: `--older-than 7` could mean seconds or days."""
    if text.strip().replace(".", "", 1).isdigit():
        raise BadInput(f"{option} {text}: a duration needs a unit",
                       f"say {text.strip()}d, {text.strip()}h, {text.strip()}m or "
                       f"{text.strip()}s", stage=Stage.USAGE)
    try:
        return units.parse_duration(text)
    except ValueError as exc:
        raise BadInput(f"invalid {option} {text!r}", str(exc), stage=Stage.USAGE) from None
