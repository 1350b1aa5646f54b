"""The writer's pieces without a process: the kernel's dump rules, the ELF
layout, the notes' sizes, and the kernel core's notes put main thread first."""

from __future__ import annotations

import os
import platform
import struct

import pytest
from elftools.elf.elffile import ELFFile

from helpers import prstatus_pids
from snapcore.core import corenotes, dumprules, notes
from snapcore.core.elfcore import PN_XNUM, Layout, Load
from snapcore.core.sink import FileSink
from snapcore.core.store import OpenCore
from snapcore.linux.maps import FileFacts, Vma

pytestmark = pytest.mark.unit
DEFAULT_FILTER = 0x33
MB = 1 << 20


def vma(perms="rw-p", path="", inode=0, offset=0, anonymous=0, flags=("rd", "wr"), rss=0):
    return Vma(0x10000, 0x10000 + MB, perms, offset, inode, path, rss=rss,
               anonymous=anonymous, flags=set(flags))


@pytest.mark.parametrize("mapping, facts, bits, size", [
    (vma(anonymous=4096, rss=4096), None, DEFAULT_FILTER, MB),  # written anonymous: whole
    (vma(), None, DEFAULT_FILTER, 0),  # never written: nothing
    (vma(anonymous=4096), None, 0x32, 0),  # bit 0 off
    (vma(anonymous=4096, flags=("rd", "wr", "dd")), None, DEFAULT_FILTER, 0),  # MADV_DONTDUMP
    (vma(anonymous=4096, flags=("rd", "wr", "io")), None, DEFAULT_FILTER, 0),  # VM_IO
    (vma("r-xp", "[vdso]", flags=("rd", "ex")), None, 0, MB),  # special: always
    (vma("r--p", "[vvar]", flags=("rd", "dd")), None, 0, MB),  # even with VM_DONTDUMP
    (vma("r--p", "/lib/x.so", 7), FileFacts(0o100644, 1), DEFAULT_FILTER,
     dumprules.MAYBE_ELF_HEADER),  # first page, if ELF
    (vma("r--p", "/bin/x", 7), FileFacts(0o100755, 1), DEFAULT_FILTER, 4096),
    (vma("r--p", "/bin/x", 7, offset=4096), FileFacts(0o100755, 1), DEFAULT_FILTER, 0),
    (vma("r--p", "/bin/x", 7), FileFacts(0o100755, 1), 0x23, 0),  # bit 4 off
    (vma("r-xp", "/bin/x", 7, offset=4096), FileFacts(0o100755, 1), 0x37, MB),  # bit 2
    (vma("rw-p", "/lib/x.so", 7, anonymous=8192), FileFacts(0o100644, 1), DEFAULT_FILTER,
     MB),  # copied on write
    (vma("rw-s", "/dev/zero (deleted)", 3, flags=("rd", "wr", "sh")), FileFacts(0o20666, 0),
     DEFAULT_FILTER, MB),  # anonymous shared (i_nlink 0)
    (vma("rw-s", "/data/f", 3, flags=("rd", "wr", "sh")), FileFacts(0o100644, 1),
     DEFAULT_FILTER, 0),  # file shared: bit 3 off by default
    (vma("r--s", "/etc/f", 3, flags=("rd", "ms")), FileFacts(0o100644, 1), 0x37,
     MB),  # read-only MAP_SHARED is not VM_SHARED: private file rules
    (vma(anonymous=4096, flags=("rd", "wr", "ht")), None, DEFAULT_FILTER, MB),  # hugetlb: bit 5
    (vma(anonymous=4096, flags=("rd", "wr", "ht")), None, 0x13, 0),
])
def test_dump_rules_follow_vma_dump_size(mapping, facts, bits, size):
    assert dumprules.dump_size(mapping, bits, facts).size == size


def test_layout_offsets_and_extended_numbering():
    small = Layout([Load(0x1000, 0x2000, 6, 0x1000), Load(0x5000, 0x1000, 5, 0)], b"x" * 100)
    assert small.notes_offset == 64 + 3 * 56 and small.data_offset == 4096
    assert [load.offset for load in small.loads] == [4096, 8192]
    assert small.size == 8192 and len(small.headers()) == 4096
    many = Layout([Load(i << 12, 4096, 4, 0) for i in range(PN_XNUM)], b"")
    head = many.headers()
    assert struct.unpack_from("<H", head, 56)[0] == PN_XNUM
    assert many.size == many.data_offset + 64
    assert struct.unpack_from("<I", many.section_header(), 44)[0] == PN_XNUM + 1


def state(tid: int) -> corenotes.ThreadState:
    return corenotes.ThreadState(tid, bytes(216), bytes(832), 0)


def process() -> corenotes.ProcessState:
    return corenotes.ProcessState(1, 0, 1, 1, 0, 0, "x", b"x\0-y\0", 0, 0, 100,
                                  auxv=bytes(16), files=[(0x1000, 0x2000, 0, "/bin/x")])


@pytest.mark.skipif(platform.machine() != "x86_64",
                    reason="x86_64's sizes; arm64's: tests/test_arch_aarch64.py")
def test_notes_have_the_kernels_sizes():
    assert len(corenotes.prstatus(process(), state(1))) == 12 + 8 + 336
    assert len(corenotes.prpsinfo(process())) == 12 + 8 + 136
    assert len(corenotes.siginfo(process())) == 12 + 8 + 128
    assert len(corenotes.fpregs(state(1))) == 12 + 8 + 512
    assert len(corenotes.xstate(state(1))) == 12 + 8 + 832  # "LINUX\0" pads to 8 too
    psinfo = corenotes.prpsinfo(process())
    assert psinfo[20 + 56:20 + 62] == b"x -y \0"  # NULs as spaces, the last one too


def write_core(path, threads: list[int]) -> None:
    layout = Layout([Load(0x1000, 4096, 6, 4096, [])],
                    corenotes.all_notes(process(), [state(t) for t in threads]))
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    sink = FileSink(fd)
    sink.write(layout.headers())
    sink.skip(4096)
    sink.finish()
    os.close(fd)


def test_a_core_readers_read_and_the_kernels_notes_put_main_first(tmp_path):
    core = tmp_path / "core"
    write_core(core, [12, 1, 13])
    with open(core, "rb") as f:
        kinds = [n["n_type"] for s in ELFFile(f).iter_segments() if s["p_type"] == "PT_NOTE"
                 for n in s.iter_notes()]
    assert kinds[:5] == ["NT_PRSTATUS", "NT_PRPSINFO", "NT_SIGINFO", "NT_AUXV", "NT_FILE"]
    assert prstatus_pids(core) == [12, 1, 13]
    fd = os.open(core, os.O_RDWR)
    try:
        assert notes.main_thread_first(OpenCore(fd, -1, "core", core), 1)
    finally:
        os.close(fd)
    with open(core, "rb") as f:
        moved = [n["n_type"] for s in ELFFile(f).iter_segments() if s["p_type"] == "PT_NOTE"
                 for n in s.iter_notes()]
    assert prstatus_pids(core) == [1, 12, 13]
    assert moved == kinds  # the same kinds in the same places: only the threads moved
