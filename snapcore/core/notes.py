"""The core's notes: which threads it holds, and their ids rewritten to the
target's own, in place.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from snapcore.core import elf
from snapcore.errors import CoreNotWritten, Stage
from snapcore.linux import abi, arch


class HeldCore(Protocol):
    """What this module needs of a core held by descriptor (store.OpenCore):
    named here rather than imported, since store.py uses this module."""

    fd: int
    path: Path


@dataclass
class CoreNotes:
    prstatus_pids: list[int]  # one per thread, in note order
    prstatus_offsets: list[int]  # file offset of each of those pr_pid fields
    prpsinfo_pid: int | None
    prpsinfo_offset: int | None
    loads_end: int  # where the last PT_LOAD's file data ends


def read_notes(core: HeldCore) -> CoreNotes:
    """Read an ELF core's thread pids from its notes; refuse anything else."""
    with os.fdopen(os.dup(core.fd), "rb") as f:
        try:
            e_type, segs = elf.segments(f)
        except elf.NotElf:
            raise CoreNotWritten(f"{core.path} is not a 64-bit ELF file",
                                 "the kernel wrote no usable core", stage=Stage.CORE) from None
        if e_type != elf.ET_CORE:
            raise CoreNotWritten(f"{core.path} is not an ELF core (type {e_type})",
                                 "the kernel wrote no usable core", stage=Stage.CORE)
        notes = CoreNotes([], [], None, None, 0)
        for seg in segs:
            if seg.type == elf.PT_LOAD:
                notes.loads_end = max(notes.loads_end, seg.offset + seg.filesz)
            elif seg.type == elf.PT_NOTE:
                f.seek(seg.offset)
                data = f.read(seg.filesz)
                for n_type, _name, desc_at, _size in elf.notes(data):
                    if n_type == abi.NT_PRSTATUS:
                        at = desc_at + arch.PRSTATUS_PID_OFFSET
                        notes.prstatus_pids.append(_int32(data, at))
                        notes.prstatus_offsets.append(seg.offset + at)
                    elif n_type == abi.NT_PRPSINFO:
                        at = desc_at + arch.PRPSINFO_PID_OFFSET
                        notes.prpsinfo_pid = _int32(data, at)
                        notes.prpsinfo_offset = seg.offset + at
    return notes


def _int32(data: bytes, at: int) -> int:
    return struct.unpack_from("<i", data, at)[0]


def rename_threads(core: HeldCore, notes: CoreNotes, tids: dict[int, int],
                   pid: int) -> None:
    """Write the target's own ids over the child's in the core's notes, in place.

    The kernel names the child's thread ids, while glibc's thread list in the
    core's memory holds the target's: without this, gdb shows every thread
    twice, once without registers.  Only a few bytes of the note segment change.
    """
    for old, offset in zip(notes.prstatus_pids, notes.prstatus_offsets):
        if old in tids:
            os.pwrite(core.fd, struct.pack("<i", tids[old]), offset)
    if notes.prpsinfo_offset is not None:
        os.pwrite(core.fd, struct.pack("<i", pid), notes.prpsinfo_offset)


def check_core(core: HeldCore, child_pid: int) -> CoreNotes:
    notes = read_notes(core)
    if child_pid not in notes.prstatus_pids:
        raise CoreNotWritten(f"{core.path} does not describe the snapshot (pids "
                             f"{notes.prstatus_pids}, expected {child_pid})",
                             "another core matched core_pattern; look for it by hand",
                             stage=Stage.CORE)
    size = os.fstat(core.fd).st_size
    if size < notes.loads_end:
        raise CoreNotWritten(f"core {core.path} is truncated ({size} of {notes.loads_end} "
                             "bytes)", "the disk may be full: free space or choose another output "
                             "directory", setting="output_dir",
                             stage=Stage.DUMP)
    return notes


# Register sets the kernel writes per thread (the architecture's); every
# other note is the process's.
THREAD_NOTES = arch.THREAD_NOTES


def main_thread_first(core: HeldCore, lwp: int) -> bool:
    """Put thread `lwp`'s notes first, in place, as write_note_info would had
    that thread dumped: its NT_PRSTATUS, the process's notes that follow the
    first thread's, its other register sets, then every other thread as it
    was.  gdb opens a core on its first thread: the kernel's writer puts the
    dumping thread there, which is the thread that ran the fork.  The note
    segment keeps its size and place.  Returns whether anything moved."""
    with os.fdopen(os.dup(core.fd), "rb") as f:
        _type, segs = elf.segments(f)
        seg = next((s for s in segs if s.type == elf.PT_NOTE), None)
        if seg is None:
            return False
        f.seek(seg.offset)
        data = f.read(seg.filesz)
    groups: list[list[bytes]] = []  # per thread: its notes, NT_PRSTATUS first
    early: list[bytes] = []  # the process's notes inside the first thread's group
    late: list[bytes] = []  # the process's notes after the threads' (or before any)
    for n_type, _name, desc_at, size in elf.notes(data):
        start = elf.note_start(desc_at, _name)
        raw = data[start:desc_at + ((size + 3) & ~3)]
        if n_type == abi.NT_PRSTATUS:
            groups.append([raw])
        elif n_type in THREAD_NOTES and groups:
            groups[-1].append(raw)
        elif len(groups) == 1 and len(groups[0]) == 1:
            early.append(raw)
        else:
            late.append(raw)
    # A "CORE" note: its header, the name padded to 8, then elf_prstatus.
    pids = [_int32(g[0], elf.NOTE.size + 8 + arch.PRSTATUS_PID_OFFSET) for g in groups]
    if not groups or lwp not in pids or pids[0] == lwp:
        return False
    main = groups.pop(pids.index(lwp))
    order = [main[0], *early, *main[1:]] + [raw for g in groups for raw in g] + late
    os.pwrite(core.fd, b"".join(order), seg.offset)
    return True

