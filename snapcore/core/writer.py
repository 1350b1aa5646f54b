"""snapcore's own core writer: the ELF core of a stopped process (the frozen
copy-on-write child), read through /proc/PID/mem and written front to back,
like the kernel's elf_core_dump but from outside the process.

`plan` decides what the core holds (core/dumprules.py, one PT_LOAD per
mapping, holes where no page was ever touched); `write` copies it into a sink
(core/sink.py).  Both only read the process: it never runs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from snapcore.core import dumprules
from snapcore.core.elfcore import Layout, Load
from snapcore.linux import arch, maps

CHUNK = 1 << 20  # bytes read from the process at a time (1 MiB: the fastest here)
_U64 = 1 << 64


class WriteCancelled(Exception):
    """The writer was asked to stop (the longest dump allowed, an interrupt)."""


class ProcessGone(Exception):
    """The process's memory went away while it was read (it was killed)."""


@dataclass
class Progress:
    """Shared between the writing thread and whoever watches it."""

    total: int = 0  # bytes of memory the core holds (holes aside): known before writing
    written: int = 0
    cancelled: bool = False


def open_memory(pid: int) -> tuple[int, int]:
    """Descriptors of /proc/PID/mem and /proc/PID/pagemap."""
    mem = os.open(f"/proc/{pid}/mem", os.O_RDONLY | os.O_CLOEXEC)
    try:
        pagemap = os.open(f"/proc/{pid}/pagemap", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        os.close(mem)
        raise
    return mem, pagemap


def read_memory(fd: int, size: int, address: int) -> bytes:
    # Addresses past 2**63 ([vsyscall]) are negative offsets to pread, which
    # /proc/PID/mem accepts (FMODE_UNSIGNED_OFFSET).
    return os.pread(fd, size, address - _U64 if address >= 1 << 63 else address)


def plan_loads(pid: int, vmas: list[maps.Vma], mem: int, pagemap: int) -> list[Load]:
    """One PT_LOAD per mapping, with what the kernel would dump of it
    (dumprules: the rule the preflight's estimate follows too)."""
    bits = maps.coredump_filter(pid)
    zero = maps.zero_pfn()
    loads = []
    for vma in vmas:
        size = dumprules.decide(pid, vma, bits)
        if size == dumprules.MAYBE_ELF_HEADER:
            # The kernel reads the first four bytes as well (dump_vma_snapshot).
            try:
                magic = read_memory(mem, 4, vma.start)
            except OSError:
                magic = b""
            size = arch.PAGE_SIZE if magic == dumprules.ELF_MAGIC else 0
        loads.append(Load(vma.start, vma.size, dumprules.flags_of(vma), size,
                          _runs(pid, vma, size, pagemap, zero) if size else None))
    return loads


def _runs(pid: int, vma: maps.Vma, size: int, pagemap: int,
          zero: int | None) -> list[tuple[int, int]] | None:
    """The address ranges that hold data; None: all of them."""
    kind = dumprules.source(vma)
    if kind == dumprules.PAGES:
        # Only pages ever touched hold data; the rest are holes (the kernel's
        # get_dump_page returns no page for them).
        if vma.rss + vma.swap + vma.hugetlb == 0:
            return []
        return maps.present_runs(pagemap, vma.start, vma.start + size, zero)
    if kind == dumprules.FILE_DATA:
        # Never-written shared memory is a hole: reading it would allocate it
        # in the target's shmem for good (maps.data_runs).
        return maps.data_runs(pid, vma)
    return None


def file_entries(vmas: list[maps.Vma], root: str = "") -> list[tuple[int, int, int, str]]:
    """NT_FILE's entries: each file mapping's start, end, page offset and path,
    in the process's own view of the files (`root`: its root as seen here)."""
    entries = []
    for vma in vmas:
        if not vma.file_backed or not vma.path.startswith("/"):
            continue
        path = vma.path
        if root and root != "/" and path.startswith(root + "/"):
            path = path[len(root):]
        entries.append((vma.start, vma.end, vma.offset // arch.PAGE_SIZE, path))
    return entries


def write(layout: Layout, mem: int, sink, progress: Progress) -> None:
    """The whole core into `sink`, front to back."""
    sink.write(layout.headers())
    for load in layout.loads:
        runs = load.runs if load.runs is not None else [(load.vaddr, load.vaddr + load.filesz)]
        at = load.vaddr
        for start, end in runs:
            if start > at:
                sink.skip(start - at)
            _copy(mem, start, end, sink, progress)
            at = end
        if at < load.vaddr + load.filesz:
            sink.skip(load.vaddr + load.filesz - at)
    if layout.extended:
        sink.write(layout.section_header())
    sink.finish()


def _copy(mem: int, start: int, end: int, sink, progress: Progress) -> None:
    """Memory [start, end) into the sink.  A page that cannot be read (vvar,
    vsyscall, an I/O page) is a hole, as get_dump_page leaves it."""
    at = start
    while at < end:
        if progress.cancelled:
            raise WriteCancelled()
        want = min(CHUNK, end - at)
        try:
            data = read_memory(mem, want, at)
        except OSError:
            data = None
        if data is None:
            step = min(arch.PAGE_SIZE - at % arch.PAGE_SIZE, end - at)
            sink.skip(step)
        elif not data:
            raise ProcessGone()
        else:
            sink.write(data)
            step = len(data)
        at += step
        progress.written += step
