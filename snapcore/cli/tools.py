"""The commands that manage the output directory: list and prune."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click

from snapcore import bounds
from snapcore.cli import render as report
from snapcore.cli.app import cli, fail
from snapcore.cli.options import Bounded
from snapcore.cli.paths import OUTPUT_DIR
from snapcore.cli.reading import snapshots
from snapcore.core import records
from snapcore.core.placement import default_output_dir
from snapcore.errors import BadInput, Stage
from snapcore.units import human


@cli.command(name="list")
@click.option("-o", "--output-dir", type=OUTPUT_DIR,
              help="The output directory to read (default as for snap).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@click.option("-q", "--quiet", is_flag=True, help="Print only the cores' paths.")
@click.option("--latest", is_flag=True, help="Only the newest snapshot (of --name, if given).")
@click.option("--name", "name_filter", metavar="TEXT",
              help="Only snapshots of processes whose name or executable contains TEXT.")
@click.option("--since", type=Bounded("since", "duration"), metavar="DURATION",
              help="Only snapshots taken within this long (e.g. 2h, 7d; "
                   f"{bounds.span('since')}).")
def list_(output_dir, as_json, quiet, latest, name_filter, since):
    """The snapshots in the output directory, newest first.

    At a terminal, a table; otherwise tab-separated columns with full paths,
    one snapshot a line, for scripts.
    """
    cutoff = None if since is None else time.time() - since
    directory = output_dir or default_output_dir()
    if not directory.is_dir():
        report.say(f"snapcore: warning: no output directory {directory} (nothing snapshot "
                   "there yet, or another -o DIR)")
    found = records.select(snapshots(directory), name_filter, cutoff)
    found = found[:1] if latest else found
    if as_json:
        report.print_json({"ok": True, "snapshots": [report.record_dict(r) for r in found]})
    elif quiet:
        for record in found:
            if record.core is not None:
                click.echo(str(record.core))
    elif sys.stdout.isatty():
        print_records(found, report.stdout_console())
    else:
        print_records_plain(found)


def print_records(found, console) -> None:
    """A table for people.  The core's name is never wrapped, whatever the
    terminal's width (it is what an operator copies): the reason column
    gives way instead."""
    if not found:
        console.print("no snapshots", highlight=False)
        return
    from rich.table import Table
    table = Table()
    for column in ("taken (UTC)", "target", "pid", "size", "threads", "zst", "reason"):
        table.add_column(column, overflow="fold")
    table.add_column("core", no_wrap=True, overflow="ignore")
    for record in found:
        r = report.record_dict(record)
        table.add_row(r["taken_at"].replace("T", " ")[:19], plain(r["name"] or "?"),
                      str(r["pid"]), human(r["size"]), str(r["threads"]),
                      "yes" if r["compressed"] else "no", plain(r["reason"]),
                      plain(Path(r["core"]).name if r["core"] else "(missing)"))
    console.print(table, soft_wrap=True)


PLAIN_COLUMNS = ("taken_at", "name", "pid", "size", "threads", "compressed", "reason", "core")


def print_records_plain(found) -> None:
    """For scripts: a header, then one tab-separated line per snapshot with the
    core's full path (tabs and newlines in a reason become spaces; a boolean
    is yes or no)."""
    print("\t".join(PLAIN_COLUMNS))
    for record in found:
        r = report.record_dict(record)
        r["core"] = r["core"] or ""
        r["compressed"] = "yes" if r["compressed"] else "no"
        print("\t".join(" ".join(str(r[c] if r[c] is not None else "").split())
                        for c in PLAIN_COLUMNS))


def plain(text: str) -> str:
    return text.replace("[", "\\[")


@cli.command()
@click.option("-o", "--output-dir", type=OUTPUT_DIR,
              help="The output directory to prune (default as for snap).")
@click.option("--keep", type=Bounded("keep"), metavar="N",
              help=f"Keep the N newest snapshots of each program ({bounds.span('keep')}).")
@click.option("--older-than", type=Bounded("older_than", "duration"), metavar="DURATION",
              help="Remove snapshots older than this (e.g. 7d, 12h; "
                   f"{bounds.span('older_than')}).")
@click.option("--max-total", type=Bounded("max_total", "size"), metavar="SIZE",
              help="Remove the oldest snapshots until all together take at most SIZE "
                   f"({bounds.span('max_total')}).")
@click.option("--dry-run", is_flag=True, help="Say what would be removed; remove nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
def prune(output_dir, keep, older_than, max_total, dry_run, as_json):
    """Remove old snapshots (a core and its record together).

    Only snapshots with a snapcore record are considered: files snapcore did
    not write are never touched.
    """
    if keep is None and older_than is None and max_total is None:
        fail(BadInput("nothing to prune by", "give --keep, --older-than or --max-total",
                      stage=Stage.USAGE), as_json)
    found = snapshots(output_dir or default_output_dir())
    doomed = records.plan_prune(found, keep=keep, older_than=older_than, max_total=max_total)
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

