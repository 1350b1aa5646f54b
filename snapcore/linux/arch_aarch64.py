"""Every architecture-specific number snapcore uses, for arm64 (aarch64).

The same names as arch_x86_64.py, with the same meaning; where arm64 differs
the comment says how and why (docs/kernel-notes.md, "arm64").  Sources: the
kernel's include/uapi/asm-generic/unistd.h, arch/arm64/include/uapi/asm/
{ptrace,sigcontext}.h, arch/arm64/kernel/{ptrace,signal}.c.
"""

import ctypes as _ctypes
import os as _os
import struct as _struct

from snapcore.linux.abi import (NT_PRFPREG, NT_PRPSINFO, NT_PRSTATUS,  # noqa: F401 (layouts)
                                PRPSINFO_FIELDS, PRPSINFO_PID_OFFSET, PRSTATUS_PID_OFFSET,
                                SIGINFO_FIELDS, SIGINFO_SIZE, prstatus_fields)

NAME = "aarch64"
ELF_MACHINE = 183  # EM_AARCH64
AUDIT_ARCH = 0xC00000B7  # AUDIT_ARCH_AARCH64 (64-bit, little-endian)

# `svc #0` is d4000001; after it, pc points just past it (the exception
# return address is the next instruction).  Every instruction is 4 bytes,
# 4-byte aligned: a match elsewhere is data.
SYSCALL_INSN = bytes.fromhex("010000d4")
INSN_ALIGN = 4
PAGE_SIZE = _os.sysconf("SC_PAGE_SIZE")  # 4 KiB on Debian's kernel; 16 or 64 KiB kernels exist


class Regs(_ctypes.Structure):
    """struct user_pt_regs (NT_PRSTATUS: x0..x30, sp, pc, pstate; 272 bytes),
    then the kernel's syscall number, which arm64 keeps out of it
    (pt_regs.syscallno, NT_ARM_SYSTEM_CALL: linux/ptrace.py reads and
    writes it with the registers)."""

    _fields_ = [(f"x{i}", _ctypes.c_uint64) for i in range(31)] + \
        [("sp", _ctypes.c_uint64), ("pc", _ctypes.c_uint64), ("pstate", _ctypes.c_uint64),
         ("syscallno", _ctypes.c_uint64)]


REGS_SIZE = 272  # a compat (AArch32) task's NT_PRSTATUS is 72 bytes
REG_IP = "pc"
REG_SP = "sp"
REG_NR = "x8"  # syscall number on entry
REG_RET = "x0"  # return value on exit (and the first argument on entry)
REG_ORIG_NR = "syscallno"  # -1 (NO_SYSCALL): "not in a syscall"
SYSCALL_ARGS = ("x0", "x1", "x2", "x3", "x4", "x5")
NT_ARM_SYSTEM_CALL = 0x404  # an int; set to -1 at a syscall-entry stop it skips the call
NR_REGSET: int | None = NT_ARM_SYSTEM_CALL
# do_signal rewinds before the stop, decides on restart_syscall after it:
# linux/restart.py lets the runner take that decision before its calls.
RESTART_DECIDED_AFTER_STOP = True
# `ret` jumps to x30: a landing's call sets it to the restorer (linux/landing.py).
REG_LINK: str | None = "x30"
# At a syscall stop the kernel puts x7 (which it sets to 0 at entry, 1 at
# exit, for the tracer) back to its value at entry once the stop is left
# (arch/arm64/kernel/ptrace.c: report_syscall): registers set at an exit stop
# keep that x7, so a state meant to stay is set again at the next stop.
SYSCALL_STOP_SCRATCH: str | None = "x7"
RED_ZONE = 0  # AAPCS64 has none: the kernel puts its signal frame right below sp
# The thread-exit site: the munmap's arguments (x0, x1), its number, which
# stays in x8 after the call, and its result (x0) cannot carry the exit's.
EXIT_NOT_SETTABLE: tuple[str, ...] = ("x0", "x1", "x8", "sp")

