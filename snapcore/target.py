"""Find and describe the target from /proc, before anything touches it."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import psutil

from . import arch
from .errors import AlreadyTraced, NoSuchProcess, PermissionDenied, Unsupported

RLIM_INFINITY = (1 << 64) - 1


@dataclass
class Target:
    pid: int
    name: str  # comm
    exe: str
    uid: int  # real uid: the kernel writes the core with the target's credentials
    gid: int
    start_time: int  # clock ticks since boot (stat field 22): pins the pid
    state: str
    core_soft: int
    core_hard: int
    threads: list[int] = field(default_factory=list)


def read_status(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/status") as f:
        return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)


def start_time(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read()
    # comm may hold spaces and parentheses: split after the last ')'.
    return int(stat[stat.rindex(")") + 2:].split()[19])


def task_ids(pid: int) -> list[int]:
    return sorted(int(t) for t in os.listdir(f"/proc/{pid}/task"))


def thread_state(pid: int, tid: int) -> str:
    with open(f"/proc/{pid}/task/{tid}/stat") as f:
        stat = f.read()
    return stat[stat.rindex(")") + 2]


def thread_name(pid: int, tid: int) -> str:
    try:
        with open(f"/proc/{pid}/task/{tid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


def core_limits(pid: int) -> tuple[int, int]:
    """Soft and hard RLIMIT_CORE of the target, from /proc/PID/limits."""
    with open(f"/proc/{pid}/limits") as f:
        for line in f:
            if line.startswith("Max core file size"):
                soft, hard = line.split()[4:6]
                return (_limit(soft), _limit(hard))
    return (RLIM_INFINITY, RLIM_INFINITY)


def _limit(text: str) -> int:
    return RLIM_INFINITY if text == "unlimited" else int(text)


def elf_identity(pid: int) -> tuple[int, int]:
    """ELF class (1: 32-bit, 2: 64-bit) and machine of the target's executable."""
    with open(f"/proc/{pid}/exe", "rb") as f:
        head = f.read(20)
    if head[:4] != b"\x7fELF":
        return (0, 0)
    return (head[4], int.from_bytes(head[18:20], "little"))


def describe(pid: int) -> Target:
    """Read what snapcore needs about `pid`, refusing targets it must not touch."""
    try:
        status = read_status(pid)
        proc = psutil.Process(pid)
        stime = start_time(pid)
    except (FileNotFoundError, ProcessLookupError, psutil.NoSuchProcess):
        raise NoSuchProcess(f"no such process {pid}",
                            "check the pid with ps or pgrep", pid=pid, stage="preflight")
    state = status.get("State", "?")[0]
    name = status.get("Name", "?")
    where = dict(pid=pid, stage="preflight")
    if state in "ZX":
        raise Unsupported(f"process {pid} ({name}) is a zombie",
                          "it has exited; there is no memory left to dump", **where)
    if int(status.get("Tgid", pid)) != pid:
        raise Unsupported(f"{pid} is a thread of process {status['Tgid']}, not a process",
                          f"snapshot the process: snapcore {status['Tgid']}", **where)
    if _is_kernel_thread(pid):
        raise Unsupported(f"process {pid} ({name}) is a kernel thread",
                          "kernel threads have no user memory to dump", **where)
    me = os.getpid()
    if pid == me or pid in {p.pid for p in psutil.Process(me).parents()}:
        raise Unsupported(f"process {pid} ({name}) is snapcore itself or one of its parents",
                          "run snapcore from another shell", **where)
    tracer = int(status.get("TracerPid", "0"))
    if tracer:
        raise AlreadyTraced(f"process {pid} ({name}) is already traced by {tracer} "
                            f"({_name_of(tracer)})",
                            "detach gdb/strace from it first", **where)
    if state in "Tt":
        raise Unsupported(f"process {pid} ({name}) is stopped (state {state})",
                          "it must stay stopped: resume it (kill -CONT) before a snapshot",
                          **where)
    if status.get("Seccomp", "0") != "0":
        raise Unsupported(f"process {pid} ({name}) runs under a seccomp filter",
                          "an injected syscall could be denied or kill it; "
                          "snapcore does not touch seccomp-filtered processes yet", **where)
    try:
        elf_class, machine = elf_identity(pid)
        exe = proc.exe()
    except PermissionError:
        raise PermissionDenied(f"not permitted to inspect process {pid} ({name})",
                               "run snapcore as root (sudo) or as the process's owner",
                               **where)
    except (FileNotFoundError, ProcessLookupError, psutil.NoSuchProcess):
        raise NoSuchProcess(f"process {pid} exited", "nothing to snapshot", **where)
    if elf_class != 2 or machine != arch.ELF_MACHINE:
        raise Unsupported(f"process {pid} ({name}) is not a 64-bit x86_64 process",
                          "snapcore supports 64-bit x86_64 processes only", **where)
    soft, hard = core_limits(pid)
    uids = status["Uid"].split()
    gids = status["Gid"].split()
    return Target(pid=pid, name=name, exe=exe, uid=int(uids[0]), gid=int(gids[0]),
                  start_time=stime, state=state, core_soft=soft, core_hard=hard,
                  threads=task_ids(pid))


def _is_kernel_thread(pid: int) -> bool:
    # PF_KTHREAD (0x00200000) in the flags field (stat field 9).
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read()
    flags = int(stat[stat.rindex(")") + 2:].split()[6])
    return bool(flags & 0x00200000)


def _name_of(pid: int) -> str:
    try:
        return psutil.Process(pid).name()
    except psutil.Error:
        return "?"


def find_syscall_instruction(pid: int) -> int:
    """Address of a `syscall` instruction in the target's vDSO (or libc).

    snapcore never writes into the target's code: other threads may run it,
    and if snapcore died mid-way the target would run garbage.  The vDSO's
    clock_gettime fallbacks contain `syscall` on x86_64.
    """
    maps = []
    with open(f"/proc/{pid}/maps") as f:
        for line in f:
            parts = line.split()
            start, end = (int(x, 16) for x in parts[0].split("-"))
            path = parts[5] if len(parts) > 5 else ""
            maps.append((start, end, parts[1], path))
    candidates = [m for m in maps if m[3] == "[vdso]"]
    candidates += [m for m in maps if "x" in m[2] and "/libc" in m[3]]
    with open(f"/proc/{pid}/mem", "rb", buffering=0) as mem:
        for start, end, _perms, _path in candidates:
            try:
                mem.seek(start)
                code = mem.read(end - start)
            except OSError:
                continue
            at = code.find(arch.SYSCALL_INSN)
            if at >= 0:
                return start + at
    raise Unsupported(f"no syscall instruction found in process {pid}'s vDSO or libc",
                      "snapcore needs a vDSO or a dynamically linked libc", pid=pid,
                      stage="preflight")
