"""arm64's table without an arm64 machine: its code, frame and layouts, checked
against what the kernel and binutils say they are (linux/arch_aarch64.py;
docs/kernel-notes.md, "arm64").  Runs on any machine: the module is data."""

from __future__ import annotations

import struct

import pytest

from snapcore.core.elf import Fields
from snapcore.engine import calls
from snapcore.linux import arch_aarch64 as a64
from snapcore.linux import arch_x86_64 as x86

pytestmark = pytest.mark.unit
U64 = (1 << 64) - 1


def test_every_call_snapcore_makes_has_its_generic_number():
    assert set(x86.NR) <= set(a64.NR)
    assert len(set(a64.NR.values())) == len(a64.NR)  # no two names for one number
    # include/uapi/asm-generic/unistd.h: no fork, no open on arm64
    assert (a64.NR["clone"], a64.NR["exit"], a64.NR["wait4"], a64.NR["rt_sigreturn"]) == \
        (220, 93, 260, 139)


def test_the_page_s_own_loop_makes_the_calls_the_table_names():
    """Followed from the loop's start, the page's code reaches its wait4 with
    the table's arguments, and after it (no child left) its exit(0)."""
    code = a64.FORK_THREAD_CODE
    at, regs = a64.run_to_syscall(code, a64.FORK_THREAD_LOOP)
    assert at == a64.FORK_THREAD_WAIT
    want = dict(zip(("x0", "x1", "x2", "x3"), calls.LOOP_REAP.args))
    assert {r: regs[r] for r in want} == {r: ("imm", v & U64) for r, v in want.items()}
    assert regs["x8"] == ("imm", a64.NR[calls.LOOP_REAP.name])
    at, regs = a64.run_to_syscall(code, a64.FORK_THREAD_EXIT - 8)
    assert at == a64.FORK_THREAD_EXIT and regs["x0"] == ("imm", 0)
    assert regs["x8"] == ("imm", a64.NR[calls.END_EXIT.name])
    assert code[a64.FORK_THREAD_RUNNER:a64.FORK_THREAD_RUNNER + 4] == a64.SYSCALL_INSN
    assert code[a64.FORK_THREAD_RESTORER:].startswith(a64.RESTORER)
    assert code[a64.FORK_THREAD_SYSCALL:4] == a64.SYSCALL_INSN
    assert len(code) <= a64.FORK_THREAD_NAME < a64.FORK_THREAD_CELL < a64.FORK_THREAD_FRAME
    assert a64.FORK_THREAD_CELL % 16 == 0 and a64.FORK_THREAD_FRAME % 16 == 0


def test_glibc_s_thread_exit_loop_is_no_exit_site():
    """`mov x0, #0; svc #0; b .-8` with x8 set before the loop: the munmap run
    from that svc would keep its own number in x8 (docs/kernel-notes.md)."""
    loop = bytes.fromhex("000080d2" "010000d4" "feffff17")
    at, regs = a64.run_to_syscall(loop, 8)
    assert at == 4 and regs["x0"] == ("imm", 0) and regs["x8"] == ("reg", "x8")
    assert "x8" in a64.EXIT_NOT_SETTABLE
    assert a64.run_to_syscall(bytes.fromhex("c0035fd6"), 0) is None  # ret: not followed


def test_a_signal_frame_is_what_rt_sigreturn_reads():
    """struct rt_sigframe (arch/arm64/kernel/signal.c): siginfo, ucontext with
    the mask at 40 and sigcontext at 176; the registers, then __reserved
    with fpsimd_context and the end record."""
    regs = a64.Regs()
    for i in range(31):
        setattr(regs, f"x{i}", 0x1000 + i)
    regs.sp, regs.pc, regs.pstate = 0x7FF0, 0x4000, 0x80000000
    fp = bytes(range(256)) * 2 + struct.pack("<II", 0x11, 0x22) + bytes(8)
    frame = a64.signal_frame(regs, 0x4000, fp, 0x10000, 0x2000)
    assert len(frame) == a64.signal_frame_size(fp) and len(frame) % 16 == 0
    assert struct.unpack_from("<Q", frame, 0)[0] == 0x2000  # the page's `ldr x30, [sp]`
    uc = 128
    assert struct.unpack_from("<Q", frame, uc + 40)[0] == 0x4000  # uc_sigmask
    assert struct.unpack_from("<i", frame, uc + 24)[0] == 4  # ss_flags: no change
    sc = uc + 176
    assert struct.unpack_from("<31Q", frame, sc + 8) == tuple(0x1000 + i for i in range(31))
    assert struct.unpack_from("<3Q", frame, sc + 8 + 248) == (0x7FF0, 0x4000, 0x80000000)
    reserved = sc + 288
    assert struct.unpack_from("<IIII", frame, reserved) == (0x46508001, 528, 0x11, 0x22)
    assert frame[reserved + 16:reserved + 528] == fp[:512]
    assert frame[reserved + 528:] == bytes(16)  # the end record


def test_the_notes_have_arm64_s_sizes():
    assert Fields(*a64.PRSTATUS_FIELDS).size == 392  # elf_prstatus with user_pt_regs
    assert Fields(*a64.PRPSINFO_FIELDS).size == 136
    assert (a64.PRSTATUS_PID_OFFSET, a64.PRPSINFO_PID_OFFSET) == (32, 24)
    assert struct.calcsize("<34Q") == a64.REGS_SIZE
    kinds = [k for k, _ in a64.OTHER_REGSETS]
    assert kinds.index(a64.NT_ARM_TLS) < kinds.index(a64.NT_ARM_SVE) < \
        kinds.index(a64.NT_ARM_PAC_MASK) < kinds.index(a64.NT_ARM_TAGGED_ADDR_CTRL)
    assert a64.CALL_CLOBBERS <= a64.PUT_BACK_REGSETS <= set(kinds)
