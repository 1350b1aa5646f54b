"""The record beside every core, and what snapcore does with its snapshots later.

Each core `NAME.core` (or `NAME.core.zst`) has a sidecar `NAME.json`, mode
0600, saying what the process was and why the snapshot was taken: a
recordshape.RecordData, written with its to_json and read with its from_json.  Nothing
from the process's environment goes in (it holds secrets).  `list` and `prune`
only ever look at snapshots that have a sidecar: they never touch files
snapcore did not write.
"""

from __future__ import annotations

import json
import os
import platform
import pwd
import secrets
import socket
import stat
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from snapcore import __version__
from snapcore.core import elf, safefs
from snapcore.core.recordshape import (CoreFile, RecordData, Target, Thread, Writer,
                                       looks_like_ours, shape_problem)
from snapcore.errors import OutputError, Stage

from snapcore.core.recordshape import CORE_SUFFIXES  # noqa: F401 (callers use records.CORE_SUFFIXES)


def sidecar_path(core: Path) -> Path:
    name = core.name
    for suffix in CORE_SUFFIXES[::-1]:
        if name.endswith(suffix):
            return core.with_name(name[: -len(suffix)] + ".json")
    return core.with_name(name + ".json")


def _iso(when: float) -> str:
    return datetime.fromtimestamp(when, timezone.utc).isoformat().replace("+00:00", "Z")


def command_line(args: list[str]) -> list[str]:
    """The arguments, less the empty ones a program that rewrote its argv in
    place (redis, PostgreSQL's backends) leaves at the end of /proc/PID/cmdline."""
    args = list(args)
    while args and args[-1] == "":
        args.pop()
    return args


def executable_here(data: RecordData) -> str:
    """The snapshotted executable in this view of the files: the record's
    `exe` (the target's own name for it), unless that names another build
    here and the target's root, /proc/PID/root, still holds the recorded
    build (a container seen from outside it, while the target lives)."""
    t = data.target
    exe, then = t.exe or "", t.build_id
    if not exe or not then or elf.build_id(exe) == then:
        return exe
    inside = f"/proc/{t.pid}/root{exe}"
    return inside if elf.build_id(inside) == then else exe


def record_of(snap, reason: str = "", trigger: str = "") -> RecordData:
    """The record of a stored snapshot (a snapshot.Snapshot): `reason` the
    operator's, `trigger` what fired it (watch's condition).  Nothing from
    the process's environment: it holds secrets."""
    # Here, not at the top: records is loaded to parse a command line (list,
    # prune), and procfs brings the architecture table and its ctypes.
    from snapcore.linux import procfs
    t = snap.target
    try:
        user = pwd.getpwuid(t.uid).pw_name
    except KeyError:
        user = str(t.uid)
    return RecordData(
        snapcore_version=__version__,
        taken_at=snap.taken_at.isoformat().replace("+00:00", "Z"),
        reason=reason, trigger=trigger,
        target=Target(
            pid=t.pid, name=t.name, exe=t.exe, cmdline=command_line(t.cmdline),
            build_id=snap.exe_build_id if snap.exe_build_id != "" else
            (elf.build_id(t.exe) if t.exe else None),
            started_at=_iso(procfs.started_at(t.start_time)), user=user, uid=t.uid,
            program=snap.program),
        threads=[Thread.from_json(thread) for thread in snap.thread_map],
        pause_ms=round(snap.pause["pause"] * 1000, 3),
        dump_seconds=round(snap.dump_seconds, 3),
        priority_steps=snap.priority_steps,
        core=CoreFile(file=snap.core_path.name, size=snap.core_size,
                      allocated=snap.core_allocated,
                      compressed=snap.core_path.name.endswith(".zst")),
        # What the preflight expected (disk check, controller): beside what
        # was written, so an operator can see how good the guess was.
        core_estimate=snap.core_estimate, core_estimate_apparent=snap.core_apparent,
        regions_missing=snap.regions_missing,
        writer=Writer(name=snap.writer, reason=snap.writer_reason),
        notes=snap.notes, kernel=platform.release(), hostname=socket.gethostname())


def write_sidecar(snap, reason: str = "", trigger: str = "") -> Path:
    """Write the record (record_of) for a stored snapshot beside its core."""
    path = sidecar_path(snap.core_path)
    write_json(path, record_of(snap, reason, trigger).to_json(), "the record")
    return path


STACKS_SUFFIX = ".stacks.json"


def stacks_path(sidecar: Path) -> Path:
    """Where a snapshot's stacks are kept once read (core/keptstacks.py):
    NAME.stacks.json beside its record NAME.json."""
    return sidecar.with_name(sidecar.name[:-len(".json")] + STACKS_SUFFIX)


