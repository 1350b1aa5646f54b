"""Just enough ELF: the header, program headers and notes of a 64-bit file."""

from __future__ import annotations

import struct
from dataclasses import dataclass

PT_LOAD = 1
PT_NOTE = 4
ET_CORE = 4
NT_GNU_BUILD_ID = 3


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
    head = f.read(64)
    if len(head) < 64 or head[:4] != b"\x7fELF" or head[4] != 2:
        raise NotElf("not a 64-bit ELF file")
    e_type, = struct.unpack_from("<H", head, 16)
    phoff, = struct.unpack_from("<Q", head, 32)
    phentsize, phnum = struct.unpack_from("<HH", head, 54)
    f.seek(phoff)
    table = f.read(phentsize * phnum)
    found = []
    for i in range(phnum):
        p_type, _flags, p_offset, _va, _pa, p_filesz = struct.unpack_from(
            "<IIQQQQ", table, i * phentsize)
        found.append(Segment(p_type, p_offset, p_filesz))
    return e_type, found


def notes(data: bytes):
    """(type, name, offset of the descriptor in `data`, descriptor size) per note."""
    at = 0
    while at + 12 <= len(data):
        namesz, descsz, n_type = struct.unpack_from("<III", data, at)
        name = data[at + 12:at + 12 + namesz].rstrip(b"\0")
        desc_at = at + 12 + _align4(namesz)
        yield n_type, name, desc_at, descsz
        at = desc_at + _align4(descsz)


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