NR = {  # include/uapi/asm-generic/unistd.h: no fork, no open, only clone and openat
    "close": 57,
    "mmap": 222,
    "munmap": 215,
    "rt_sigaction": 134,
    "rt_sigreturn": 139,
    "madvise": 233,
    "clone": 220,  # CLONE_BACKWARDS: (flags, newsp, parent_tid, tls, child_tid)
    "exit": 93,
    "wait4": 260,
    "chdir": 49,
    "restart_syscall": 128,
    "setpriority": 140,
    "prctl": 167,
    "sched_setscheduler": 119,
    "ioprio_set": 30,
    "prlimit64": 261,
    "close_range": 436,
    "process_mrelease": 448,
    "getpid": 172,  # linux/restart.py: what the runner's settling entry becomes
}
NR_OPENAT2 = 437

# The fork thread's code page, with x86_64's contract (arch_x86_64.py): the
# injected calls' `svc` at 0; let go after it, the loop at 4: wait4(-1,
# NULL, __WALL|__WNOTHREAD, NULL) until no child is left, then exit(0).
# The runner's landing differs: arm64's `ret` jumps to x30, a register the
# clone's new thread copies from its maker.  The runner's x30 must lead to
# the restorer, the new fork thread's to the loop, and a register cannot say
# both; the stack can, as on x86: after the runner's `svc` at 52, `ldr x30,
# [sp]` loads from each task's own stack pointer (the runner's at its
# frame, whose first bytes, in the siginfo rt_sigreturn does not read, hold
# the restorer; the fork thread's at FORK_THREAD_CELL, holding the loop's
# address), then `ret`.  The restorer at 64 is rt_sigreturn with sp at the
# frame.  Assembled with binutils (aarch64-linux-gnu-as), little-endian.
FORK_THREAD_CODE = bytes.fromhex(
    "010000d4"  # 0   svc #0                the injected calls
    "00008092"  # 4   mov x0, #-1           wait4(-1, NULL,
    "010080d2"  # 8   mov x1, #0
    "0200acd2"  # 12  mov x2, #0x60000000         __WALL|__WNOTHREAD,
    "030080d2"  # 16  mov x3, #0                  NULL)
    "882080d2"  # 20  mov x8, #260
    "010000d4"  # 24  svc #0
    "1f0000f1"  # 28  cmp x0, #0            a child reaped: wait again
    "2cffff54"  # 32  b.gt 4
    "a80b80d2"  # 36  mov x8, #93           exit(0)
    "000080d2"  # 40  mov x0, #0
    "010000d4"  # 44  svc #0
    "000020d4"  # 48  brk #0                never reached
    "010000d4"  # 52  svc #0                the runner's calls
    "fe0340f9"  # 56  ldr x30, [sp]         the restorer (runner) or the loop
    "c0035fd6"  # 60  ret
    "681180d2"  # 64  mov x8, #139          rt_sigreturn()
    "010000d4"  # 68  svc #0
    "000020d4")  # 72  brk #0               never reached
FORK_THREAD_SYSCALL = 0
FORK_THREAD_LOOP = 4
FORK_THREAD_WAIT = 24
FORK_THREAD_EXIT = 44
FORK_THREAD_RUNNER = 52
FORK_THREAD_RESTORER = 64
FORK_THREAD_NAME = 80  # after the code (x86_64's 64 is inside it here)
FORK_THREAD_CELL = 96  # 8 bytes, 16-byte aligned (sp must be, SCTLR_EL1.SA0)
FORK_THREAD_FRAME = 128

# Landings (linux/landing.py), in the target's code: the vDSO's syscall
# fallbacks end `svc #0; ret`; the vDSO's __kernel_rt_sigreturn, which the
# kernel makes every handler return to (glibc sets no sa_restorer on arm64),
# is `mov x8, #139; svc #0`.
SYSCALL_RET = bytes.fromhex("010000d4c0035fd6")
RESTORER = bytes.fromhex("681180d2010000d4")
RESTORER_SYSCALL = 4