def write_json(path: Path, doc, what: str) -> None:
    """Write `doc` as JSON at `path`, whole, then renamed: never seen half
    written.  The directory may be a sticky one others write too: the partial
    is a new file under a name nobody can guess, the rename replaces whatever
    was planted at the name without following it (safefs.py)."""
    partial = f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.part"
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        with os.fdopen(safefs.create(dir_fd, partial, path.with_name(partial)), "w") as f:
            try:
                json.dump(doc, f, indent=2)
            except BaseException:
                os.unlink(partial, dir_fd=dir_fd)
                raise
        try:
            os.rename(partial, path.name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except OSError as exc:  # a directory planted at the name
            os.unlink(partial, dir_fd=dir_fd)
            raise OutputError(f"cannot write {what} {path}: {exc.strerror}",
                              "remove what is there, or choose another output directory",
                              stage=Stage.CORE) from None
    finally:
        os.close(dir_fd)


@dataclass
class Record:
    """A record found beside its core: the sidecar, the core (None when it is
    missing) and what the record says."""

    sidecar: Path
    core: Path | None
    data: RecordData

    @property
    def taken_at(self) -> float:
        return self.data.taken_at_seconds

    @property
    def target_key(self) -> str:
        t = self.data.target
        return t.program or t.exe or t.name or "?"

    @property
    def size(self) -> int:
        size = self.sidecar.stat().st_size
        if self.core is not None:
            size += self.core.stat().st_size
        return size


def records(directory: Path, skipped: list[str] | None = None) -> list[Record]:
    """Every snapshot in `directory` that has a readable sidecar, newest first.

    Only files of snapcore's euid or of the directory's owner count, never
    through a link: in a sticky directory anyone may add a record naming
    another program and a core of their choosing (`debug` would hand them
    to gdb), or a FIFO that would hang the reader.  A record that is not one
    snapcore can read (not JSON, or a field of the wrong type: hand-edited,
    truncated, another program's) is left out, so one bad file never hides
    the others.  When it looks like snapcore's (its name is
    TIMESTAMP_NAME_PID.json, or a core of that name is beside it), "PATH:
    what is wrong" is appended to `skipped`, for a warning; any other JSON
    file is simply not a record."""
    found: list[Record] = []
    directory = Path(directory)
    try:
        trusted = {os.geteuid(), os.stat(directory).st_uid}
    except OSError:
        return found
    for sidecar in directory.glob("*.json"):
        if sidecar.name.endswith(STACKS_SUFFIX):
            continue  # a snapshot's kept stacks, not a record
        try:
            data = json.loads((safefs.read_own(sidecar, trusted) or b"").decode(errors="replace"))
            problem = shape_problem(data)
        except (OSError, ValueError) as exc:
            problem = f"not readable as JSON ({getattr(exc, 'strerror', None) or exc})"
        if problem is None:
            core = directory / data["core"]["file"]
            st = safefs.lstat_or_none(core)
            ours = st is not None and stat.S_ISREG(st.st_mode) and st.st_uid in trusted
            found.append(Record(sidecar, core if ours else None, RecordData.from_json(data)))
        elif skipped is not None and looks_like_ours(sidecar):
            skipped.append(f"{sidecar}: {problem}")
    return sorted(found, key=lambda r: r.taken_at, reverse=True)


def core_problem(record: Record) -> str | None:
    """Why the core beside a record is not the file the record describes: its
    size differs (cut short when copied, or changed since); None when alike."""
    want = record.data.core.size
    if record.core is None or want is None:
        return None
    have = record.core.stat().st_size
    if have == want:
        return None
    return (f"{record.core.name} is {have} bytes, its record says {want}: truncated or "
            "changed since it was taken")


def select(found: list[Record], name: str | None = None,
           since: float | None = None, pid: int | None = None) -> list[Record]:
    """The records of programs whose name, executable or program (ratelimit)
    contains `name`, of process `pid`, taken since `since`."""
    out = []
    for r in found:
        t = r.data.target
        if name and not any(name in (text or "") for text in (t.name, t.exe, t.program)):
            continue
        if pid is not None and t.pid != pid:
            continue
        if since is not None and r.taken_at < since:
            continue
        out.append(r)
    return out


def plan_prune(found: list[Record], *, keep: int | None = None,
               older_than: float | None = None, max_total: int | None = None,
               now: float | None = None) -> list[Record]:
    """Which snapshots the retention rules remove (newest-first input)."""
    now = time.time() if now is None else now
    doomed: list[Record] = []
    per_target: dict[str, int] = {}
    for r in found:
        per_target[r.target_key] = per_target.get(r.target_key, 0) + 1
        if keep is not None and per_target[r.target_key] > keep:
            doomed.append(r)
        elif older_than is not None and now - r.taken_at > older_than:
            doomed.append(r)
    if max_total is not None:
        kept = [r for r in found if r not in doomed]
        total = sum(r.size for r in kept)
        for r in reversed(kept):  # oldest first
            if total <= max_total:
                break
            doomed.append(r)
            total -= r.size
    return doomed


def remove(record: Record) -> None:
    """Remove a core, its kept stacks and its sidecar together (the core
    first, the record last: a snapshot half removed is still listed)."""
    if record.core is not None:
        record.core.unlink(missing_ok=True)
    stacks_path(record.sidecar).unlink(missing_ok=True)
    record.sidecar.unlink(missing_ok=True)
