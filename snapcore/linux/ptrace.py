"""The only module that calls ptrace(2): python-ptrace's raw binding
(ptrace.binding.func.ptrace) and request numbers, options and events where
it has them; not its debugger, which attaches with PTRACE_ATTACH (a SIGSTOP
the target's parent can see) and detaches from __del__ at random moments.

What snapcore adds: the requests python-ptrace (0.9.9) does not name
(SEIZE and INTERRUPT: attach and stop without a signal the target could
see; LISTEN: a held thread job control still reaches; GETSIGMASK and
SETSIGMASK: an injected call runs with every signal blocked;
SECCOMP_GET_FILTER: linux/seccomp.py; GET_RSEQ_CONFIGURATION: linux/rseq.py;
O_EXITKILL, EVENT_STOP); register sets through GETREGSET/SETREGSET (every
architecture has it; GETREGS is x86's own) into the architecture table's
struct (arch.Regs), the syscall number in it even where the kernel keeps it
in a set of its own (arch.NR_REGSET: arm64); each errno read as the kernel
means it for that request, raised as linux/'s own error (`PtraceFailed`
with the errno, thread and request): ESRCH a thread gone or not stopped
(`TaskGone`), EPERM one snapcore may not trace, with its tracer if it has
one (`NotPermitted`), or that is exiting (`seize`: `TaskGone`); ENOENT past
the last seccomp filter, EIO or EINVAL a kernel without rseq
configuration, answers rather than errors.  What a failure means for a
snapshot is the engine's to say (engine/kernelerrors.py).
Waiting for tracees is linux/stops.py.
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct
from typing import TYPE_CHECKING
from dataclasses import dataclass

from ptrace import PtraceError
from ptrace.binding.func import (PTRACE_CONT, PTRACE_DETACH, PTRACE_EVENT_CLONE,
                                 PTRACE_EVENT_EXEC, PTRACE_GETEVENTMSG, PTRACE_GETREGSET,
                                 PTRACE_O_TRACECLONE, PTRACE_O_TRACEEXEC,
                                 PTRACE_O_TRACESYSGOOD, PTRACE_SETOPTIONS, PTRACE_SETREGSET,
                                 PTRACE_SYSCALL)
from ptrace.binding.func import ptrace as _raw_ptrace

from snapcore.linux import abi, arch, procfs

# The requests python-ptrace does not name (include/uapi/linux/ptrace.h).
PTRACE_SEIZE = 0x4206
PTRACE_INTERRUPT = 0x4207
PTRACE_LISTEN = 0x4208
PTRACE_GETSIGMASK = 0x420A
PTRACE_SETSIGMASK = 0x420B
PTRACE_SECCOMP_GET_FILTER = 0x420C
PTRACE_GET_RSEQ_CONFIGURATION = 0x420F

O_TRACESYSGOOD = PTRACE_O_TRACESYSGOOD
O_TRACECLONE = PTRACE_O_TRACECLONE
O_TRACEEXEC = PTRACE_O_TRACEEXEC
O_EXITKILL = 1 << 20  # not named by python-ptrace

EVENT_CLONE = PTRACE_EVENT_CLONE
EVENT_EXEC = PTRACE_EVENT_EXEC
EVENT_STOP = 128  # not named by python-ptrace: a SEIZEd thread's interrupt or group stop

# Every signal but SIGKILL and SIGSTOP (the kernel ignores those two in a mask).
ALL_SIGNALS_MASK = (1 << 64) - 1

if TYPE_CHECKING:  # the registers' struct is the running machine's (arch.Regs)
    from ctypes import Structure as Regs
else:
    Regs = arch.Regs
_U32 = 0xFFFFFFFF


class PtraceFailed(OSError):
    """A ptrace request (or a wait for a tracee: linux/stops.py) that failed:
    `errno` as the kernel answered it (None when the failure is a stop the
    tracee reported, not an answer), `tid` the thread, `request` the
    request's name ("seize", "getregset", "wait"...), `addr` its address
    argument where it says which (the seccomp filter's index)."""

    def __init__(self, code: int | None, tid: int, request: str, addr: int = 0):
        super().__init__(code, os.strerror(code) if code else "seen in a stop of the tracee")
        self.tid = tid
        self.request = request
        self.addr = addr

    def __str__(self) -> str:
        return f"ptrace {self.request} on {self.tid}: {self.strerror}"


class TaskGone(PtraceFailed, ProcessLookupError):
    """The thread is gone or not in a ptrace stop (ESRCH); or, with
    `exiting`, it was exiting as it was seized (EPERM: ptrace_attach refuses
    a task whose exit has begun); `ended`: a wait saw it end."""

    def __init__(self, code: int | None, tid: int, request: str, addr: int = 0, *,
                 exiting: bool = False, ended: bool = False):
        super().__init__(code, tid, request, addr)
        self.exiting = exiting
        self.ended = ended


class NotPermitted(PtraceFailed, PermissionError):
    """EPERM (and EACCES, for the seccomp filters): snapcore may not do this.
    For a seize, `tracer` is the thread's tracer (0: none) and `tracer_name`
    its name: a thread someone else traces answers EPERM to a tracer that
    may trace anything."""

    def __init__(self, code: int | None, tid: int, request: str, addr: int = 0, *,
                 tracer: int = 0, tracer_name: str = ""):
        super().__init__(code, tid, request, addr)
        self.tracer = tracer
        self.tracer_name = tracer_name


def failed(code: int | None, tid: int, request: str, addr: int = 0) -> PtraceFailed:
    """The error of linux/'s own for errno `code` of `request` on `tid`."""
    if code == errno.ESRCH:
        return TaskGone(code, tid, request, addr)
    if code == errno.EPERM:
        return NotPermitted(code, tid, request, addr)
    return PtraceFailed(code, tid, request, addr)


class _Iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


def _call(request: int, tid: int, addr: int = 0, data: int = 0, what: str = "") -> int:
    """ptrace(request, tid, addr, data); a failure raised as `failed` says."""
    try:
        return _raw_ptrace(request, tid, addr, data)
    except PtraceError as exc:
        raise failed(exc.errno, tid, what, addr) from None


def seize(tid: int, options: int = 0) -> None:
    """Attach without stopping and without any signal the target could see.

    EPERM from a tracer that may trace anything means someone else traces
    the thread (another snapcore, gdb, strace): that is "busy", not a
    missing privilege; or that it is exiting (ptrace_attach answers EPERM,
    not ESRCH, to a task whose exit_state is set): that is "gone"."""
    try:
        _call(PTRACE_SEIZE, tid, 0, options, "seize")
    except NotPermitted as exc:
        if procfs.gone(tid):
            raise TaskGone(exc.errno, tid, "seize", exiting=True) from None
        try:
            tracer = int(procfs.read_status(tid).get("TracerPid", "0"))
        except OSError:
            tracer = 0
        if tracer:
            raise NotPermitted(exc.errno, tid, "seize", tracer=tracer,
                               tracer_name=procfs.thread_name(tracer, tracer) or "") from None
        raise


def interrupt(tid: int) -> None:
    _call(PTRACE_INTERRUPT, tid, 0, 0, "interrupt")


def set_options(tid: int, options: int) -> None:
    _call(PTRACE_SETOPTIONS, tid, 0, options, "setoptions")


def cont(tid: int, sig: int = 0) -> None:
    _call(PTRACE_CONT, tid, 0, sig, "cont")


def listen(tid: int) -> None:
    """Leave a tracee in its PTRACE_EVENT_STOP, but let job control reach it:
    a group stop or a SIGCONT of its process wakes it to take part, and it
    stops (and reports) again (PTRACE_LISTEN)."""
    _call(PTRACE_LISTEN, tid, 0, 0, "listen")


def resume_to_syscall(tid: int) -> None:
    """Run to the next syscall entry or exit (PTRACE_SYSCALL).

    Used instead of single-step or int3, which deliver a forced SIGTRAP: if
    the target blocks or ignores SIGTRAP the kernel resets its handler.
    """
    _call(PTRACE_SYSCALL, tid, 0, 0, "syscall")


def detach(tid: int, sig: int = 0) -> None:
    _call(PTRACE_DETACH, tid, 0, sig, "detach")


def get_regs(tid: int) -> Regs:
    """The general registers (NT_PRSTATUS through GETREGSET: the request every
    architecture has, where PTRACE_GETREGS is x86's own), and the syscall
    number where it is a register set of its own (arch.NR_REGSET)."""
    regs = Regs()
    iov = _Iovec(ctypes.addressof(regs), arch.REGS_SIZE)
    _call(PTRACE_GETREGSET, tid, abi.NT_PRSTATUS, ctypes.addressof(iov), "getregset")
    if arch.NR_REGSET is not None:
        nr = struct.unpack("<i", get_regset(tid, arch.NR_REGSET, 4))[0]
        setattr(regs, arch.REG_ORIG_NR, nr & ((1 << 64) - 1))
    return regs


def set_regs(tid: int, regs: Regs) -> None:
    iov = _Iovec(ctypes.addressof(regs), arch.REGS_SIZE)
    _call(PTRACE_SETREGSET, tid, abi.NT_PRSTATUS, ctypes.addressof(iov), "setregset")
    if arch.NR_REGSET is not None:  # an int: -1 (all ones) is "no syscall"
        set_regset(tid, arch.NR_REGSET, struct.pack("<I", getattr(regs, arch.REG_ORIG_NR) & _U32))


def copy_regs(regs: Regs) -> Regs:
    return Regs.from_buffer_copy(regs)


def regs_size(tid: int) -> int:
    """Size of the NT_PRSTATUS register set: a 64-bit task's is arch.REGS_SIZE
    (x86_64 216, arm64 272), a 32-bit one's less (68, 72)."""
    buf = ctypes.create_string_buffer(512)
    iov = _Iovec(ctypes.addressof(buf), len(buf))
    _call(PTRACE_GETREGSET, tid, abi.NT_PRSTATUS, ctypes.addressof(iov), "getregset")
    return iov.len


def get_regset(tid: int, kind: int, size: int, name: str = "") -> bytes:
    """Register set `kind` (an NT_ type) as the kernel gives it, at most `size` bytes."""
    buf = ctypes.create_string_buffer(size)
    iov = _Iovec(ctypes.addressof(buf), len(buf))
    _call(PTRACE_GETREGSET, tid, kind, ctypes.addressof(iov), f"getregset {name or hex(kind)}")
    return buf.raw[: iov.len]


def set_regset(tid: int, kind: int, data: bytes, name: str = "") -> None:
    buf = ctypes.create_string_buffer(data, len(data))
    iov = _Iovec(ctypes.addressof(buf), len(data))
    _call(PTRACE_SETREGSET, tid, kind, ctypes.addressof(iov), f"setregset {name or hex(kind)}")


def get_sigmask(tid: int) -> int:
    mask = ctypes.c_uint64()
    _call(PTRACE_GETSIGMASK, tid, 8, ctypes.addressof(mask), "getsigmask")
    return mask.value


def set_sigmask(tid: int, mask: int) -> None:
    value = ctypes.c_uint64(mask)
    _call(PTRACE_SETSIGMASK, tid, 8, ctypes.addressof(value), "setsigmask")


SECCOMP_FILTER = "seccomp filter"  # the request's name in its errors
RSEQ = "rseq"


def seccomp_filters(tid: int) -> list[bytes]:
    """The thread's seccomp filters as raw struct sock_filter arrays, newest first.

    Needs CAP_SYS_ADMIN and a stopped tracee; raises NotPermitted without it.
    """
    filters: list[bytes] = []
    for index in range(1024):  # the kernel caps a thread's filters far lower
        try:
            count = _raw_ptrace(PTRACE_SECCOMP_GET_FILTER, tid, index, 0)
        except PtraceError as exc:
            if exc.errno == errno.ENOENT:
                return filters
            if exc.errno == errno.EACCES:  # without CAP_SYS_ADMIN (kernel/seccomp.c)
                raise NotPermitted(exc.errno, tid, SECCOMP_FILTER, index) from None
            raise failed(exc.errno, tid, SECCOMP_FILTER, index) from None
        buf = ctypes.create_string_buffer(count * 8)
        _call(PTRACE_SECCOMP_GET_FILTER, tid, index, ctypes.addressof(buf), SECCOMP_FILTER)
        filters.append(buf.raw)
    return filters


@dataclass
class RseqArea:
    """Where a thread's registered struct rseq lives (0 when none) and its signature."""

    address: int
    size: int
    signature: int


def rseq_config(tid: int) -> RseqArea:
    """PTRACE_GET_RSEQ_CONFIGURATION (Linux 5.13+); an area of 0 when unsupported."""
    buf = ctypes.create_string_buffer(24)  # struct ptrace_rseq_configuration
    try:
        _raw_ptrace(PTRACE_GET_RSEQ_CONFIGURATION, tid, 24, ctypes.addressof(buf))
    except PtraceError as exc:
        if exc.errno in (errno.EIO, errno.EINVAL):
            return RseqArea(0, 0, 0)
        raise failed(exc.errno, tid, RSEQ) from None
    address, size, signature = struct.unpack_from("<QII", buf.raw)
    return RseqArea(address, size, signature)


def event_msg(tid: int) -> int:
    msg = ctypes.c_ulong()
    _call(PTRACE_GETEVENTMSG, tid, 0, ctypes.addressof(msg), "geteventmsg")
    return msg.value


