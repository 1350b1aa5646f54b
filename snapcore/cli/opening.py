"""Which snapshot MATCH names, and which executable reads it: for info, debug
and stacks --core.

MATCH is a pid, a program name (part of the name, executable or program of
a record), or a core file, with or without a record beside it (a `-o -`
core, one copied back from object storage); the newest that matches is taken.
"""

from __future__ import annotations

import os
from pathlib import Path

from snapcore.cli import render as report
from snapcore.errors import BadInput, NoSuchProcess, Stage


def snapshots(directory: Path) -> list:
    """The records in `directory` (records.records), each one that snapcore
    cannot read left out with a warning on stderr naming its file."""
    from snapcore.core import records
    skipped: list[str] = []
    found = records.records(directory, skipped)
    for line in skipped:
        report.say(f"snapcore: warning: skipped {line}")
    return found


def find(match: str | None, output_dir: Path | None):
    """(record, core) for the newest snapshot MATCH names; record is None for
    a core file with no record beside it.  A one-line error when none."""
    from snapcore.core import records
    from snapcore.core.placement import default_output_dir
    directory = output_dir or default_output_dir()
    if match and (os.sep in match or Path(match).is_file()):
        core = Path(match).absolute()
        if not core.is_file():
            raise BadInput(f"no core file {match}", "give a core file, a pid or a name "
                           "(see snapcore list)", stage=Stage.USAGE)
        found = [r for r in snapshots(core.parent) if r.core == core]
        return (found[0], core) if found else (None, core)
    pid = int(match) if match and match.isdigit() else None
    found = records.select(snapshots(directory), None if pid else match, pid=pid)
    if not found:
        what = f"matching {match!r} " if match else ""
        raise NoSuchProcess(f"no snapshot {what}in {directory}",
                            "see snapcore list (or give -o DIR)", stage=Stage.USAGE)
    return found[0], found[0].core  # core None: removed since


def executable(record, core: Path, given: str | None) -> str:
    """The executable gdb reads CORE with: --exe, else the record's, else the
    one the core's notes name (NT_FILE at auxv AT_ENTRY) if it still exists."""
    from snapcore.core import corefile, records
    if given:
        return given
    if record is not None:
        exe = records.executable_here(record.data)
        where = f"its record names {exe}" if exe else "its record names no executable"
    else:
        exe = (corefile.read_facts(core).exe or "").removesuffix(" (deleted)")
        where = f"its notes name {exe}" if exe else "its notes name no executable"
    if not exe or not os.path.isfile(exe):
        raise BadInput(f"no executable for {core.name}: {where}, which is not here",
                       "give it with --exe EXE", stage=Stage.USAGE)
    return exe


def exe_changed(record, exe: str | None = None) -> str | None:
    """A warning when the executable (the record's, or --exe) is no longer
    the one snapshotted (an upgrade since): gdb would read the wrong symbols."""
    from snapcore.core import elf, records
    if record is None and exe is None:
        return None
    then = record.data.target.build_id if record is not None else None
    if exe is None:
        exe = record.data.target.exe
        if exe and records.executable_here(record.data) != exe:
            return None
    if not exe or not then:
        return None
    now = elf.build_id(exe) if os.path.exists(exe) else None
    if now == then:
        return None
    return (f"{exe} is not the executable that was snapshotted (build-id {then}, now "
            f"{now or 'missing'}): gdb may show wrong symbols; use the old build")
