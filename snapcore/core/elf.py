"""Just enough ELF: the header, program headers and notes of a 64-bit file,
their numbers and layouts (include/uapi/linux/elf.h), read here and
written by core/elfcore.py and core/corenotes.py."""

from __future__ import annotations

import struct
from dataclasses import dataclass

PT_LOAD = 1
PT_NOTE = 4
ET_CORE = 4
PN_XNUM = 0xFFFF  # e_phnum of a file with more program headers: the count is elsewhere
NT_GNU_BUILD_ID = 3  # in the "GNU" notes; the core notes' types: linux/abi.py, arch


class Fields:
    """A C struct, little-endian, as (field, struct format) pairs; a field
    named None is padding.  Packs to exactly the bytes of the joined format."""

    def __init__(self, *fields: tuple[str | None, str]):
        self.fields = fields
        self.format = "<" + "".join(fmt for _, fmt in fields)
        self.size = struct.calcsize(self.format)

    def pack(self, **values) -> bytes:
        return struct.pack(self.format, *(values[name] for name, _ in self.fields if name))

    def unpack_from(self, data: bytes, at: int = 0) -> dict:
        named = [name for name, _ in self.fields if name]
        return dict(zip(named, struct.unpack_from(self.format, data, at)))

    def offset(self, field: str) -> int:
        names = [name for name, _ in self.fields]
        return struct.calcsize("<" + "".join(fmt for _, fmt in self.fields[:names.index(field)]))


# Elf64_Ehdr after e_ident (16 bytes: magic, class, data, version, OS ABI, pad).
EHDR_IDENT = 16
EHDR = Fields(("e_type", "H"), ("e_machine", "H"), ("e_version", "I"), ("e_entry", "Q"),
              ("e_phoff", "Q"), ("e_shoff", "Q"), ("e_flags", "I"), ("e_ehsize", "H"),
              ("e_phentsize", "H"), ("e_phnum", "H"), ("e_shentsize", "H"),
              ("e_shnum", "H"), ("e_shstrndx", "H"))
EHDR_SIZE = EHDR_IDENT + EHDR.size  # 64
PHDR = Fields(("p_type", "I"), ("p_flags", "I"), ("p_offset", "Q"), ("p_vaddr", "Q"),
              ("p_paddr", "Q"), ("p_filesz", "Q"), ("p_memsz", "Q"), ("p_align", "Q"))
SHDR = Fields(("sh_name", "I"), ("sh_type", "I"), ("sh_flags", "Q"), ("sh_addr", "Q"),
              ("sh_offset", "Q"), ("sh_size", "Q"), ("sh_link", "I"), ("sh_info", "I"),
              ("sh_addralign", "Q"), ("sh_entsize", "Q"))
NOTE = Fields(("namesz", "I"), ("descsz", "I"), ("type", "I"))  # then name, desc, each 4-aligned


class NotElf(ValueError):
    pass


@dataclass
class Segment:
    type: int
    offset: int
    filesz: int


def segments(f) -> tuple[int, list[Segment]]:
    """The file's type (e_type) and its program headers."""
    f.seek(0)
    head = f.read(EHDR_SIZE)
    if len(head) < EHDR_SIZE or head[:4] != b"\x7fELF" or head[4] != 2:
        raise NotElf("not a 64-bit ELF file")
    ehdr = EHDR.unpack_from(head, EHDR_IDENT)
    f.seek(ehdr["e_phoff"])
    table = f.read(ehdr["e_phentsize"] * ehdr["e_phnum"])
    found = []
    for i in range(ehdr["e_phnum"]):
        phdr = PHDR.unpack_from(table, i * ehdr["e_phentsize"])
        found.append(Segment(phdr["p_type"], phdr["p_offset"], phdr["p_filesz"]))
    return ehdr["e_type"], found


def notes(data: bytes):
    """(type, name, offset of the descriptor in `data`, descriptor size) per note."""
    at = 0
    while at + NOTE.size <= len(data):
        head = NOTE.unpack_from(data, at)
        name = data[at + NOTE.size:at + NOTE.size + head["namesz"]].rstrip(b"\0")
        desc_at = at + NOTE.size + _align4(head["namesz"])
        descsz = head["descsz"]
        yield head["type"], name, desc_at, descsz
        at = desc_at + _align4(descsz)


def note_start(desc_at: int, name: bytes) -> int:
    """Where a note's header starts, from where its descriptor does."""
    return desc_at - NOTE.size - _align4(len(name) + 1) if name else desc_at - NOTE.size


def _align4(n: int) -> int:
    return (n + 3) & ~3


def build_id(path: str) -> str | None:
    """The GNU build-id of an ELF file, as hex; None when it has none."""
    try:
        with open(path, "rb") as f:
            _type, segs = segments(f)
            for seg in segs:
                if seg.type != PT_NOTE:
                    continue
                f.seek(seg.offset)
                data = f.read(seg.filesz)
                for n_type, name, desc_at, size in notes(data):
                    if n_type == NT_GNU_BUILD_ID and name == b"GNU":
                        return data[desc_at:desc_at + size].hex()
    except (OSError, NotElf):
        return None
    return None
