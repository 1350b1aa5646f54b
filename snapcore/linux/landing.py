"""Where a held thread goes should snapcore die during an injected call:
back to itself.

A thread that runs a call snapcore injects carries registers and a signal
mask that are not its own until snapcore puts its own back.  Killed in
between (SIGKILL, the OOM killer), snapcore cannot: the kernel detaches the
thread where it stands (kernel/ptrace.c: exit_ptrace).  A landing makes that
moment harmless.  The call runs from a `syscall; ret`, with the stack
pointer at a signal frame that holds the thread's own registers, mask and
FPU state, and whose return address is a restorer (`mov $15, %rax;
syscall`; on arm64 `svc #0; ret` returns to the link register, which the
call's registers set to the restorer, `mov x8, #139; svc #0`).  Let go at
any moment of the call, the thread finishes it, returns into the restorer,
and rt_sigreturn gives it its own state back, as after a signal handler
(arch.signal_frame).  While snapcore lives the landing is never used:
snapcore puts the thread's state back itself.

Two landings:
- in the fork thread's code page once it is planted (arch.FORK_THREAD_RUNNER,
  the frame at FORK_THREAD_FRAME): for the runner's clone;
- on the runner's own stack below its red zone, where the kernel itself puts
  a signal frame, for the calls made before the page exists or that remove
  it, from the target's libc's `syscall; ret` and restorer: only on the
  main thread's [stack] (a goroutine's stack, say, may have no room below);
  the bytes it covers are put back after the call.
Without one (no such code in the target, a compat task, a shadow stack, an
FPU state that does not fit, filters that would refuse the restorer) the
call carries PTRACE_O_EXITKILL instead: snapcore dying then ends the target
rather than let it run on foreign registers (linux/inject.py).

The fork thread's end needs no frame: `exit_site` finds the target's own
thread-exit loop (glibc's __exit_thread: `xor %edi,%edi; mov %edx,%eax;
syscall; jmp back`; musl's __unmapself), so the page's munmap runs from
that `syscall` and the thread's next call is its exit, whatever happens to
snapcore (engine/keeper.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from snapcore.linux import arch, ptrace
from snapcore.linux.inject import SEIZE_OPTIONS, call_regs, finite_deadline, syscall
from snapcore.linux.procfs import find_insn, proc_open

_CODE_LIMIT = 16 << 20  # bytes of one mapping scanned at most


@dataclass(frozen=True)
class Sites:
    """What of the target's own code the landings use (0: not found)."""

    syscall_ret: int = 0  # a `syscall; ret`
    restorer: int = 0  # __restore_rt: `mov $15, %rax; syscall`
    exit_at: int = 0  # a `syscall` after which the thread exits: the end's munmap
    exit_syscall: int = 0  # the exit's own `syscall`
    exit_regs: tuple = ()  # (register, value) pairs that make that exit(0)
    stack: tuple = (0, 0)  # the main thread's [stack] mapping then (it only grows down)
    shadow_stack: bool = False  # rt_sigreturn would want a shadow stack token: no frames


def find(pid: int, status: dict[str, str]) -> Sites:
    """Read the target's vDSO and libc (musl's is its loader) for the sites;
    `status`: its /proc/PID/status, as the preflight read it."""
    found: dict = {}
    with proc_open(f"/proc/{pid}/maps") as f:
        mappings = [line.split() for line in f]
    stack = next((tuple(int(x, 16) for x in m[0].split("-")) for m in mappings
                  if m[-1] == "[stack]"), (0, 0))
    shadow = "shstk" in status.get("x86_Thread_features", "")
    wanted = [m for m in mappings if len(m) > 5 and "x" in m[1]
              and (m[5] == "[vdso]" or "/libc" in m[5] or "/ld-musl" in m[5])]
    try:
        mem = open(f"/proc/{pid}/mem", "rb", buffering=0)
    except OSError:
        return Sites()
    with mem:
        for m in wanted:
            start, end = (int(x, 16) for x in m[0].split("-"))
            try:
                mem.seek(start)
                code = mem.read(min(end - start, _CODE_LIMIT))
            except OSError:
                continue
            _scan(code, start, found)
            if len(found) == 3:
                break
    exit_at, exit_syscall, regs = found.get("exit", (0, 0, ()))
    return Sites(found.get("syscall_ret", 0), found.get("restorer", 0), exit_at,
                 exit_syscall, regs, stack, shadow)