# The kernel's struct rt_sigframe (arch/arm64/kernel/signal.c) as
# rt_sigreturn reads it at the stack pointer (16-byte aligned, else
# SIGSEGV): siginfo (128 bytes, never read back), then struct ucontext:
# uc_flags, uc_link, uc_stack, uc_sigmask (a 1024-bit field of which the
# kernel's 64-bit sigset_t is the start), struct sigcontext at 16-byte
# alignment (fault_address, regs[31], sp, pc, pstate, then __reserved:
# records, each a {magic, size} head; fpsimd_context is required, a
# {0, 0} head ends them: parse_user_sigframe).  Only the bytes up to that
# end are written: nothing past them is read.
_UC_AT = 128
_SIGCONTEXT_AT = _UC_AT + 176
_RESERVED_AT = _SIGCONTEXT_AT + 288
_FPSIMD_MAGIC = 0x46508001
_FPSIMD_SIZE = 528  # head, fpsr, fpcr, vregs[32]
_SS_NO_CHANGE = 4  # a mode sigaltstack refuses, which rt_sigreturn ignores (as on x86_64)
_FRAME_SIZE = _RESERVED_AT + _FPSIMD_SIZE + 16
_PSR_MODE32 = 0x10  # pstate's nRW bit: an AArch32 (compat) task


def native(regs) -> bool:
    return not regs.pstate & _PSR_MODE32


def signal_frame_size(xstate: bytes) -> int:
    return _FRAME_SIZE


def signal_frame(regs, mask: int, xstate: bytes, at: int, restorer: int) -> bytes:
    """The bytes to put at `at` (16-byte aligned) so that rt_sigreturn with
    the stack pointer at `at` gives a thread `regs`, `mask` and its FP/SIMD
    registers `xstate` (NT_PRFPREG: vregs[32], fpsr, fpcr) back.  Its first 8
    bytes hold `restorer`, for the fork thread page's `ldr x30, [sp]`.

    A thread stopped inside an interrupted syscall needs no rewinding here:
    arm64's do_signal rewinds it (pc back to the `svc`, x0 from orig_x0)
    before the stop the tracer sees, so its registers already run the call
    again.  SVE state beyond the FP/SIMD registers is not in the frame: a
    thread given back by it (snapcore died) has only its FP/SIMD registers,
    as after any syscall (sve_user_discard)."""
    values = [getattr(regs, f"x{i}") for i in range(31)] + [regs.sp, regs.pc, regs.pstate]
    uc = _struct.pack("<QQQi4xQ", 0, 0, 0, _SS_NO_CHANGE, 0) + _struct.pack("<Q", mask)
    sigcontext = _struct.pack("<Q34Q", 0, *values)
    fpsr, fpcr = _struct.unpack_from("<II", xstate, 512)
    fpsimd = _struct.pack("<IIII", _FPSIMD_MAGIC, _FPSIMD_SIZE, fpsr, fpcr) + xstate[:512]
    frame = _struct.pack("<Q", restorer).ljust(_UC_AT, b"\0") + uc.ljust(176, b"\0") + \
        sigcontext.ljust(288, b"\0") + fpsimd + bytes(16)
    assert len(frame) == _FRAME_SIZE
    return frame


# Decoding just enough arm64 to follow the instructions after an `svc`
# (linux/landing.py: exit_site): mov of an immediate (movz, movn) and of a
# register (orr with xzr), nop, b, and the next `svc`.


def run_to_syscall(code: bytes, start: int, limit: int = 16):
    """As arch_x86_64.run_to_syscall: (offset of the next `svc`, registers
    then) when the instructions above alone reach it, else None.  glibc's
    thread exit loop (`mov x0, #0; svc #0; b`) keeps the number in x8, which
    the munmap before it needs: no exit site there (docs/kernel-notes.md)."""
    state: dict[str, tuple[str, str | int]] = {f"x{i}": ("reg", f"x{i}") for i in range(31)}
    at = start
    for _ in range(limit):
        if at < 0 or at % 4 or at + 4 > len(code):
            return None
        insn = int.from_bytes(code[at:at + 4], "little")
        rd, wide = insn & 31, insn >> 31
        if insn == 0xD4000001:
            return at, state
        if insn & 0x7F800000 in (0x52800000, 0x12800000) and rd != 31:  # movz, movn
            value = ((insn >> 5) & 0xFFFF) << (16 * ((insn >> 21) & 3))
            if insn & 0x7F800000 == 0x12800000:
                value = ~value & ((1 << (64 if wide else 32)) - 1)
            state[f"x{rd}"] = ("imm", value)
        elif insn & 0x7FE0FFE0 == 0x2A0003E0 and rd != 31:  # mov xd, xm
            rm = (insn >> 16) & 31
            state[f"x{rd}"] = ("imm", 0) if rm == 31 else state[f"x{rm}"]
        elif insn & 0xFC000000 == 0x14000000:  # b
            offset = insn & 0x3FFFFFF
            at += 4 * (offset - (1 << 26) if offset >> 25 else offset)
            continue
        elif insn != 0xD503201F:  # nop
            return None
        at += 4
    return None


