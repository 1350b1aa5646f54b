"""A process's mappings as the core writer needs them: /proc/PID/smaps (with
VmFlags), coredump_filter, the file behind each mapping, and which pages are
present (/proc/PID/pagemap).
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import re
import struct
from dataclasses import dataclass, field

from snapcore.linux import arch, procstat
from snapcore.linux.proctext import proc_open

_HEADER = re.compile(r"^([0-9a-f]+)-([0-9a-f]+) (\S{4}) ([0-9a-f]+) (\S+) (\d+)\s*(.*)$")

# /proc/PID/pagemap entries (Documentation/admin-guide/mm/pagemap.rst).
PM_PRESENT = 1 << 63
PM_SWAPPED = 1 << 62
PM_PFN_MASK = (1 << 55) - 1
_ENTRY = 8


@dataclass
class Vma:
    """One line of /proc/PID/smaps."""

    start: int
    end: int
    perms: str  # "rw-p"
    offset: int  # in bytes (the kernel's vm_pgoff * page size)
    inode: int
    path: str  # as /proc shows it ("" for anonymous, "[heap]", "... (deleted)")
    rss: int = 0
    swap: int = 0
    anonymous: int = 0
    hugetlb: int = 0  # hugetlb pages mapped (Private_Hugetlb + Shared_Hugetlb: not in Rss)
    flags: set[str] = field(default_factory=set)  # VmFlags: "rd", "sh", "dd", "io", ...

    @property
    def size(self) -> int:
        return self.end - self.start

    @property
    def special(self) -> bool:
        """A mapping with a name of its own: [vdso], [vvar], [vsyscall], [uprobes]
        (vm_ops->name, or the gate vma).  [heap], [stack] and named anonymous
        memory are ordinary anonymous memory that /proc only labels."""
        return (self.path.startswith("[") and self.path not in ("[heap]", "[stack]")
                and not self.path.startswith(("[anon:", "[anon_shmem:", "[stack:")))

    @property
    def file_backed(self) -> bool:
        return self.inode != 0 or (self.path.startswith("/") and not self.special)


def read_smaps(pid: int) -> list[Vma]:
    vmas: list[Vma] = []
    with proc_open(f"/proc/{pid}/smaps") as f:
        for line in f:
            m = _HEADER.match(line)
            if m:
                vmas.append(Vma(int(m.group(1), 16), int(m.group(2), 16), m.group(3),
                                int(m.group(4), 16), int(m.group(6)), _unescape(m.group(7))))
            elif not vmas:
                continue
            elif line.startswith("Rss:"):
                vmas[-1].rss = int(line.split()[1]) * 1024
            elif line.startswith("Swap:"):
                vmas[-1].swap = int(line.split()[1]) * 1024
            elif line.startswith("Anonymous:"):
                vmas[-1].anonymous = int(line.split()[1]) * 1024
            elif line.startswith(("Private_Hugetlb:", "Shared_Hugetlb:")):
                vmas[-1].hugetlb += int(line.split()[1]) * 1024
            elif line.startswith("VmFlags:"):
                vmas[-1].flags = set(line.split()[1:])
    return vmas


def _unescape(path: str) -> str:
    # seq_file_path escapes a newline in a file name as \012.
    return path.replace("\\012", "\n")


coredump_filter = procstat.coredump_filter  # the writer's and dumprules' name for it


@dataclass
class FileFacts:
    mode: int  # st_mode of the mapped file
    nlink: int  # 0: shmem with no name (MAP_SHARED|MAP_ANONYMOUS, memfd, SysV shm)


def file_facts(pid: int, vma: Vma) -> FileFacts | None:
    """The very inode mapped there, through /proc/PID/map_files (root only),
    else by its path; None when neither can be seen.  Never by the path of
    a deleted file: that name is another file's now, or nothing (the
    shmem of MAP_SHARED|MAP_ANONYMOUS shows as "/dev/zero (deleted)", and
    /dev/zero is a device with a link)."""
    paths = [f"/proc/{pid}/map_files/{vma.start:x}-{vma.end:x}"]
    if not vma.path.endswith(" (deleted)"):
        paths.append(vma.path)
    for path in paths:
        try:
            st = os.stat(path)
            return FileFacts(st.st_mode, st.st_nlink)
        except OSError:
            continue
    return None


def data_runs(pid: int, vma: Vma) -> list[tuple[int, int]] | None:
    """(start, end) address ranges of a shared mapping whose file holds data
    (SEEK_DATA/SEEK_HOLE on the very file, through /proc/PID/map_files: root
    only); None when that cannot be seen.

    Why: a dump reads a shared mapping through the page cache, not through the
    child's page tables (fork copies none for a shared mapping without
    anon_vma: copy_page_range).  For shmem (MAP_SHARED|MAP_ANONYMOUS, memfd,
    SysV shm) reading a page never written allocates it (shmem_fault), in the
    target's own object, for good: the kernel's dump and a plain read of
    /proc/PID/mem both do.  The holes SEEK_HOLE names read as zeros, so a
    writer that skips them writes the same core and allocates nothing.  Swapped
    shmem pages count as data (shmem_seek_hole_data)."""
    first, last = vma.offset, vma.offset + vma.size
    try:
        fd = os.open(f"/proc/{pid}/map_files/{vma.start:x}-{vma.end:x}",
                     os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    runs: list[tuple[int, int]] = []
    try:
        at = first
        while at < last:
            try:
                data = os.lseek(fd, at, os.SEEK_DATA)
                hole = os.lseek(fd, data, os.SEEK_HOLE)
            except OSError as exc:
                if exc.errno == errno.ENXIO:  # no data past `at`
                    break
                return None
            if data < at or hole <= data:  # a file whose lseek ignores SEEK_DATA
                return None
            start, end = max(data, first), min(hole, last)
            if start < end:
                runs.append((vma.start + start - first, vma.start + end - first))
            at = hole
    finally:
        os.close(fd)
    return runs


def present_runs(pagemap_fd: int, start: int, end: int,
                 zero_pfn: int | None) -> list[tuple[int, int]]:
    """(start, end) address ranges of pages that hold data: present or
    swapped out, and not the shared zero page.  What the kernel's get_dump_page
    (FOLL_DUMP) returns a page for; the rest become holes."""
    runs: list[tuple[int, int]] = []
    page = arch.PAGE_SIZE
    step = 1 << 17  # entries per read: 1 MiB of pagemap, 512 MiB of memory
    at = start
    while at < end:
        count = min(step, (end - at) // page)
        raw = os.pread(pagemap_fd, count * _ENTRY, (at // page) * _ENTRY)
        if len(raw) < count * _ENTRY:
            count = len(raw) // _ENTRY
            if count == 0:
                break
        if raw.count(0) == len(raw):  # nothing there at all: the usual case in a reservation
            at += count * page
            continue
        for i, entry in enumerate(struct.unpack(f"<{count}Q", raw[:count * _ENTRY])):
            data = entry & PM_SWAPPED or (entry & PM_PRESENT and (
                zero_pfn is None or (entry & PM_PFN_MASK) != zero_pfn))
            if not data:
                continue
            addr = at + i * page
            if runs and runs[-1][1] == addr:
                runs[-1] = (runs[-1][0], addr + page)
            else:
                runs.append((addr, addr + page))
        at += count * page
    return runs


def zero_pfn() -> int | None:
    """The page frame of the kernel's shared zero page, which a read of
    untouched anonymous memory maps: the kernel's dump leaves it a hole.
    Learned by reading a fresh anonymous page of our own; None when pagemap
    hides frame numbers (without CAP_SYS_ADMIN they read as 0)."""
    area = mmap.mmap(-1, arch.PAGE_SIZE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    try:
        area[0]  # a read fault maps the zero page
        view = ctypes.c_char.from_buffer(area)
        address = ctypes.addressof(view)
        del view  # the mapping cannot close while a view of it exists
        with open("/proc/self/pagemap", "rb", buffering=0) as f:
            entry, = struct.unpack("<Q", os.pread(f.fileno(), _ENTRY,
                                                  (address // arch.PAGE_SIZE) * _ENTRY))
    finally:
        area.close()
    pfn = entry & PM_PFN_MASK
    return pfn if entry & PM_PRESENT and pfn else None
