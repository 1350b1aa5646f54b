"""Linux's own numbers that are the same on every architecture snapcore
supports: clone, mmap, prctl, wait, priority and resource-limit arguments
(include/uapi/linux/sched.h, asm-generic/mman-common.h, linux/prctl.h,
linux/wait.h, linux/ioprio.h, asm-generic/resource.h) and the core-note
types every architecture shares (linux/elf.h).  Syscall numbers, registers
and layouts differ per architecture: linux/arch_*.py.
"""

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
# Where pr_pid is in struct elf_prstatus on every 64-bit architecture
# (include/linux/elfcore.h: pr_info's three ints, pr_cursig and its padding,
# pr_sigpend, pr_sighold; only the registers after it differ): what reading
# a core's thread ids needs, whichever machine wrote the core.
PRSTATUS_PID_OFFSET = 32

# wait4 options: __WALL also sees children whose exit signal is not SIGCHLD;
# __WNOTHREAD only the caller's own children, not its thread group's.
WNOHANG = 0x1
WNOTHREAD = 0x20000000
WALL = 0x40000000

# Kernel-internal errno: a fork a pending signal interrupted is to be run
# again (include/linux/errno.h).
ERESTARTNOINTR = -513
