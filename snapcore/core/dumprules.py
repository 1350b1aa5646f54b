"""Which mappings a core holds, and how much of each: the kernel's own rules
(fs/coredump.c: vma_dump_size, always_dump_vma), from what /proc shows.

coredump_filter bits (Documentation/filesystems/proc.rst, "coredump_filter"):
0 anonymous private, 1 anonymous shared, 2 file-backed private, 3 file-backed
shared, 4 ELF headers, 5 hugetlb private, 6 hugetlb shared (7, 8: DAX, which
/proc does not show; such mappings are judged as ordinary files).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from snapcore.linux import arch, maps
from snapcore.linux.maps import FileFacts, Vma

ANON_PRIVATE, ANON_SHARED, MAPPED_PRIVATE, MAPPED_SHARED, ELF_HEADERS = 0, 1, 2, 3, 4
HUGETLB_PRIVATE, HUGETLB_SHARED = 5, 6
EXECUTABLE_BITS = 0o111
ELF_MAGIC = b"\x7fELF"

# What vma_dump_size answers for a private file mapping starting a file that
# is not executable: the first page if it starts with the ELF magic, which
# only a read of the memory can tell (the kernel reads it too, later).
MAYBE_ELF_HEADER = -1


@dataclass
class Decision:
    size: int  # bytes dumped from the mapping's start (p_filesz), or MAYBE_ELF_HEADER
    why: str


def dump_size(vma: Vma, filter_bits: int, facts: FileFacts | None) -> Decision:
    """vma_dump_size(), in its order.  Notes on what /proc cannot show:

    - `anon_vma` (the kernel dumps a private mapping whole once any page of it
      was written) is judged from the pages: a mapping holding anonymous pages
      (resident or swapped) has one.  A mapping whose written pages were all
      dropped again (MADV_DONTNEED) has one too but no pages: the kernel
      writes it as holes, snapcore with no data (p_filesz 0); either way it
      reads as zeros.
    - VM_SHARED is `sh` in VmFlags, not the `s` of the permissions (that is
      VM_MAYSHARE: a read-only MAP_SHARED file mapping is not VM_SHARED).
    """
    def bit(n: int) -> bool:
        return bool(filter_bits & (1 << n))

    whole = vma.size
    if vma.special:
        return Decision(whole, "special mapping (vdso, vvar, vsyscall): always dumped")
    if "dd" in vma.flags:
        return Decision(0, "VM_DONTDUMP (MADV_DONTDUMP)")
    shared = "sh" in vma.flags
    if "ht" in vma.flags:
        wanted = bit(HUGETLB_SHARED) if shared else bit(HUGETLB_PRIVATE)
        return Decision(whole if wanted else 0, "hugetlb")
    if "io" in vma.flags:
        return Decision(0, "VM_IO")
    if shared:
        # i_nlink 0: shmem without a name, a memfd, or a deleted file.
        unnamed = (facts.nlink == 0 if facts is not None
                   else vma.path.endswith(" (deleted)"))
        wanted = bit(ANON_SHARED) if unnamed or not vma.file_backed else bit(MAPPED_SHARED)
        return Decision(whole if wanted else 0, "shared")
    written = vma.anonymous + vma.swap > 0
    if written and bit(ANON_PRIVATE):
        return Decision(whole, "private, written (anon_vma)")
    if not vma.file_backed:
        return Decision(0, "anonymous, never written")
    if bit(MAPPED_PRIVATE):
        return Decision(whole, "file-backed private")
    if bit(ELF_HEADERS) and vma.offset == 0 and "rd" in vma.flags:
        if facts is not None and facts.mode & EXECUTABLE_BITS:
            return Decision(arch.PAGE_SIZE, "first page of an executable file")
        return Decision(MAYBE_ELF_HEADER, "first page, if it is an ELF header")
    return Decision(0, "file-backed private, never written")


def flags_of(vma: Vma) -> int:
    """p_flags: PF_X 1, PF_W 2, PF_R 4, from the mapping's protection."""
    return ((4 if vma.perms[0] == "r" else 0) | (2 if vma.perms[1] == "w" else 0)
            | (1 if vma.perms[2] == "x" else 0))


