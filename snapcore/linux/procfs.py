"""Find and describe the target from /proc, before anything touches it."""

from __future__ import annotations

import contextlib
import os
import signal
from dataclasses import dataclass, field

from snapcore.errors import NoSuchProcess, Stage, Unsupported
from snapcore.linux import arch
from snapcore.linux.facts import Facts
from snapcore.linux.procstat import PROC, RLIM_INFINITY, read_stat, read_status
from snapcore.linux.proctext import COMM_BYTES, proc_open, proc_text, readable


@dataclass
class Target:
    """Facts about the target, read from /proc without touching it."""

    pid: int
    name: str  # comm, readable (proctext.readable)
    exe: str  # "" when unreadable (kernel threads)
    uid: int  # real uid: the kernel writes the core with the target's credentials
    gid: int
    euid: int
    start_time: int  # clock ticks since boot (stat field 22): pins the pid
    state: str  # one letter, as in ps
    tgid: int
    tracer: int  # TracerPid, 0 when not traced
    seccomp: int  # 0 none, 1 strict, 2 filter
    kernel_thread: bool
    elf_class: int  # 1: 32-bit, 2: 64-bit, 0: unknown, -1: not permitted to read
    elf_machine: int
    core_soft: int
    core_hard: int
    threads: list[int] = field(default_factory=list)
    proc_owner: int = 0  # owner of /proc/PID/stat: root when the target is not dumpable
    cmdline: list[str] = field(default_factory=list)


def gone(pid: int) -> bool:
    """True once the process is exiting or has exited: no /proc entry, a
    zombie, or no memory any more (an exiting process loses its mm before it
    becomes a zombie, and its /proc files then read empty)."""
    try:
        status = read_status(pid)
    except OSError:
        return True
    return status.get("State", "X")[0] in "ZX" or "VmSize" not in status


@contextlib.contextmanager
def reading(pid: int, stage: Stage):
    """/proc reads race the target's exit: a failed read of a process that is
    gone means the process exited, and says so."""
    try:
        yield
    except (OSError, ValueError) as exc:
        # ESRCH: the process is exiting and its memory is already gone.
        if isinstance(exc, ProcessLookupError) or gone(pid):
            raise NoSuchProcess(f"process {pid} exited", "nothing to snapshot", pid=pid,
                                stage=stage) from None
        raise


def parent(pid: int) -> int | None:
    """The parent's pid (the process, not the thread, a child belongs to);
    None once the process is gone."""
    try:
        return int(read_status(pid)["PPid"])
    except (OSError, KeyError, ValueError):
        return None


def start_time(pid: int, tid: int | None = None) -> int:
    """Clock ticks since boot at the process's (or one thread's) start: with
    the id, what pins it against reuse."""
    return read_stat(pid, tid).starttime


def thread_seccomp(pid: int, tid: int) -> int:
    """A thread's seccomp mode (0 none, 1 strict, 2 filter): filters belong
    to threads, not processes (kernel/seccomp.c), and may differ between them."""
    try:
        return int(read_status(pid, tid).get("Seccomp", "0"))
    except OSError:
        return 0


# The signals whose default action is to do nothing (kernel/signal.c:
# SIG_KERNEL_IGNORE_MASK); SIGCONT's continuing happens when it is sent.
_IGNORED_BY_DEFAULT = {signal.SIGCONT, signal.SIGCHLD, signal.SIGWINCH, signal.SIGURG}


def disposition(tid: int, sig: int) -> str:
    """What the thread's process does with `sig` on delivery: "ignore" (SIG_IGN,
    or SIG_DFL where the default is to ignore: get_signal skips it, and
    untraced it is not even queued), "catch" (a handler), or "default".  The
    dispositions are the process's (SigIgn, SigCgt in /proc/TID/status, bit
    sig-1)."""
    status = read_status(tid)
    bit = 1 << (sig - 1)
    if int(status["SigIgn"], 16) & bit:
        return "ignore"
    if int(status["SigCgt"], 16) & bit:
        return "catch"
    return "ignore" if sig in _IGNORED_BY_DEFAULT else "default"


def started_at(ticks: int) -> float:
    """A start time in clock ticks since boot (stat field 22) as a Unix time."""
    with proc_open("/proc/stat") as f:
        boot = next(int(line.split()[1]) for line in f if line.startswith("btime"))
    return boot + ticks / os.sysconf("SC_CLK_TCK")


def ns_tid(pid: int, tid: int) -> int | None:
    """A thread's id in its own pid namespace (the last NSpid field): what the
    process itself, its glibc and its core call it.  None when the thread is
    gone (never its global id in its place: that would be another thread's
    name inside a container); the global id on kernels without NSpid (before
    4.1: no pid namespaces to tell apart)."""
    try:
        nspid = read_status(pid, tid).get("NSpid")
    except OSError:
        return None
    return int(nspid.split()[-1]) if nspid else tid


def task_ids(pid: int) -> list[int]:
    return sorted(int(t) for t in os.listdir(f"/proc/{pid}/task"))


def thread_name(pid: int, tid: int) -> str:
    try:
        return readable(proc_text(f"/proc/{pid}/task/{tid}/comm").rstrip("\n"), COMM_BYTES)
    except OSError:
        return ""


