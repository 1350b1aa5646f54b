"""A thread's register sets beyond its general registers, as the
architecture table names them: what a held thread saves, what a copy of it
in the snapshot child is given, what an injected call changes.

- arch.FP_REGSET: the FPU state the signal frame carries and the core's
  FPU notes come from (x86_64 NT_X86_XSTATE, arm64 NT_PRFPREG).
- arch.OTHER_REGSETS: the other sets the kernel's core writer writes per
  thread, in its order (fs/binfmt_elf.c: fill_thread_core_info walks the
  architecture's regsets); none on x86_64, where fs_base is a general
  register; on arm64 the TLS register, the debug registers, SVE...
- arch.PUT_BACK_REGSETS: of those, what a copy of the thread must carry to
  be that thread (arm64: tpidr_el0, SVE).
- arch.CALL_CLOBBERS: of those, what a syscall itself changes and so must
  be put back after an injected one (arm64: a syscall discards the SVE
  state beyond the FP/SIMD registers, arch/arm64/kernel/fpsimd.c:
  sve_user_discard); on x86_64 nothing.
"""

from __future__ import annotations

import errno

from snapcore.linux import arch, ptrace

# The sets this machine's kernel refused once: a feature the CPU lacks
# (SME's, say), refused for every thread alike (arch/arm64/kernel/ptrace.c:
# system_supports_*), so not asked again inside the window.
_ABSENT: set[int] = set()


def read(tid: int) -> tuple[bytes, tuple]:
    """The thread's FPU state and its other sets as (NT_ type, bytes); a set
    the kernel refuses (EINVAL, ENODEV: a feature this CPU lacks) is left
    out, as the core writer leaves it out."""
    fp = ptrace.get_regset(tid, arch.FP_REGSET, arch.FP_REGSET_SIZE, "xstate")
    sets = []
    for kind, size in arch.OTHER_REGSETS:
        if kind in _ABSENT:
            continue
        try:
            data = ptrace.get_regset(tid, kind, size)
        except ptrace.PtraceFailed as exc:
            if exc.errno not in (errno.EINVAL, errno.ENODEV):
                raise
            _ABSENT.add(kind)
            continue
        if kind in arch.SIZED_REGSETS:  # GETREGSET says the buffer's length, not the set's
            data = data[:int.from_bytes(data[:4], "little")]
        sets.append((kind, data))
    return fp, tuple(sets)


def put(tid: int, regs: ptrace.Regs, fp: bytes, sets: tuple) -> None:
    """Give task `tid` (a copy of a thread in the snapshot child) that
    thread's registers, FPU state and the sets a copy must carry."""
    ptrace.set_regs(tid, regs)
    if fp:
        ptrace.set_regset(tid, arch.FP_REGSET, fp, "xstate")
    for kind, data in sets:
        if kind in arch.PUT_BACK_REGSETS:
            ptrace.set_regset(tid, kind, data)


def after_call(tid: int, sets: tuple) -> None:
    """Put back what an injected syscall changed of the thread's sets."""
    for kind, data in sets:
        if kind in arch.CALL_CLOBBERS:
            ptrace.set_regset(tid, kind, data)
