"""What a core file says of its process, from its headers and notes alone.

For `info` and `debug` on a core that has no record beside it: every `-o -`
core, every core copied back from object storage.  The notes are the same
whichever writer (the kernel's or snapcore's) made the core.
"""

from __future__ import annotations

import io
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

from snapcore.core import compress, elf
from snapcore.linux.abi import NT_AUXV, NT_FILE, NT_PRPSINFO, NT_PRSTATUS, PRSTATUS_PID_OFFSET
from snapcore.errors import SETTING, OutputError, Stage

AT_ENTRY = 9  # auxv: the executable's entry point, inside its text mapping
MOST = 256 << 20  # headers and notes past this are not a core's


@dataclass
class CoreFacts:
    pid: int | None = None
    name: str = ""
    args: str = ""  # the command line as the kernel keeps it (80 bytes at most)
    uid: int | None = None
    exe: str | None = None  # the executable's name as the process saw it
    tids: list[int] = field(default_factory=list)
    files: list[str] = field(default_factory=list)  # every mapped file (NT_FILE), in order


def read_facts(core: Path) -> CoreFacts:
    """The process's pid, name, command line, executable and threads, from
    CORE's notes; an OutputError when CORE is not an ELF core."""
    try:
        data = _headers_and_notes(core)
        e_type, segs = elf.segments(io.BytesIO(data))
    except (elf.NotElf, struct.error, OSError) as exc:
        why = getattr(exc, "strerror", None) or "not a complete 64-bit ELF file"
        raise OutputError(f"cannot read {core} as a core: {why}",
                          "give a core file (NAME.core or NAME.core.zst) whole",
                          stage=Stage.USAGE) from None
    if e_type != elf.ET_CORE:
        raise OutputError(f"{core} is an ELF file but not a core (type {e_type})",
                          f"give a core file, and the executable with {SETTING}",
                          stage=Stage.USAGE, setting="exe")
    facts, entry, files = CoreFacts(), None, []
    for seg in (s for s in segs if s.type == elf.PT_NOTE):
        notes = data[seg.offset:seg.offset + seg.filesz]
        for n_type, _name, at, size in elf.notes(notes):
            desc = notes[at:at + size]
            if n_type == NT_PRSTATUS:
                facts.tids.append(struct.unpack_from("<i", desc, PRSTATUS_PID_OFFSET)[0])
            elif n_type == NT_PRPSINFO:
                _prpsinfo(facts, desc)
            elif n_type == NT_AUXV:
                entry = _auxv(desc).get(AT_ENTRY)
            elif n_type == NT_FILE:
                files = _files(desc)
    facts.exe = _executable(files, entry)
    facts.files = [name for _start, _end, name in files]
    return facts


def _headers_and_notes(core: Path) -> bytes:
    """The core's first bytes up to the end of its notes (they come right
    after the program headers, where both writers put them)."""
    data = compress.head(core, 64 << 10)
    _, segs = elf.segments(io.BytesIO(data))
    end = max([s.offset + s.filesz for s in segs if s.type == elf.PT_NOTE] or [0])
    if end > len(data):
        data = compress.head(core, min(end, MOST))
    return data


def _prpsinfo(facts: CoreFacts, desc: bytes) -> None:
    uid, _gid, pid = struct.unpack_from("<IIi", desc, 16)
    fname, psargs = struct.unpack_from("16s80s", desc, 40)
    facts.pid, facts.uid = pid, uid
    facts.name = fname.split(b"\0")[0].decode(errors="replace")
    facts.args = psargs.split(b"\0")[0].decode(errors="replace").strip()


def _auxv(desc: bytes) -> dict[int, int]:
    pairs = struct.iter_unpack("<QQ", desc[:len(desc) - len(desc) % 16])
    return {key: value for key, value in pairs}


def _files(desc: bytes) -> list[tuple[int, int, str]]:
    """NT_FILE: (start, end, name) per file mapping."""
    count, _page = struct.unpack_from("<QQ", desc)
    names = desc[16 + 24 * count:].split(b"\0")
    ranges = [struct.unpack_from("<QQQ", desc, 16 + 24 * i)[:2] for i in range(count)]
    return [(s, e, os.fsdecode(n)) for (s, e), n in zip(ranges, names)]


def _executable(files: list[tuple[int, int, str]], entry: int | None) -> str | None:
    """The file mapped where the program's entry point is (auxv AT_ENTRY);
    without an auxv, the first file mapped (the kernel maps the executable
    before the interpreter and libraries)."""
    for start, end, name in files:
        if entry is not None and start <= entry < end:
            return name
    return files[0][2] if files and entry is None else None