def _scan(code: bytes, start: int, found: dict) -> None:
    if "syscall_ret" not in found:
        at = find_insn(code, arch.SYSCALL_RET)
        if at >= 0:
            found["syscall_ret"] = start + at
    if "restorer" not in found:
        at = find_insn(code, arch.RESTORER)
        if at >= 0:
            found["restorer"] = start + at
    at = -1
    while "exit" not in found:
        at = find_insn(code, arch.SYSCALL_INSN, at + 1)
        if at < 0:
            return
        regs = _exit_registers(code, at + len(arch.SYSCALL_INSN))
        if regs is not None:
            end, settings = regs
            found["exit"] = (start + at, start + end, settings)


def _exit_registers(code: bytes, after: int):
    """(offset of the exit's `syscall`, registers to set) when the code after
    a `syscall` at after-2 reaches exit(0) with registers snapcore can set."""
    reached = arch.run_to_syscall(code, after)
    if reached is None:
        return None
    end, state = reached
    settings: dict[str, int] = {}
    for register, value in ((arch.REG_NR, arch.NR["exit"]), (arch.SYSCALL_ARGS[0], 0)):
        kind, what = state[register]
        if kind == "imm":
            if what != value:
                return None
        elif what in arch.EXIT_NOT_SETTABLE or settings.get(what, value) != value:
            return None
        else:
            settings[what] = value
    return end, tuple(sorted(settings.items()))


@dataclass
class Landing:
    """One landing for one held thread's calls (see above)."""

    site: int  # the `syscall; ret` the calls run from
    frame: int  # the stack pointer during the calls
    data: bytes  # the frame's bytes, written at `frame`
    restorer: int
    stack: bool  # on the thread's own stack (else in the fork thread's page)
    saved: bytes | None = None  # the stack's own bytes there, while the frame is in place
    placed: bool = False  # written already (with the page's contents: one write)

    def allows(self, guard, nr: int, args: tuple) -> bool:
        """Whether the filters let the call run from the site, and the restorer."""
        return guard is None or guard.runs(((nr, args, self.site),
                                            (arch.NR["rt_sigreturn"], (),
                                             self.restorer + arch.RESTORER_SYSCALL)))

    def run(self, thread, nr: int, args: tuple, deadline: float, events: list | None,
            on_clone) -> tuple[int, list]:
        """The call, in held thread `thread` (linux/inject.py: HeldThread.inject).
        Order matters at every step, for a snapcore killed between any two:
        the frame is in place before the registers point at it, and the
        registers are the call's before the mask is (the frame holds the
        thread's own mask); on the way back the mask is the thread's own
        before its registers are, and the stack's bytes go back last."""
        tid = thread.tid
        base = ptrace.copy_regs(thread.regs)
        setattr(base, arch.REG_SP, self.frame)
        if arch.REG_LINK is not None:  # where `ret` returns to (arm64: x30)
            setattr(base, arch.REG_LINK, self.restorer)
        self.place(tid)
        ptrace.set_options(tid, SEIZE_OPTIONS | ptrace.O_TRACECLONE)
        events = [] if events is None else events
        parked = False
        try:
            try:
                ptrace.set_regs(tid, call_regs(base, self.site, nr, args))
                ptrace.set_sigmask(tid, ptrace.ALL_SIGNALS_MASK)
                return syscall(tid, base, self.site, nr, *args, deadline=deadline,
                               events=events, on_clone=on_clone,
                               stops_taken=thread.stops_taken)
            finally:
                thread.park(finite_deadline(deadline), mask_first=True)
                parked = True
        finally:
            if parked:  # else its registers may still need the frame: left below its sp
                self.clear(tid)

    def place(self, tid: int) -> None:
        """Write the frame (keeping the stack's bytes it covers to put back)."""
        if self.placed:
            return
        with open(f"/proc/{tid}/mem", "r+b", buffering=0) as mem:
            if self.stack:
                mem.seek(self.frame)
                self.saved = mem.read(len(self.data))
            mem.seek(self.frame)
            mem.write(self.data)

    def clear(self, tid: int) -> None:
        """Put the stack's bytes back (nothing for a frame in the page)."""
        if self.saved is None:
            return
        with open(f"/proc/{tid}/mem", "r+b", buffering=0) as mem:
            mem.seek(self.frame)
            mem.write(self.saved)
        self.saved = None


