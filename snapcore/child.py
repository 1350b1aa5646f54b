"""Turn the copy-on-write child into a core, without ever running the target's code.

The child is a private copy of the target: writing into its memory or changing
its settings cannot touch the target.  Setup is done from inside the child
(injected syscalls) where possible: a process may lower its own priority and
raise its own soft limits without any capability, while doing the same from
outside needs CAP_SYS_RESOURCE or a matching uid.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass, field

from . import arch, ptrace
from .errors import CoreNotWritten, InternalError, NoSuchProcess
from .inject import syscall, wait_for_interrupt_stop

PAGE = 4096
PROT_READ_WRITE = 0x3
MAP_PRIVATE_ANONYMOUS = 0x22
SCHED_IDLE = 5
PRIO_PROCESS = 0
IOPRIO_WHO_PROCESS = 1
IOPRIO_CLASS_IDLE = 3
RLIMIT_CORE = 4
CLOSE_RANGE_ALL = (1 << 32) - 1

# Layout of the scratch page mapped into the child.
_SIGACTION_AT = 0  # struct kernel_sigaction: handler, flags, restorer, mask (all 0: SIG_DFL)
_SCHED_PARAM_AT = 64  # struct sched_param {0}
_RLIMIT_AT = 128  # struct rlimit {soft, hard}
_PATH_AT = 256  # the staging directory, NUL-terminated


@dataclass
class Child:
    """The child as the tracer sees it; `pid` is in snapcore's pid namespace."""

    pid: int
    notes: list[str] = field(default_factory=list)  # setup steps that failed harmlessly
    alive: bool = True


def prepare(child: Child, at: int, *, core_hard: int, staging: str | None,
            deadline: float) -> None:
    """Make the child harmless and cheap, then wait at a syscall stop for `dump`."""
    pid = child.pid
    wait_for_interrupt_stop(pid, deadline)  # auto-attached children start in an event stop
    base = ptrace.get_regs(pid)

    def call(name: str, *args: int) -> int:
        return syscall(pid, base, at, arch.NR[name], *args, deadline=deadline)[0]

    scratch = call("mmap", 0, PAGE, PROT_READ_WRITE, MAP_PRIVATE_ANONYMOUS, -1, 0)
    if scratch < 0:
        raise InternalError(f"mmap in the snapshot child failed ({scratch})", stage="child")
    page = bytearray(PAGE)
    page[_RLIMIT_AT:_RLIMIT_AT + 16] = core_hard.to_bytes(8, "little") * 2
    if staging:
        path = staging.encode() + b"\0"
        page[_PATH_AT:_PATH_AT + len(path)] = path
    with open(f"/proc/{pid}/mem", "r+b", buffering=0) as mem:
        mem.seek(scratch)
        mem.write(bytes(page))

    # Must succeed, or there is no core (or a core somewhere unexpected).
    required = [
        ("prlimit64", (0, RLIMIT_CORE, scratch + _RLIMIT_AT, 0)),
        ("rt_sigaction", (signal.SIGABRT, scratch + _SIGACTION_AT, 0, 8)),
    ]
    if staging:
        required.append(("chdir", (scratch + _PATH_AT,)))
    for name, args in required:
        ret = call(name, *args)
        if ret < 0:
            raise CoreNotWritten(f"{name} in the snapshot child failed: "
                                 f"{os.strerror(-ret)}", stage="child")

    # Make the child cheap for the machine; each is best effort.
    for name, args in [
        ("sched_setscheduler", (0, SCHED_IDLE, scratch + _SCHED_PARAM_AT)),
        ("setpriority", (PRIO_PROCESS, 0, 19)),
        ("ioprio_set", (IOPRIO_WHO_PROCESS, 0, IOPRIO_CLASS_IDLE << 13)),
    ]:
        ret = call(name, *args)
        if ret < 0:
            child.notes.append(f"{name}: {os.strerror(-ret)}")
    _close_files(pid, call)
    call("munmap", scratch, PAGE)
    try:
        # So the OOM killer takes the child, not the target.  Raising one's own
        # score needs no capability; root may do it from outside.
        with open(f"/proc/{pid}/oom_score_adj", "w") as f:
            f.write("1000")
    except OSError as exc:
        child.notes.append(f"oom_score_adj: {exc.strerror}")


def _close_files(pid: int, call) -> None:
    """Close the child's copies of the target's descriptors: a socket the
    target closes would otherwise stay half-open until the dump ends."""
    ret = call("close_range", 0, CLOSE_RANGE_ALL, 0)
    if ret == 0:
        return
    for fd in sorted(int(n) for n in os.listdir(f"/proc/{pid}/fd")):  # kernels before 5.9
        call("close", fd)


def dump(child: Child, regs: ptrace.Regs, sigmask: int) -> tuple[ptrace.Stop, float]:
    """Give the child the target's registers back and let SIGABRT dump it.

    The signal argument of PTRACE_CONT is ignored at an event or syscall stop,
    so SIGABRT is sent with kill() and passed on from its signal-delivery stop.
    Returns how the child ended and how long the kernel took to write the core.
    """
    pid = child.pid
    ptrace.set_regs(pid, regs)  # the core shows where the target really was
    ptrace.set_sigmask(pid, sigmask & ~(1 << (signal.SIGABRT - 1)))
    os.kill(pid, signal.SIGABRT)
    ptrace.cont(pid)
    while True:
        stop = ptrace.wait(pid, None)
        if stop.kind == "signal" and stop.sig == signal.SIGABRT:
            break
        if stop.kind in ("exited", "killed"):
            child.alive = False
            return stop, 0.0
        ptrace.cont(pid)  # anything else is not for the child: drop it
    started = time.monotonic()
    ptrace.cont(pid, signal.SIGABRT)
    while True:
        stop = ptrace.wait(pid, None)
        if stop.kind in ("exited", "killed"):
            child.alive = False
            return stop, time.monotonic() - started
        ptrace.cont(pid)


def kill(child: Child) -> None:
    """End the child (a private copy: killing it harms no one) and collect it."""
    if not child.alive:
        return
    try:
        os.kill(child.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        while ptrace.wait(child.pid, time.monotonic() + 10).kind not in ("exited", "killed"):
            pass
    except NoSuchProcess:
        pass
    child.alive = False
