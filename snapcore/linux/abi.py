"""Linux's own numbers that are the same on every architecture snapcore
supports: clone, mmap, prctl, wait, priority and resource-limit arguments
(include/uapi/linux/sched.h, asm-generic/mman-common.h, linux/prctl.h,
linux/wait.h, linux/ioprio.h, asm-generic/resource.h) and the core-note
types every architecture shares (linux/elf.h), and the notes' 64-bit
layouts.  Syscall numbers, registers and their layouts differ per
architecture: linux/arch_*.py.
"""

import struct as _struct

# clone(2) flags; the low byte is the exit signal (0: none at all).
CLONE_VM = 0x100
CLONE_FS = 0x200
CLONE_FILES = 0x400
CLONE_SIGHAND = 0x800
CLONE_THREAD = 0x10000
CLONE_SYSVSEM = 0x40000

PROT_READ = 0x1
PROT_WRITE = 0x2
PROT_EXEC = 0x4
MAP_PRIVATE = 0x02
MAP_ANONYMOUS = 0x20
MADV_DONTFORK = 10

PR_GET_DUMPABLE = 3
PR_SET_DUMPABLE = 4
PR_SET_NAME = 15

SCHED_IDLE = 5  # sched_setscheduler's policy
PRIO_PROCESS = 0  # setpriority's `which`: one task, by id (0: the caller)
IOPRIO_WHO_PROCESS = 1
IOPRIO_CLASS_IDLE = 3
IOPRIO_CLASS_SHIFT = 13  # ioprio = class << 13 | level
RLIMIT_CORE = 4

# Core-note types (include/uapi/linux/elf.h), also the register sets'
# numbers for PTRACE_GETREGSET.  An architecture's own: linux/arch_*.py.
NT_PRSTATUS = 1
NT_PRFPREG = 2
NT_PRPSINFO = 3
NT_AUXV = 6
NT_SIGINFO = 0x53494749  # "SIGI"
NT_FILE = 0x46494C45  # "FILE"


# The process's and each thread's notes as every 64-bit architecture lays
# them out (include/linux/elfcore.h; uid and gid are 4-byte __kernel_uid_t
# on x86_64 and arm64 alike): (field, struct format), padding None.  Only
# the registers inside elf_prstatus differ: each table gives their size.
def prstatus_fields(regs_size: int) -> tuple:
    """struct elf_prstatus: struct elf_siginfo pr_info, the current signal,
    the pending and held signals, the ids, four struct __kernel_old_timeval
    (user, system, children's user and system time), the registers and
    whether FP registers follow."""
    return (
        ("si_signo", "i"), ("si_code", "i"), ("si_errno", "i"), ("cursig", "h"), (None, "2x"),
        ("sigpend", "Q"), ("sighold", "Q"),
        ("pid", "i"), ("ppid", "i"), ("pgrp", "i"), ("sid", "i"),
        ("utime", "16s"), ("stime", "16s"), ("cutime", "16s"), ("cstime", "16s"),
        ("reg", f"{regs_size}s"), ("fpvalid", "i"), (None, "4x"))


# struct elf_prpsinfo: state (its number, its letter), zombie, nice, task
# flags, real uid and gid, ids, comm (16) and the command line (ELF_PRARGSZ).
PRPSINFO_FIELDS = (
    ("state", "b"), ("sname", "c"), ("zomb", "b"), ("nice", "b"), (None, "4x"),
    ("flag", "Q"), ("uid", "I"), ("gid", "I"),
    ("pid", "i"), ("ppid", "i"), ("pgrp", "i"), ("sid", "i"),
    ("fname", "16s"), ("psargs", "80s"))
# siginfo_t, its head and the _kill member of its union (8-byte aligned);
# NT_SIGINFO holds the whole 128 bytes.
SIGINFO_FIELDS = (("si_signo", "i"), ("si_errno", "i"), ("si_code", "i"), (None, "4x"),
                  ("si_pid", "i"), ("si_uid", "I"))
SIGINFO_SIZE = 128


def _offset(fields, name: str) -> int:
    names = [n for n, _ in fields]
    return _struct.calcsize("<" + "".join(f for _, f in fields[:names.index(name)]))


# Where pr_pid is (the registers come after it): what reading a core's
# thread ids needs, whichever machine wrote the core.
PRSTATUS_PID_OFFSET = _offset(prstatus_fields(0), "pid")  # 32
PRPSINFO_PID_OFFSET = _offset(PRPSINFO_FIELDS, "pid")  # 24

# wait4 options: __WALL also sees children whose exit signal is not SIGCHLD;
# __WNOTHREAD only the caller's own children, not its thread group's.
WNOHANG = 0x1
WNOTHREAD = 0x20000000
WALL = 0x40000000

# Kernel-internal errno: a fork a pending signal interrupted is to be run
# again (include/linux/errno.h).
ERESTARTNOINTR = -513