KERNEL_SIGSET_SIZE = 8

# ELF core notes (include/uapi/linux/elf.h).  The kernel's core writer
# writes, per thread, every register set of arch/arm64/kernel/ptrace.c's
# aarch64_regsets that has a core_note_type and whose get succeeds
# (fs/binfmt_elf.c: fill_thread_core_info), in that array's order:
# NT_PRSTATUS, NT_PRFPREG, then the sets below as this kernel and CPU have
# them.  A held thread reads the same (linux/regsets.py), so snapcore's
# writer writes what the kernel's would.
NT_ARM_TLS = 0x401  # tpidr_el0 (and tpidr2_el0 with SME): not in user_pt_regs
NT_ARM_HW_BREAK = 0x402
NT_ARM_HW_WATCH = 0x403
NT_ARM_SVE = 0x405
NT_ARM_PAC_MASK = 0x406
NT_ARM_PACA_KEYS = 0x407
NT_ARM_PACG_KEYS = 0x408
NT_ARM_TAGGED_ADDR_CTRL = 0x409
NT_ARM_PAC_ENABLED_KEYS = 0x40A
NT_ARM_SSVE = 0x40B
NT_ARM_ZA = 0x40C
NT_ARM_ZT = 0x40D
FP_REGSET = NT_PRFPREG  # struct user_fpsimd_state: vregs[32], fpsr, fpcr, 2 reserved
FP_REGSET_SIZE = 528
_SVE_MAX = 16384  # SVE_PT_SIZE at the architecture's largest vector length (2048 bits): 8.8 KiB
_ZA_MAX = 65536 + 16  # SME's ZA at the largest streaming vector length: (256 bytes)^2
OTHER_REGSETS: tuple[tuple[int, int], ...] = (
    (NT_ARM_TLS, 16), (NT_ARM_HW_BREAK, 264), (NT_ARM_HW_WATCH, 264), (NT_ARM_SYSTEM_CALL, 4),
    (NT_ARM_SVE, _SVE_MAX), (NT_ARM_SSVE, _SVE_MAX), (NT_ARM_ZA, _ZA_MAX), (NT_ARM_ZT, 64),
    (NT_ARM_PAC_MASK, 16), (NT_ARM_PAC_ENABLED_KEYS, 8), (NT_ARM_PACA_KEYS, 64),
    (NT_ARM_PACG_KEYS, 16), (NT_ARM_TAGGED_ADDR_CTRL, 8))
# A copy of a thread (the snapshot child's) must carry its TLS register and
# its SVE registers; the PAC keys and the tagged-address mode it inherits.
PUT_BACK_REGSETS = frozenset({NT_ARM_TLS, NT_ARM_SVE})
# A syscall discards the SVE state beyond the FP/SIMD registers
# (arch/arm64/kernel/fpsimd.c: sve_user_discard): put back after each call.
CALL_CLOBBERS = frozenset({NT_ARM_SVE})
# The SVE-shaped sets start with struct user_sve_header, whose first field
# is the set's size: GETREGSET reports the buffer's length (kernel/ptrace.c:
# ptrace_regset), not the set's.
SIZED_REGSETS = frozenset({NT_ARM_SVE, NT_ARM_SSVE, NT_ARM_ZA})


THREAD_NOTES = frozenset({NT_PRSTATUS, NT_PRFPREG, NT_ARM_SYSTEM_CALL, *(k for k, _ in
                                                                        OTHER_REGSETS)})
# A thread's notes: 2.4 KiB here, 3.6 KiB with SVE live at 256 bits; an
# estimate (core/dumprules.py), wider live SVE takes more.
THREAD_NOTES_SIZE = 4096


def fpregs(xstate: bytes) -> bytes:
    return xstate  # NT_PRFPREG is the FP/SIMD set itself


# The notes' layouts: every 64-bit architecture's (linux/abi.py), with this
# one's registers inside elf_prstatus.
PRSTATUS_FIELDS = prstatus_fields(REGS_SIZE)
