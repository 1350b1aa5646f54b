"""Restartable sequences: never let an injected syscall cancel an rseq abort.

A thread inside an rseq critical section that is preempted or signalled
must restart at its abort handler; the kernel does that on the way back to
user space (kernel/rseq.c: rseq_ip_fixup) by looking at the instruction
pointer.  Injected registers put the thread in the vDSO, outside the
section, so the kernel clears `rseq_cs` instead, and the restored thread
would commit without the abort it is owed.  So a thread inside a critical
section is not used for an injection when another will do, and when it must
be, snapcore does what the kernel would have done: it moves the thread to
its abort handler and clears `rseq_cs` first.
"""

from __future__ import annotations

import struct

from snapcore.errors import Stage, Unsupported
from snapcore.linux import arch, ptrace

RSEQ_CS_OFFSET = 8  # struct rseq { u32 cpu_id_start; u32 cpu_id; u64 rseq_cs; ... }
RSEQ_CS_LAYOUT = "<IIQQQ"  # struct rseq_cs: version, flags, start_ip, post_commit_offset, abort_ip


def _read(tid: int, address: int, size: int) -> bytes:
    with open(f"/proc/{tid}/mem", "rb", buffering=0) as mem:
        mem.seek(address)
        return mem.read(size)


def abort_ip(tid: int, ip: int) -> int | None:
    """The abort handler of the critical section `ip` is in, or None when the
    thread (stopped) is not inside one."""
    area = ptrace.rseq_config(tid)
    if not area.address:
        return None
    try:
        cs, = struct.unpack("<Q", _read(tid, area.address + RSEQ_CS_OFFSET, 8))
        if not cs:
            return None
        _version, _flags, start, length, abort = struct.unpack(
            RSEQ_CS_LAYOUT, _read(tid, cs, struct.calcsize(RSEQ_CS_LAYOUT)))
    except OSError:
        return None  # an rseq_cs the kernel could not read either: it would kill on it
    return abort if start <= ip < start + length else None


def move_to_abort(tid: int, regs: ptrace.Regs, abort: int) -> None:
    """What rseq_ip_fixup does: check the signature before the handler, clear
    rseq_cs, and restart the thread at the handler (in its saved registers)."""
    area = ptrace.rseq_config(tid)
    signature, = struct.unpack("<I", _read(tid, abort - 4, 4))
    if signature != area.signature:
        raise Unsupported(f"thread {tid} is inside an rseq critical section whose abort "
                          "handler has the wrong signature", "try again in a moment",
                          pid=tid, stage=Stage.CAPTURE)
    with open(f"/proc/{tid}/mem", "r+b", buffering=0) as mem:
        mem.seek(area.address + RSEQ_CS_OFFSET)
        mem.write(b"\0" * 8)
    setattr(regs, arch.REG_IP, abort)
