"""Every architecture-specific number snapcore uses, for x86_64.

Nothing else in the package spells a syscall number, a register name, a
kernel structure's layout or an errno the kernel uses only internally.
"""

import struct as _struct

# The registers' struct, python-ptrace's struct user_regs_struct (x86_64).
from ptrace.binding.linux_struct import user_regs_struct as Regs  # noqa: F401

from snapcore.linux.abi import (NT_PRFPREG, NT_PRPSINFO, NT_PRSTATUS,  # noqa: F401 (layouts)
                                PRPSINFO_FIELDS, PRPSINFO_PID_OFFSET, PRSTATUS_PID_OFFSET,
                                SIGINFO_FIELDS, SIGINFO_SIZE, prstatus_fields)

NAME = "x86_64"  # as platform.machine() and the refusals say it
ELF_MACHINE = 62  # EM_X86_64
AUDIT_ARCH = 0xC000003E  # AUDIT_ARCH_X86_64, what seccomp filters compare against

# `syscall` is 0f 05; after it executes, rip points just past it.
SYSCALL_INSN = b"\x0f\x05"
INSN_ALIGN = 1  # instructions may start at any byte
PAGE_SIZE = 4096  # the base page: what mmap and the core's holes count in

# Register names in struct user_regs_struct (216 bytes; a 32-bit task's
# NT_PRSTATUS register set is 68 bytes, which is how a compat task shows).
REGS_SIZE = 216
REG_IP = "rip"
REG_SP = "rsp"
REG_NR = "rax"  # syscall number on entry
REG_RET = "rax"  # return value on exit
REG_ORIG_NR = "orig_rax"  # the kernel's copy of the number: -1 means "not in a syscall"
SYSCALL_ARGS = ("rdi", "rsi", "rdx", "r10", "r8", "r9")
NR_REGSET: int | None = None  # the syscall number is orig_rax, a field of the registers
RESTART_DECIDED_AFTER_STOP = False  # the kernel rewinds after the stop (linux/restart.py)
REG_LINK: str | None = None  # `ret` pops its address from the stack: no link register
# After a syscall stop the kernel puts back no register of its own choosing
# (arm64 does: arch_aarch64.SYSCALL_STOP_SCRATCH).
SYSCALL_STOP_SCRATCH: str | None = None
RED_ZONE = 128  # bytes below the stack pointer a leaf function may use (x86_64 psABI)
# The thread-exit site's `syscall` (linux/landing.py): the munmap's arguments
# (rdi, rsi) and what the munmap itself sets (rax, rcx, r11) cannot carry
# the exit's number or status.
EXIT_NOT_SETTABLE: tuple[str, ...] = ("rax", "rcx", "rdi", "rsi", "rsp")

# The extended register sets a held thread's state includes beside its
# general registers (linux/inject.py: HeldThread.save), as PTRACE_GETREGSET
# names them: FP_REGSET, the FPU state the signal frame carries and the
# FPU notes come from (the XSAVE area, at most FP_REGSET_SIZE bytes); the
# others in the kernel's core order, none on x86_64 (NT_386_TLS and
# NT_386_IOPERM are a 32-bit task's; fs_base is in the general registers).
FP_REGSET_SIZE = 16384
OTHER_REGSETS: tuple[tuple[int, int], ...] = ()
PUT_BACK_REGSETS: frozenset[int] = frozenset()  # of those, what a copy of the thread is given
CALL_CLOBBERS: frozenset[int] = frozenset()  # of those, what a syscall changes (none)
SIZED_REGSETS: frozenset[int] = frozenset()  # of those, the ones whose first u32 is their size

NR = {
    "close": 3,
    "mmap": 9,
    "munmap": 11,
    "rt_sigaction": 13,
    "rt_sigreturn": 15,
    "madvise": 28,
    "clone": 56,
    "exit": 60,
    "wait4": 61,
    "chdir": 80,
    "restart_syscall": 219,
    "setpriority": 141,
    "prctl": 157,
    "sched_setscheduler": 144,
    "ioprio_set": 251,
    "prlimit64": 302,
    "close_range": 436,
    "process_mrelease": 448,
}
NR_OPENAT2 = 437  # snapcore's own call (linux/resolve.py), never injected