# Which pages of a dumped mapping hold data (get_dump_page); the others are holes.
PAGES = "pages"  # anonymous or hugetlb: the pages present or swapped (no_page_table
#                  answers -EFAULT for the rest under FOLL_DUMP)
FILE_DATA = "file data"  # shared: every page, through the page cache (maps.data_runs)
WHOLE = "whole"  # a private file mapping reads its file; special mappings


def source(vma: Vma) -> str:
    if vma.special:
        return WHOLE
    if "ht" in vma.flags or not vma.file_backed:
        return PAGES
    if "sh" in vma.flags:
        return FILE_DATA
    return WHOLE


def decide(pid: int, vma: Vma, filter_bits: int) -> int:
    """Bytes of `vma` the core holds (p_filesz), or MAYBE_ELF_HEADER."""
    facts = maps.file_facts(pid, vma) if vma.file_backed else None
    return dump_size(vma, filter_bits, facts).size


class CoreSize(NamedTuple):
    apparent: int  # the file's size, holes included (ls -l); what RLIMIT_CORE counts
    allocated: int  # what the kernel's core takes on disk (du)
    shared_unwritten: int  # shared memory never written that the kernel's dump
    #                        allocates (and snapcore's writer leaves a hole)

    def on_disk(self, writer: str) -> int:
        """What the core of `writer` takes on disk."""
        return self.allocated - (self.shared_unwritten if writer == "snapcore" else 0)


def core_size(pid: int, vmas: list[Vma], threads: int,
              filter_bits: int | None = None) -> CoreSize:
    """How big the core of the process will be, by the same rule each writer
    follows (dump_size, source): the estimate and the core cannot disagree on
    what is dumped.  Anonymous pages are counted from smaps (Rss, Swap,
    *_Hugetlb), not pagemap: close enough for a disk check, and cheap."""
    bits = maps.coredump_filter(pid) if filter_bits is None else filter_bits
    apparent = allocated = unwritten = 0
    for vma in vmas:
        size = decide(pid, vma, bits)
        if size == MAYBE_ELF_HEADER:
            size = arch.PAGE_SIZE if _starts_elf(pid, vma) else 0
        if not size:
            continue
        apparent += size
        kind = source(vma)
        if kind == PAGES:
            allocated += min(size, vma.hugetlb if "ht" in vma.flags else vma.rss + vma.swap)
        elif kind == FILE_DATA:
            allocated += size
            runs = maps.data_runs(pid, vma)
            unwritten += 0 if runs is None else size - sum(e - s for s, e in runs)
        elif not vma.special or not ({"io", "pf"} & vma.flags or vma.start >= 1 << 63):
            allocated += size  # [vvar] and [vsyscall] cannot be read: holes
    headers = _headers(vmas, threads)
    return CoreSize(apparent + headers, allocated + headers, unwritten)


def _starts_elf(pid: int, vma: Vma) -> bool:
    try:
        with open(f"/proc/{pid}/mem", "rb", buffering=0) as mem:
            mem.seek(vma.start)
            return mem.read(4) == ELF_MAGIC
    except OSError:
        return True  # at most a page: counted


def _headers(vmas: list[Vma], threads: int) -> int:
    """What precedes the memory: the ELF header, a program header a mapping
    (and the notes'), and the notes: per thread NT_PRSTATUS and its register
    sets (x86_64: NT_PRFPREG, NT_X86_XSTATE, 2.7 KiB with AVX-512; arm64's
    SVE set is larger, arch.FP_REGSET_SIZE at most) and NT_SIGINFO; the
    process's PRPSINFO and AUXV, about 1 KiB; NT_FILE, 24 bytes and the path
    a file mapping.  The first PT_LOAD starts on a page (elf_core_dump)."""
    files = sum(25 + len(v.path.encode()) for v in vmas
                if v.file_backed and v.path.startswith("/"))
    size = 64 + 56 * (len(vmas) + 2) + threads * arch.THREAD_NOTES_SIZE + 1024 + files
    return -(-size // arch.PAGE_SIZE) * arch.PAGE_SIZE
