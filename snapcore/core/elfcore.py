"""The ELF header and program headers of a core, laid out as the kernel lays
them out (fs/binfmt_elf.c: elf_core_dump, fill_elf_header, fill_elf_note_phdr).

The file: the ELF header, the program headers (PT_NOTE first, then one
PT_LOAD per mapping in address order), the notes, padding to the next page,
then each PT_LOAD's bytes back to back (p_filesz of them, possibly 0).  More
than 65534 mappings use extended numbering: e_phnum PN_XNUM and the real
count in sh_info of one section header at the very end (fill_extnum_info).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from snapcore.linux import arch

EHDR_SIZE = 64
PHDR_SIZE = 56
SHDR_SIZE = 64
PT_LOAD, PT_NOTE = 1, 4
ET_CORE = 4
PN_XNUM = 0xFFFF
ELF_EXEC_PAGESIZE = 4096


@dataclass
class Load:
    """One mapping: where it was, and which of its bytes the core holds."""

    vaddr: int
    memsz: int
    flags: int  # PF_R 4, PF_W 2, PF_X 1
    filesz: int  # bytes from vaddr the core holds (the rest: p_memsz only)
    # Address ranges inside [vaddr, vaddr + filesz) that hold data; the rest
    # are holes.  None: read it all (file-backed memory, read through).
    runs: list[tuple[int, int]] | None = None
    offset: int = 0  # p_offset, set by Layout

    def data_bytes(self) -> int:
        if self.runs is None:
            return self.filesz
        return sum(end - start for start, end in self.runs)


@dataclass
class Layout:
    loads: list[Load]
    notes: bytes
    notes_offset: int = 0
    data_offset: int = 0
    size: int = 0  # the whole file
    extended: bool = field(init=False, default=False)

    def __post_init__(self) -> None:
        segments = len(self.loads) + 1
        self.extended = segments >= PN_XNUM
        self.notes_offset = EHDR_SIZE + segments * PHDR_SIZE
        self.data_offset = _round_up(self.notes_offset + len(self.notes), ELF_EXEC_PAGESIZE)
        offset = self.data_offset
        for load in self.loads:
            load.offset = offset
            offset += load.filesz
        self.size = offset + (SHDR_SIZE if self.extended else 0)

    def data_bytes(self) -> int:
        """What will be read from memory and written: the progress total."""
        return sum(load.data_bytes() for load in self.loads)

    def headers(self) -> bytes:
        """ELF header, program headers, notes and the padding up to the data."""
        segments = len(self.loads) + 1
        shoff = self.size - SHDR_SIZE if self.extended else 0
        ident = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8)  # 64-bit, LSB, v1, SYSV
        ehdr = ident + struct.pack("<HHIQQQIHHHHHH", ET_CORE, arch.ELF_MACHINE, 1, 0,
                                   EHDR_SIZE, shoff, 0, EHDR_SIZE, PHDR_SIZE,
                                   PN_XNUM if self.extended else segments,
                                   SHDR_SIZE if self.extended else 0,
                                   1 if self.extended else 0, 0)
        out = [ehdr, struct.pack("<IIQQQQQQ", PT_NOTE, 0, self.notes_offset, 0, 0,
                                 len(self.notes), 0, 4)]
        out += [struct.pack("<IIQQQQQQ", PT_LOAD, load.flags, load.offset, load.vaddr, 0,
                            load.filesz, load.memsz, ELF_EXEC_PAGESIZE)
                for load in self.loads]
        out.append(self.notes)
        head = b"".join(out)
        return head + b"\0" * (self.data_offset - len(head))

    def section_header(self) -> bytes:
        """The one section header of extended numbering: SHT_NULL, sh_size the
        section count (1), sh_info the real number of program headers."""
        return struct.pack("<IIQQQQIIQQ", 0, 0, 0, 0, 0, 1, 0, len(self.loads) + 1, 0, 0)


def _round_up(n: int, to: int) -> int:
    return (n + to - 1) // to * to
