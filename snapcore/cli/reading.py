"""The commands that read a snapshot, like coredumpctl: info, debug (stacks:
cli/stacks.py).

MATCH names a snapshot (cli/opening.py): a pid or a program name in the
output directory, or a core file, with or without its record.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import click

from snapcore.cli import render as report
from snapcore.cli.app import cli, fail
# snapshots: cli/tools.py imports it from here.
from snapcore.cli.opening import exe_changed, find, snapshots  # noqa: F401
from snapcore.cli.opening import executable as exe_for
from snapcore.cli.options import DEBUG_EXIT_CODES_HELP, INFO_EXIT_CODES_HELP
from snapcore.cli.paths import OUTPUT_DIR
from snapcore.errors import BadInput, OutputError, SnapcoreError, Stage

NOT_A_CRASH = ("gdb reports \"Program terminated with signal SIGABRT\": that is how the "
               "snapshot was made (its copy-on-write child took SIGABRT), not a crash")

output_dir_option = click.option(
    "-o", "--output-dir", type=OUTPUT_DIR,
    help="The output directory to look in (default as for snap).")
match_argument = click.argument("match", required=False, metavar="[MATCH]")
exe_option = click.option(
    "--exe", type=click.Path(exists=True, dir_okay=False),
    help="The executable of the core, when its record is missing or names the wrong one "
         "(default: the record's, else the one the core's notes name, if it still exists).")


@cli.command(epilog=INFO_EXIT_CODES_HELP)
@match_argument
@output_dir_option
@exe_option
@click.option("--frames", type=click.IntRange(0, 10000), default=5, show_default=True,
              metavar="N", help="Each thread's N innermost frames: the stacks kept with the "
                                "snapshot, else read now as snapcore stacks --core does; 0: none.")
@click.option("--json", "as_json", is_flag=True, help="Print the record as one JSON document.")
def info(match, output_dir, exe, frames, as_json):
    """The record, threads and stacks of the newest snapshot MATCH names.

    MATCH: a pid, a program name, or a core file (with or without a record
    beside it; .zst or not); none: the newest snapshot. A core without a
    record is described from its own notes. The stacks are the ones kept
    with the snapshot (snap --stacks, snapcore stacks), else read now by the
    runtime's reader (Python, Java, Go; else gdb).
    """
    from snapcore.core import corefile
    from snapcore.core.records import core_problem
    try:
        record, core = find(match, output_dir)
        facts = corefile.read_facts(core) if record is None else None
    except SnapcoreError as exc:
        fail(exc, as_json)
    warnings = [w for w in (exe_changed(record, exe),
                            record and core_problem(record)) if w]
    stacks, problem = _stacks(record, core, exe) if frames else (None, None)
    warnings += [problem] if problem else []
    if as_json:
        report.print_json({"ok": True, "core": str(core) if core else None,
                           "record": record and record.data.to_json(),
                           "path": record and str(record.sidecar),
                           "from_core": facts and _facts_dict(facts, exe),
                           "stacks": stacks and stacks.to_dict(),
                           "warnings": warnings})
        return
    if record is not None:
        report.print_info(record, report.stdout_console())
    else:
        _print_facts(core, facts, exe)
    if stacks is not None:
        click.echo("\n" + stacks.render(top=frames))
    for line in warnings:
        report.say(f"snapcore: warning: {line}")
    report.say(f"snapcore: note: {NOT_A_CRASH}")


def _stacks(record, core: Path | None, exe: str | None):
    """(the snapshot's stacks, why there are none): the kept ones, else read
    from the core now; a reader missing or failing is a warning, not info's
    failure (the record is still worth showing)."""
    from snapcore.core import keptstacks
    from snapcore.core.readers import read_core
    from snapcore.core.records import core_problem
    kept = record and keptstacks.kept(record)
    if kept:
        return kept, None
    if core is None or (record is not None and core_problem(record)):
        return None, None  # said already: the core is missing or not whole
    try:
        return read_core(core, exe_for(record, core, exe)), None
    except SnapcoreError as exc:
        return None, f"no stacks: {report.error_line(exc)}"


def _facts_dict(facts, exe: str | None) -> dict:
    return {"pid": facts.pid, "name": facts.name, "args": facts.args, "uid": facts.uid,
            "exe": exe or facts.exe, "threads": facts.tids}


def _print_facts(core: Path, facts, exe: str | None) -> None:
    """A core without a record, as its notes describe it."""
    console = report.stdout_console()
    rows = [("core", f"{core} (no record beside it: read from its notes)"),
            ("target", f"{facts.name} (pid {facts.pid}) {exe or facts.exe or '?'}"),
            ("command", facts.args), ("uid", str(facts.uid)),
            ("threads", f"{len(facts.tids)}: " + " ".join(map(str, facts.tids[:12]))
             + (" ..." if len(facts.tids) > 12 else ""))]
    for key, value in rows:
        console.print(f"{key:<9} {value}", markup=False, highlight=False)


@cli.command(epilog=DEBUG_EXIT_CODES_HELP)
@match_argument
@output_dir_option
@exe_option
@click.option("-A", "--debugger-arguments", "gdb_args", default="", metavar="ARGS",
              help='More arguments for gdb, as one string (e.g. -A "-batch -ex bt").')
def debug(match, output_dir, exe, gdb_args):
    """Open the newest snapshot MATCH names in gdb.

    MATCH as for info: a core file needs no record. The executable is --exe,
    else the record's, else the one the core's notes name; a .zst core is
    unpacked into $TMPDIR (default /var/tmp) first and removed afterwards.
    Exits with gdb's status.
    """
    import shutil
    import tempfile

    from snapcore.core import records
    from snapcore.core.compress import decompress_to
    try:
        record, core = find(match, output_dir)
        if core is None:
            raise OutputError(f"the core of {record.sidecar.name} is missing",
                              "it was removed; see snapcore list", stage=Stage.USAGE)
        damaged = record and records.core_problem(record)
        if damaged:
            raise OutputError(damaged, "gdb would read it wrongly: take another snapshot",
                              stage=Stage.USAGE)
        warning = exe_changed(record, exe)
        exe = exe_for(record, core, exe)
        gdb = shutil.which("gdb")
        if gdb is None:
            from snapcore.errors import ToolError
            raise ToolError("snapcore debug needs gdb, which is not installed",
                            "install it (apt-get install gdb)", stage=Stage.STACKS)
        extra = shlex.split(gdb_args)
    except ValueError as exc:
        fail(BadInput(f"-A {gdb_args!r}: {exc}", "quote it as the shell would",
                      stage=Stage.USAGE), False)
    except SnapcoreError as exc:
        fail(exc, False)
    for line in filter(None, [warning]):
        report.say(f"snapcore: warning: {line}")
    report.say(f"snapcore: note: {NOT_A_CRASH}")
    # A private directory (mkdtemp: new, 0700) in $TMPDIR, which is often
    # everyone's: nothing can be planted at the unpacked core's name there.
    with tempfile.TemporaryDirectory(prefix="snapcore-debug-",
                                     dir=os.environ.get("TMPDIR", "/var/tmp")) as tmp:
        if core.name.endswith(".zst"):
            plain = Path(tmp) / core.name[:-4]
            try:
                decompress_to(core, plain)
            except SnapcoreError as exc:
                fail(exc, False)
            core = plain
        # gdb owns the terminal and Ctrl-C while it runs; snapcore waits.
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            code = subprocess.call([gdb, *extra, exe, str(core)], preexec_fn=_gdb_signals)
        finally:
            signal.signal(signal.SIGINT, previous)
    sys.exit(code)


def _gdb_signals() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGCHLD])  # blocked by main()
