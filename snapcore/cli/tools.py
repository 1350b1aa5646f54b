"""The commands that manage the output directory: list and prune."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click

from snapcore import units
from snapcore.cli import render as report
from snapcore.cli.app import cli, fail
from snapcore.cli.options import is_size
from snapcore.core import records
from snapcore.core.placement import default_output_dir
from snapcore.errors import BadInput, SnapcoreError, Stage
from snapcore.units import parse_size


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
    try:
        cutoff = None if since is None else time.time() - _duration(since, "--since")
    except SnapcoreError as exc:
        fail(exc, as_json)
    directory = output_dir or default_output_dir()
    if not directory.is_dir():
        report.say(f"snapcore: warning: no output directory {directory} (nothing snapshot "
                   "there yet, or another -o DIR)")
    found = records.select(records.records(directory), name_filter, cutoff)
    found = found[:1] if latest else found
    if as_json:
        report.print_json({"ok": True, "snapshots": [report.record_dict(r) for r in found]})
    elif quiet:
        for record in found:
            if record.core is not None:
                click.echo(str(record.core))
    elif sys.stdout.isatty():
        report.print_records(found, report.stdout_console())
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
        fail(exc, as_json)
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
