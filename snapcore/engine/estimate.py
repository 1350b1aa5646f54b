"""Numbers for the preflight: how big the core will be, how much memory the
copy-on-write child may cost, and how much room the machine has."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from snapcore.linux import arch


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


def read_smaps(pid: int) -> list[Mapping]:
    maps: list[Mapping] = []
    header = re.compile(r"^([0-9a-f]+)-([0-9a-f]+) (\S+) ([0-9a-f]+) \S+ (\d+)\s*(.*)$")
    with open(f"/proc/{pid}/smaps") as f:
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
            elif maps and line.startswith("VmFlags:"):
                maps[-1].flags = set(line.split()[1:])
    return maps


def coredump_filter(pid: int) -> int:
    with open(f"/proc/{pid}/coredump_filter") as f:
        return int(f.read().strip(), 16)


def core_size(maps: list[Mapping], filter_bits: int, threads: int) -> int:
    """Bytes the kernel will write (resident pages of the mappings it dumps).

    Mirrors vma_dump_size() in fs/coredump.c: VM_DONTDUMP and VM_IO mappings
    are skipped; bits of coredump_filter choose anonymous/file, private/shared
    and hugetlb mappings; a private file mapping with copied-on-write pages is
    dumped whole when anonymous private memory is; otherwise its first page
    when it starts an ELF file (bit 4).  Pages never touched are holes.
    """
    def bit(n: int) -> bool:
        return bool(filter_bits & (1 << n))

    total = 0
    for m in maps:
        if "dd" in m.flags or "io" in m.flags:
            continue
        shared = m.perms[3] == "s"
        anon = m.inode == 0
        if "ht" in m.flags:
            dumped = bit(6) if shared else bit(5)
        elif anon:
            dumped = bit(1) if shared else bit(0)
        elif shared:
            dumped = bit(3)
        else:
            dumped = bit(2) or (m.anonymous > 0 and bit(0))
        if dumped:
            total += m.rss
        elif not anon and not shared and bit(4) and m.offset == 0:
            total += arch.PAGE_SIZE
    return total + threads * 4 * arch.PAGE_SIZE + 64 * 1024  # notes: registers, FP state, files


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