# The fork thread's code page (engine/forkthread.py), position-independent.
# Every call snapcore injects into a task it made in the target runs through
# the `syscall` at FORK_THREAD_SYSCALL, so that the task's next instruction,
# were it let go at any stop (snapcore killed), is the loop at 2: wait4(-1,
# NULL, __WALL|__WNOTHREAD, NULL) until it has no child left, then exit(0),
# which ends that one task (a thread: its thread group lives on).  The code
# touches no memory, no stack and no register the kernel does not set.
# At 42, the runner's landing (linux/landing.py): its calls run from the
# `syscall; ret` there with the stack pointer at FORK_THREAD_FRAME, so that
# a runner let go after its call returns into the restorer at 45, which
# rt_sigreturn's it to its own registers and mask from the frame.  The fork
# thread is born at the `ret` with its stack pointer at FORK_THREAD_CELL,
# which holds the loop's address: let go, it goes to the loop.
FORK_THREAD_CODE = bytes.fromhex(
    "0f05"              # 0   syscall                 the injected calls
    "48c7c7ffffffff"    # 2   mov $-1, %rdi           wait4(-1, NULL,
    "31f6"              # 9   xor %esi, %esi
    "ba00000060"        # 11  mov $0x60000000, %edx         __WALL|__WNOTHREAD,
    "4d31d2"            # 16  xor %r10, %r10                NULL)
    "b83d000000"        # 19  mov $61, %eax
    "0f05"              # 24  syscall
    "4885c0"            # 26  test %rax, %rax         a child reaped: wait again
    "7fe3"              # 29  jg 2
    "b83c000000"        # 31  mov $60, %eax           exit(0)
    "31ff"              # 36  xor %edi, %edi
    "0f05"              # 38  syscall
    "0f0b"              # 40  ud2                     never reached
    "0f05"              # 42  syscall                 the runner's calls
    "c3"                # 44  ret                     to the restorer (runner) or 2
    "48c7c00f000000"    # 45  mov $15, %rax           rt_sigreturn()
    "0f05"              # 52  syscall
    "0f0b")             # 54  ud2                     never reached
FORK_THREAD_SYSCALL = 0  # where the injected calls' `syscall` is
FORK_THREAD_LOOP = 2  # where the loop starts
FORK_THREAD_WAIT = 24  # where the loop's wait4 `syscall` is
FORK_THREAD_EXIT = 38  # where its exit `syscall` is
FORK_THREAD_RUNNER = 42  # the runner's `syscall; ret`
FORK_THREAD_RESTORER = 45  # rt_sigreturn
FORK_THREAD_NAME = 64  # where the thread's name sits (engine/forkthread.py)
FORK_THREAD_CELL = 96  # 8 bytes: the loop's address, the fork thread's first `ret`
FORK_THREAD_FRAME = 128  # the runner's signal frame (64-byte aligned)

# Landings (linux/landing.py), found in the target's own code.  glibc's and
# musl's __restore_rt, what their sigaction puts in sa_restorer.
SYSCALL_RET = b"\x0f\x05\xc3"  # syscall; ret
RESTORER = bytes.fromhex("48c7c00f0000000f05")  # mov $15, %rax; syscall
RESTORER_SYSCALL = 7  # where its `syscall` is


# The kernel's rt_sigframe (arch/x86/include/asm/sigframe.h) as rt_sigreturn
# reads it at the stack pointer minus 8: pretcode (the return address the
# handler's `ret` pops), struct ucontext (uc_flags, uc_link, uc_stack, struct
# sigcontext, uc_sigmask), siginfo; then the XSAVE area uc_mcontext.fpstate
# points to, 64-byte aligned, with struct _fpx_sw_bytes in its software
# reserved bytes (464) and FP_XSTATE_MAGIC2 after it
# (arch/x86/kernel/fpu/signal.c: check_xstate_in_sigframe).
_SIGCONTEXT_REGS = ("r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15", "rdi", "rsi",
                    "rbp", "rbx", "rdx", "rax", "rcx", "rsp", "rip", "eflags")
_UC_FLAGS = 1 | 2 | 4  # UC_FP_XSTATE | UC_SIGCONTEXT_SS | UC_STRICT_RESTORE_SS
# uc_stack.ss_flags: a mode sigaltstack refuses (EINVAL), which rt_sigreturn
# ignores (kernel/signal.c: restore_altstack squashes all but EFAULT): the
# thread's alternate signal stack, which snapcore cannot read, stays as it is.
_SS_NO_CHANGE = 4
_FP_XSTATE_MAGIC1 = 0x46505853
_FP_XSTATE_MAGIC2 = 0x46505845
_XSAVE_AT = 448  # after pretcode (8), ucontext (304), siginfo (128): 440, aligned
_XCR0_AT = 464  # what ptrace's NT_X86_XSTATE puts in the software reserved bytes
USER_CS = 0x33  # a 64-bit task's code segment; a compat task's is 0x23


def native(regs) -> bool:
    """Whether the registers are a 64-bit task's (rt_sigreturn restores a
    64-bit frame only in one)."""
    return regs.cs == USER_CS


# The kernel's syscall-restart codes (include/linux/errno.h): a thread
# stopped in a syscall that returns to user space through the signal path
# has its call rewound and run again (arch_do_signal_or_restart).
_RESTARTS = (-512, -513, -514, -516)  # ERESTARTSYS, -NOINTR, -NOHAND, _RESTARTBLOCK


def signal_frame_size(xstate: bytes) -> int:
    return _XSAVE_AT + len(xstate) + 4


def signal_frame(regs, mask: int, xstate: bytes, at: int, restorer: int) -> bytes:
    """The bytes to put at `at` (64-byte aligned) so that rt_sigreturn with the
    stack pointer at at+8 gives a thread `regs`, `mask` and `xstate` back, as
    leaving the stop they were saved in would have.

    A thread saved inside an interrupted syscall is given back before that
    call, to run it again: rt_sigreturn itself skips the restart logic, and
    it ends a pending restart_syscall (restart_block.fn is reset), so a
    rewound nanosleep starts over with its whole duration instead of the rest
    of it — the one difference, and only when snapcore died."""
    values = {name: getattr(regs, name) for name in _SIGCONTEXT_REGS}
    nr = regs.orig_rax - (1 << 64) if regs.orig_rax >> 63 else regs.orig_rax
    ret = values["rax"] - (1 << 64) if values["rax"] >> 63 else values["rax"]
    if nr >= 0 and ret in _RESTARTS:
        values["rip"] -= 2
        values["rax"] = nr
    sigcontext = _struct.pack("<18Q4H4QQ8Q", *(values[n] for n in _SIGCONTEXT_REGS),
                             regs.cs, 0, 0, regs.ss, 0, 0, 0, 0, at + _XSAVE_AT, *[0] * 8)
    ucontext = _struct.pack("<QQQi4xQ", _UC_FLAGS, 0, 0, _SS_NO_CHANGE, 0) + sigcontext + \
        _struct.pack("<Q", mask)
    head = _struct.pack("<Q", restorer) + ucontext + bytes(128)
    head += bytes(_XSAVE_AT - len(head))
    xcr0 = _struct.unpack_from("<Q", xstate, _XCR0_AT)[0]
    sw_bytes = _struct.pack("<IIQI28x", _FP_XSTATE_MAGIC1, len(xstate) + 4, xcr0, len(xstate))
    fp = xstate[:_XCR0_AT] + sw_bytes + xstate[_XCR0_AT + len(sw_bytes):]
    return head + fp + _struct.pack("<I", _FP_XSTATE_MAGIC2)


# Decoding just enough x86_64 to follow the instructions after a `syscall`
# (linux/landing.py: exit_site): register-to-register moves and clears of the
# eight first registers, `mov $imm, reg`, a short jmp, and the next `syscall`.
_REG32 = ("rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi")


