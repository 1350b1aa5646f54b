"""Every architecture-specific number snapcore uses, for x86_64.

Nothing else in the package spells a syscall number, a register name, a
kernel structure's layout or an errno the kernel uses only internally.
"""

ELF_MACHINE = 62  # EM_X86_64
AUDIT_ARCH = 0xC000003E  # AUDIT_ARCH_X86_64, what seccomp filters compare against

# `syscall` is 0f 05; after it executes, rip points just past it.
SYSCALL_INSN = b"\x0f\x05"
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

NR = {
    "close": 3,
    "mmap": 9,
    "munmap": 11,
    "rt_sigaction": 13,
    "madvise": 28,
    "clone": 56,
    "exit": 60,
    "wait4": 61,
    "chdir": 80,
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
    "0f0b")             # 40  ud2                     never reached
FORK_THREAD_SYSCALL = 0  # where the injected calls' `syscall` is
FORK_THREAD_WAIT = 24  # where the loop's wait4 `syscall` is
FORK_THREAD_EXIT = 38  # where its exit `syscall` is

# rt_sigaction's sigsetsize: the kernel's sigset_t (struct kernel_sigaction
# is handler, flags, restorer, mask; all zero is SIG_DFL).
KERNEL_SIGSET_SIZE = 8

# ELF core notes (include/uapi/linux/elf.h) and where pr_pid sits in them.
NT_PRSTATUS = 1
NT_PRPSINFO = 3
NT_X86_XSTATE = 0x202
PRSTATUS_PID_OFFSET = 32
PRPSINFO_PID_OFFSET = 24