def _own_registers(pid: int, thread):
    """The registers the frame gives back: the thread's own, except for a
    restart_syscall about to run (the restart logic already rewound the
    call: rip at its `syscall`, rax the restart's number).  rt_sigreturn
    ends a pending restart (restart_block.fn), so that one would return
    EINTR: the frame has the call itself run again instead (seen under load,
    when a thread just released is interrupted again before it re-enters
    the kernel).  None when that cannot be told apart from a call that
    returned that number, or the call is unknown (orig_rax -1)."""
    regs = thread.regs
    if getattr(regs, arch.REG_NR) != arch.NR["restart_syscall"]:
        return regs
    if getattr(thread, "again", None) is not None:  # arm64: the call before the restart
        return thread.again  # was decided (linux/restart.py), rewound as the kernel left it
    if getattr(regs, arch.REG_ORIG_NR) >> 63:
        return None
    ip = getattr(regs, arch.REG_IP)
    try:
        with open(f"/proc/{pid}/mem", "rb", buffering=0) as mem:
            mem.seek(ip - len(arch.SYSCALL_INSN))
            code = mem.read(2 * len(arch.SYSCALL_INSN))
    except OSError:
        return None
    n = len(arch.SYSCALL_INSN)
    if code[n:] != arch.SYSCALL_INSN or code[:n] == arch.SYSCALL_INSN:
        return None
    again = ptrace.copy_regs(regs)
    setattr(again, arch.REG_NR, getattr(regs, arch.REG_ORIG_NR))
    return again


def _frame_ok(thread, sites: Sites) -> bool:
    """Inside the window: no reading of /proc but for a pending restart
    (rare), each read lengthening the target's pause."""
    regs = thread.saved_regs
    return regs is not None and bool(thread.xstate) and arch.native(regs) and \
        not sites.shadow_stack


def on_stack(pid: int, thread, sites: Sites) -> Landing | None:
    """A landing on the thread's [stack], or None (see above)."""
    if not (sites.syscall_ret and sites.restorer) or not _frame_ok(thread, sites):
        return None
    sp = getattr(thread.regs, arch.REG_SP)
    frame = (sp - arch.RED_ZONE - arch.signal_frame_size(thread.xstate)) & ~63
    start, end = sites.stack
    if not start <= frame < sp < end:
        return None  # not the main thread's stack, or no room below
    own = _own_registers(pid, thread)
    if own is None:
        return None
    return Landing(sites.syscall_ret, frame,
                   arch.signal_frame(own, thread.sigmask, thread.xstate, frame,
                                     sites.restorer), sites.restorer, stack=True)


def in_page(pid: int, thread, page: int, sites: Sites) -> Landing | None:
    """A landing in the fork thread's page, or None (see above)."""
    own = _own_registers(pid, thread) if _frame_ok(thread, sites) else None
    if own is None:
        return None
    frame = page + arch.FORK_THREAD_FRAME
    restorer = page + arch.FORK_THREAD_RESTORER
    data = arch.signal_frame(own, thread.sigmask, thread.xstate, frame, restorer)
    if arch.FORK_THREAD_FRAME + len(data) > arch.PAGE_SIZE:
        return None  # a large FPU state (AMX)
    return Landing(page + arch.FORK_THREAD_RUNNER, frame, data, restorer, stack=False)
