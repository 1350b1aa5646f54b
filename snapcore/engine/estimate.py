"""Numbers for the preflight: how big the core will be, how much memory the
copy-on-write child may cost, and how much room the machine has."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import NamedTuple

from snapcore.linux import arch
from snapcore.linux.proctext import proc_open


@dataclass
class Mapping:
    perms: str  # "rw-p"
    offset: int
    inode: int
    path: str
    size: int
    rss: int
    anonymous: int
    flags: set[str]
    start: int = 0
    end: int = 0
    swap: int = 0


def read_smaps(pid: int) -> list[Mapping]:
    maps: list[Mapping] = []
    header = re.compile(r"^([0-9a-f]+)-([0-9a-f]+) (\S+) ([0-9a-f]+) \S+ (\d+)\s*(.*)$")
    with proc_open(f"/proc/{pid}/smaps") as f:
        for line in f:
            m = header.match(line)
            if m:
                start, end = int(m.group(1), 16), int(m.group(2), 16)
                maps.append(Mapping(m.group(3), int(m.group(4), 16), int(m.group(5)),
                                    m.group(6), end - start, 0, 0, set(), start, end))
            elif maps and line.startswith("Rss:"):
                maps[-1].rss = int(line.split()[1]) * 1024
            elif maps and line.startswith("Anonymous:"):
                maps[-1].anonymous = int(line.split()[1]) * 1024
            elif maps and line.startswith("Swap:"):
                maps[-1].swap = int(line.split()[1]) * 1024
            elif maps and line.startswith("VmFlags:"):
                maps[-1].flags = set(line.split()[1:])
    return maps


def coredump_filter(pid: int) -> int:
    with open(f"/proc/{pid}/coredump_filter") as f:
        return int(f.read().strip(), 16)


class CoreSize(NamedTuple):
    apparent: int  # the file's size, holes included (ls -l)
    allocated: int  # what it takes on disk (du): what the disk check needs


def core_size(maps: list[Mapping], filter_bits: int, threads: int) -> CoreSize:
    """How big the kernel's core will be.

    Mirrors vma_dump_size() in fs/coredump.c: VM_DONTDUMP and VM_IO mappings
    are skipped; bits of coredump_filter choose anonymous/file, private/shared
    and hugetlb mappings; a private file mapping with copied-on-write pages is
    dumped whole when anonymous private memory is; otherwise its first page
    when it starts an ELF file (bit 4).  Each dumped mapping counts whole in
    the file's size; on disk, dump_user_range() leaves a hole for each page
    get_dump_page() finds never touched (anonymous memory neither resident
    nor swapped), but reads a file-backed page in from its file, resident or
    not.  So a JVM's reserved heap is mostly holes, while a library's data
    mapping, once written, takes its whole size.
    """
    apparent = allocated = 0
    for m in maps:
        whole = _dumped(m, filter_bits)
        if whole:
            apparent += m.size
            allocated += m.rss + m.swap if m.inode == 0 or "ht" in m.flags else m.size
        elif m.inode != 0 and m.perms[3] == "p" and filter_bits & (1 << 4) and m.offset == 0:
            apparent += arch.PAGE_SIZE
            allocated += arch.PAGE_SIZE
    notes = threads * 4 * arch.PAGE_SIZE + 64 * 1024  # registers, FP state, files
    return CoreSize(apparent + notes, allocated + notes)


def _dumped(m: Mapping, filter_bits: int) -> bool:
    """Whether the kernel dumps this mapping whole (vma_dump_size)."""
    def bit(n: int) -> bool:
        return bool(filter_bits & (1 << n))

    if "dd" in m.flags or "io" in m.flags:
        return False
    shared = m.perms[3] == "s"
    if "ht" in m.flags:
        return bit(6) if shared else bit(5)
    if m.inode == 0:
        return bit(1) if shared else bit(0)
    if shared:
        return bit(3)
    return bit(2) or (m.anonymous > 0 and bit(0))


def cow_worst_case(maps: list[Mapping]) -> int:
    """What the child may cost if the target rewrites every private page it holds."""
    return sum(m.rss for m in maps if m.perms[1] == "w" and m.perms[3] == "p"
               and "dd" not in m.flags)


def private_writable_size(maps: list[Mapping]) -> int:
    """What fork() charges against the commit limit (vm.overcommit_memory=2)."""
    return sum(m.size for m in maps if m.perms[1] == "w" and m.perms[3] == "p")


def meminfo() -> dict[str, int]:
    out = {}
    with open("/proc/meminfo") as f:
        for line in f:
            key, value = line.split(":", 1)
            out[key] = int(value.split()[0]) * 1024
    return out


def overcommit_mode() -> int:
    with open("/proc/sys/vm/overcommit_memory") as f:
        return int(f.read())


def free_space(path: str) -> tuple[int, int]:
    """Bytes available to an unprivileged writer, and the filesystem's size."""
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize
