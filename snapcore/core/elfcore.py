"""The ELF header and program headers of a core, laid out as the kernel lays
them out (fs/binfmt_elf.c: elf_core_dump, fill_elf_header, fill_elf_note_phdr).

The file: the ELF header, the program headers (PT_NOTE first, then one
PT_LOAD per mapping in address order), the notes, padding to the next page,
then each PT_LOAD's bytes back to back (p_filesz of them, possibly 0).  More
than 65534 mappings use extended numbering: e_phnum PN_XNUM and the real
count in sh_info of one section header at the very end (fill_extnum_info).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from snapcore.core.elf import (EHDR, EHDR_SIZE, ET_CORE, PHDR, PN_XNUM, PT_LOAD, PT_NOTE,
                               SHDR)
from snapcore.linux import arch

PHDR_SIZE = PHDR.size
SHDR_SIZE = SHDR.size
ELF_EXEC_PAGESIZE = 4096
# e_ident: magic, ELFCLASS64, ELFDATA2LSB, EV_CURRENT, ELFOSABI_SYSV, padding.
IDENT = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8)


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
        ehdr = IDENT + EHDR.pack(
            e_type=ET_CORE, e_machine=arch.ELF_MACHINE, e_version=1, e_entry=0,
            e_phoff=EHDR_SIZE, e_shoff=shoff, e_flags=0, e_ehsize=EHDR_SIZE,
            e_phentsize=PHDR_SIZE, e_phnum=PN_XNUM if self.extended else segments,
            e_shentsize=SHDR_SIZE if self.extended else 0,
            e_shnum=1 if self.extended else 0, e_shstrndx=0)
        out = [ehdr, PHDR.pack(p_type=PT_NOTE, p_flags=0, p_offset=self.notes_offset,
                               p_vaddr=0, p_paddr=0, p_filesz=len(self.notes), p_memsz=0,
                               p_align=4)]
        out += [PHDR.pack(p_type=PT_LOAD, p_flags=load.flags, p_offset=load.offset,
                          p_vaddr=load.vaddr, p_paddr=0, p_filesz=load.filesz,
                          p_memsz=load.memsz, p_align=ELF_EXEC_PAGESIZE)
                for load in self.loads]
        out.append(self.notes)
        head = b"".join(out)
        return head + b"\0" * (self.data_offset - len(head))

    def section_header(self) -> bytes:
        """The one section header of extended numbering: SHT_NULL, sh_size the
        section count (1), sh_info the real number of program headers."""
        return SHDR.pack(sh_name=0, sh_type=0, sh_flags=0, sh_addr=0, sh_offset=0, sh_size=1,
                         sh_link=0, sh_info=len(self.loads) + 1, sh_addralign=0, sh_entsize=0)


def _round_up(n: int, to: int) -> int:
    return (n + to - 1) // to * to