def open_exe(pid: int) -> int | None:
    """A descriptor on the very file the process runs (/proc/PID/exe opens
    the inode, not a path: right in any mount namespace, and it keeps the
    file readable after the process and its namespace are gone); None when
    it cannot be opened (a kernel thread, a process that exited)."""
    try:
        return os.open(f"/proc/{pid}/exe", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None


def elf_identity(pid: int, proc: str = PROC) -> tuple[int, int]:
    """ELF class (1: 32-bit, 2: 64-bit) and machine of the target's executable."""
    with open(f"{proc}/{pid}/exe", "rb") as f:
        head = f.read(20)
    if head[:4] != b"\x7fELF":
        return (0, 0)
    return (head[4], int.from_bytes(head[18:20], "little"))


def read(pid: int, facts: Facts | None = None) -> Target:
    """Read what snapcore needs to know about `pid`; judging it is preflight's
    job.  From `facts` (the preflight's, read once), else from /proc now."""
    facts = facts or Facts(pid)
    proc = facts.proc
    try:
        status, stat = facts.status, facts.stat
        soft, hard = facts.limits.get("Max core file size", (RLIM_INFINITY, RLIM_INFINITY))
        tids = facts.tasks
        owner = os.stat(f"{proc}/{pid}/stat").st_uid
        with open(f"{proc}/{pid}/cmdline", "rb") as f:
            cmdline = [a.decode(errors="replace") for a in f.read().split(b"\0")[:-1]]
    except (FileNotFoundError, ProcessLookupError):
        raise NoSuchProcess(f"no such process {pid}",
                            "check the pid with ps or pgrep", pid=pid,
                            stage=Stage.PREFLIGHT) from None
    exe, elf_class, machine = "", 0, 0
    if not stat.kernel_thread:
        try:
            exe = os.readlink(f"{proc}/{pid}/exe")
            elf_class, machine = elf_identity(pid, proc)
        except PermissionError:
            elf_class = -1  # unreadable: the permission check refuses it
        except (FileNotFoundError, ProcessLookupError):
            if status.get("State", "?")[0] not in "ZX":
                raise NoSuchProcess(f"process {pid} exited", "nothing to snapshot", pid=pid,
                                    stage=Stage.PREFLIGHT) from None
    uids = status.get("Uid", "0 0 0 0").split()
    return Target(pid=pid, name=readable(status.get("Name", "?"), COMM_BYTES), exe=exe,
                  uid=int(uids[0]), gid=int(status.get("Gid", "0").split()[0]), euid=int(uids[1]),
                  start_time=stat.starttime, state=status.get("State", "?")[0],
                  tgid=int(status.get("Tgid", pid)), tracer=int(status.get("TracerPid", "0")),
                  seccomp=int(status.get("Seccomp", "0")), kernel_thread=stat.kernel_thread,
                  elf_class=elf_class, elf_machine=machine, core_soft=soft, core_hard=hard,
                  threads=tids, proc_owner=owner, cmdline=cmdline)


def syscall_instructions(pid: int) -> list[int]:
    """Addresses of a `syscall` instruction in the target's vDSO, then in its
    libc: the first of each executable mapping, best first.

    snapcore never writes into the target's code: other threads may run it,
    and if snapcore died mid-way the target would run garbage.  The vDSO's
    clock_gettime fallbacks contain `syscall` on x86_64.  More than one is
    offered because a seccomp filter may judge by the instruction address.
    """
    maps = []
    with proc_open(f"/proc/{pid}/maps") as f:
        for line in f:
            parts = line.split()
            start, end = (int(x, 16) for x in parts[0].split("-"))
            path = parts[5] if len(parts) > 5 else ""
            maps.append((start, end, parts[1], path))
    candidates = [m for m in maps if m[3] == "[vdso]"]
    candidates += [m for m in maps if "x" in m[2] and "/libc" in m[3]]
    found = []
    with open(f"/proc/{pid}/mem", "rb", buffering=0) as mem:
        for start, end, _perms, _path in candidates:
            try:
                mem.seek(start)
                code = mem.read(end - start)
            except ProcessLookupError:
                raise  # exiting: its memory is gone (`reading` says so)
            except OSError:
                continue
            at = find_insn(code, arch.SYSCALL_INSN)
            if at >= 0:
                found.append(start + at)
    if found:
        return found
    if gone(pid):
        raise NoSuchProcess(f"process {pid} exited", "nothing to snapshot", pid=pid,
                            stage=Stage.PREFLIGHT)
    raise Unsupported(f"no syscall instruction found in process {pid}'s vDSO or libc",
                      "snapcore needs a vDSO or a dynamically linked libc", pid=pid,
                      stage=Stage.PREFLIGHT)


def find_insn(code: bytes, insn: bytes, start: int = 0) -> int:
    """Where `insn` first starts at an instruction boundary the architecture
    allows (arch.INSN_ALIGN: arm64's are 4-byte aligned, from a 4-byte
    aligned mapping), or -1."""
    at = code.find(insn, start)
    while at >= 0 and at % arch.INSN_ALIGN:
        at = code.find(insn, at + 1)
    return at


def is_syscall_instruction(pid: int, at: int) -> bool:
    """Whether `at` still holds `syscall` in the target (checked at each use)."""
    try:
        with open(f"/proc/{pid}/mem", "rb", buffering=0) as mem:
            mem.seek(at)
            return mem.read(len(arch.SYSCALL_INSN)) == arch.SYSCALL_INSN
    except OSError:
        return False


def mm_fingerprint(pid: int) -> tuple[int, ...]:
    """Where the kernel laid out the target's program now (Stat.fingerprint):
    read live at each stop, against the preflight's."""
    return read_stat(pid).fingerprint