def run_to_syscall(code: bytes, start: int, limit: int = 16):
    """Follow the code from `start` to the next `syscall`, if it gets there by
    the instructions above alone.  Returns (offset of that syscall, registers
    then): each register is ("imm", value) or ("reg", name) (its value
    before: rax, rcx and r11 are the previous syscall's), or None."""
    state: dict[str, tuple[str, str | int]] = {r: ("reg", r) for r in _REG32}
    at = start
    for _ in range(limit):
        if at < 0 or at + 2 > len(code):
            return None
        op = code[at]
        rex_w = op == 0x48
        if rex_w:
            at += 1
            op = code[at]
        if not rex_w and code[at:at + 2] == SYSCALL_INSN:
            return at, state
        if op in (0x31, 0x33, 0x89, 0x8B) and code[at + 1] >> 6 == 3:
            modrm = code[at + 1]
            reg, rm = _REG32[(modrm >> 3) & 7], _REG32[modrm & 7]
            if op in (0x31, 0x33):
                if reg != rm:
                    return None
                state[reg] = ("imm", 0)
            elif op == 0x89:
                state[rm] = state[reg]
            else:
                state[reg] = state[rm]
            at += 2
        elif not rex_w and 0xB8 <= op <= 0xBF and at + 5 <= len(code):
            state[_REG32[op - 0xB8]] = ("imm", int.from_bytes(code[at + 1:at + 5], "little"))
            at += 5
        elif rex_w and op == 0xC7 and 0xC0 <= code[at + 1] <= 0xC7 and at + 6 <= len(code):
            value = int.from_bytes(code[at + 2:at + 6], "little", signed=True)
            state[_REG32[code[at + 1] - 0xC0]] = ("imm", value & ((1 << 64) - 1))
            at += 6
        elif not rex_w and op == 0xEB:
            at += 2 + int.from_bytes(code[at + 1:at + 2], "little", signed=True)
        else:
            return None
    return None


# rt_sigaction's sigsetsize: the kernel's sigset_t (struct kernel_sigaction
# is handler, flags, restorer, mask; all zero is SIG_DFL).
KERNEL_SIGSET_SIZE = 8

# ELF core notes: x86's own register-set notes (include/uapi/linux/elf.h;
# the types every architecture shares are linux/abi.py's, NT_PRSTATUS and
# NT_PRPSINFO named here too for the layouts below), and the layouts of the
# process's and each thread's notes as (field, struct format), padding None.
NT_386_TLS = 0x200
NT_386_IOPERM = 0x201
NT_X86_XSTATE = 0x202
NT_X86_SHSTK = 0x204
FP_REGSET = NT_X86_XSTATE
# Register sets the kernel writes per thread (x86: NT_PRFPREG, NT_386_TLS,
# NT_386_IOPERM, NT_X86_XSTATE, NT_X86_SHSTK); every other note is the process's.
THREAD_NOTES = frozenset({NT_PRSTATUS, NT_PRFPREG, NT_386_TLS, NT_386_IOPERM, NT_X86_XSTATE,
                          NT_X86_SHSTK})
THREAD_NOTES_SIZE = 4096  # at most, a thread's notes and its NT_SIGINFO (core/dumprules.py)
_FXSAVE_SIZE = 512  # struct user_i387_struct: the legacy area at the start of XSAVE
_FX_SW_RESERVED = 464  # where XSAVE's software-reserved bytes start in that area


def fpregs(xstate: bytes) -> bytes:
    """NT_PRFPREG: the legacy FXSAVE area, which is the first 512 bytes of the
    XSAVE state; its software-reserved tail is XSAVE's own, not FXSAVE's."""
    return xstate[:_FX_SW_RESERVED].ljust(_FXSAVE_SIZE, b"\0")


# The notes' layouts: every 64-bit architecture's (linux/abi.py), with this
# one's registers inside elf_prstatus.
PRSTATUS_FIELDS = prstatus_fields(REGS_SIZE)
