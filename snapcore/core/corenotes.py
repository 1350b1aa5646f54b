"""The notes of an ELF core, built as the kernel builds them (fs/binfmt_elf.c:
fill_note_info, fill_thread_core_info, write_note_info), for the running
architecture (the layouts are its table's: linux/arch.py).

Order, as write_note_info writes it: the first thread's NT_PRSTATUS, then the
process's NT_PRPSINFO, NT_SIGINFO, NT_AUXV and NT_FILE, then the first
thread's other register sets; then each other thread: NT_PRSTATUS and its
other sets.  The sets: NT_PRFPREG, then x86_64's NT_X86_XSTATE (NT_PRFPREG
is its first bytes), or arm64's own (NT_ARM_TLS, ...) as the thread's
registers were read (linux/regsets.py).  gdb opens a core on the thread of
its first NT_PRSTATUS.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from snapcore.core.elf import NOTE, Fields
from snapcore.linux import arch
from snapcore.linux.abi import NT_AUXV, NT_FILE, NT_PRFPREG, NT_PRPSINFO, NT_PRSTATUS, NT_SIGINFO

PRSTATUS = Fields(*arch.PRSTATUS_FIELDS)
PRPSINFO = Fields(*arch.PRPSINFO_FIELDS)
SIGINFO = Fields(*arch.SIGINFO_FIELDS)
TIMEVAL = Fields(("tv_sec", "q"), ("tv_usec", "q"))  # struct __kernel_old_timeval
# NT_FILE: a count and the page size, then one entry per file mapping.
FILES_HEAD = Fields(("count", "Q"), ("page_size", "Q"))
FILES_ENTRY = Fields(("start", "Q"), ("end", "Q"), ("file_ofs", "Q"))  # in pages

PRSTATUS_SIZE = PRSTATUS.size  # 336 on x86_64
PRPSINFO_SIZE = PRPSINFO.size  # 136
SIGINFO_SIZE = arch.SIGINFO_SIZE
PSARGS_SIZE = 80  # ELF_PRARGSZ


def note(name: bytes, n_type: int, desc: bytes) -> bytes:
    """One ELF note: header, NUL-terminated name and descriptor, each padded to 4."""
    name = name + b"\0"
    return NOTE.pack(namesz=len(name), descsz=len(desc), type=n_type) + _pad4(name) + \
        _pad4(desc)


def _pad4(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % 4)


def timeval(ticks: int, hz: int) -> bytes:
    """Clock ticks as struct __kernel_old_timeval (seconds, microseconds)."""
    return TIMEVAL.pack(tv_sec=ticks // hz, tv_usec=(ticks % hz) * 1_000_000 // hz)


@dataclass
class ThreadState:
    """One thread as the core shows it: what it was when the window held it."""

    tid: int  # in the target's own pid namespace
    regs: bytes  # the general registers, as PTRACE_GETREGSET NT_PRSTATUS gave them
    xstate: bytes  # the FPU state (arch.FP_REGSET), as PTRACE_GETREGSET gave it ("": none)
    sigmask: int  # blocked signals
    sigpend: int = 0  # signals pending for this thread alone
    utime: int = 0  # clock ticks (for the main thread: the whole process's, as the kernel)
    stime: int = 0
    regsets: tuple = ()  # its other register sets, (NT_ type, bytes), in the kernel's order


@dataclass
class ProcessState:
    pid: int  # in the target's own pid namespace, like ppid, pgrp and sid
    ppid: int
    pgrp: int
    sid: int
    uid: int  # real ids
    gid: int
    comm: str
    args: bytes  # the memory between arg_start and arg_end
    nice: int
    flags: int  # task flags (stat field 9)
    hz: int  # clock ticks per second, for the times
    cutime: int = 0
    cstime: int = 0
    signo: int = 6  # what NT_SIGINFO and pr_cursig say (see siginfo())
    sender_pid: int = 0
    sender_uid: int = 0
    auxv: bytes = b""
    files: list[tuple[int, int, int, str]] = field(default_factory=list)  # start, end, pgoff, path


def prstatus(p: ProcessState, t: ThreadState) -> bytes:
    """struct elf_prstatus (fill_prstatus): si_signo and pr_cursig, the thread's
    pending and blocked signals, its ids, its times, then its registers."""
    body = PRSTATUS.pack(
        si_signo=p.signo, si_code=0, si_errno=0, cursig=p.signo,
        sigpend=t.sigpend, sighold=t.sigmask, pid=t.tid, ppid=p.ppid, pgrp=p.pgrp, sid=p.sid,
        utime=timeval(t.utime, p.hz), stime=timeval(t.stime, p.hz),
        cutime=timeval(p.cutime, p.hz), cstime=timeval(p.cstime, p.hz),
        reg=t.regs[:arch.REGS_SIZE], fpvalid=1 if t.xstate else 0)  # "216s": NULs pad
    return note(b"CORE", NT_PRSTATUS, body)


def prpsinfo(p: ProcessState) -> bytes:
    """struct elf_prpsinfo (fill_psinfo): state, nice, flags, real uid and gid,
    ids, the name and the command line (NULs as spaces, at most 79 bytes)."""
    args = p.args[:PSARGS_SIZE - 1].replace(b"\0", b" ")
    body = PRPSINFO.pack(state=0, sname=b"R", zomb=0, nice=p.nice, flag=p.flags, uid=p.uid,
                         gid=p.gid, pid=p.pid, ppid=p.ppid, pgrp=p.pgrp, sid=p.sid,
                         fname=p.comm.encode()[:15], psargs=args)
    return note(b"CORE", NT_PRPSINFO, body)


def siginfo(p: ProcessState) -> bytes:
    """siginfo_t of a kill() from snapcore (SI_USER): what the kernel writer's
    core says, whose child took SIGABRT from snapcore.  Both writers say the
    same, so a core reads the same whoever wrote it."""
    body = SIGINFO.pack(si_signo=p.signo, si_errno=0, si_code=0, si_pid=p.sender_pid,
                        si_uid=p.sender_uid)  # si_code 0: SI_USER
    return note(b"CORE", NT_SIGINFO, body.ljust(SIGINFO_SIZE, b"\0"))


def auxv(p: ProcessState) -> bytes:
    return note(b"CORE", NT_AUXV, p.auxv)


def files(p: ProcessState) -> bytes:
    """NT_FILE (fill_files_note): count, page size, (start, end, page offset)
    per file mapping, then the NUL-terminated names in the same order."""
    table = FILES_HEAD.pack(count=len(p.files), page_size=arch.PAGE_SIZE)
    table += b"".join(FILES_ENTRY.pack(start=s, end=e, file_ofs=o) for s, e, o, _ in p.files)
    names = b"".join(path.encode(errors="surrogateescape") + b"\0" for *_, path in p.files)
    return note(b"CORE", NT_FILE, table + names)


def fpregs(t: ThreadState) -> bytes:
    """NT_PRFPREG, from the FPU state (arch.fpregs: on x86_64 the first bytes
    of the XSAVE area; on arm64 that state itself)."""
    return note(b"CORE", NT_PRFPREG, arch.fpregs(t.xstate))


def xstate(t: ThreadState) -> bytes:
    """The FPU state as its own note, where it is not NT_PRFPREG (x86_64)."""
    return note(b"LINUX", arch.FP_REGSET, t.xstate)


def regsets(t: ThreadState) -> list[bytes]:
    """The thread's notes after its NT_PRSTATUS, in fill_thread_core_info's
    order ("LINUX" names every set but NT_PRFPREG)."""
    out = [fpregs(t)] if t.xstate else []
    if t.xstate and arch.FP_REGSET != NT_PRFPREG:
        out.append(xstate(t))
    return out + [note(b"LINUX", kind, data) for kind, data in t.regsets]


def all_notes(p: ProcessState, threads: list[ThreadState]) -> bytes:
    """The note segment, in write_note_info's order; threads[0] is the one gdb
    opens on (the target's main thread)."""
    out = []
    for i, t in enumerate(threads):
        out.append(prstatus(p, t))
        if i == 0:
            out += [prpsinfo(p), siginfo(p), auxv(p)]
            if p.files:
                out.append(files(p))
        out += regsets(t)
    return b"".join(out)
