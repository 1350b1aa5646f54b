"""Is it still the process that was checked?  What the stop window verifies
once the target's threads are held.
"""

from __future__ import annotations

import signal

from snapcore.engine.kernelerrors import decided
from snapcore.engine.plan import Plan
from snapcore.errors import NoSuchProcess, Stage, TargetReplaced, Unsupported
from snapcore.linux import arch, ptrace
from snapcore.linux.procfs import is_syscall_instruction, mm_fingerprint


def identity_check(plan: Plan, pidfd: int, stage: Stage):
    """What every stop of the target checks once its threads are held: the
    same process (pidfd), still 64-bit, the same program (no exec since the
    preflight: the same memory layout), `syscall` still at the address the
    seccomp filters were judged at."""
    target, at = plan.target, plan.syscall_at

    @decided  # runs inside the window, whose caller decides too: said here all the same
    def check(tid: int) -> None:
        try:
            signal.pidfd_send_signal(pidfd, 0)
        except ProcessLookupError:
            raise NoSuchProcess(f"process {target.pid} exited", "nothing to snapshot",
                                pid=target.pid, stage=stage) from None
        if ptrace.regs_size(tid) != arch.REGS_SIZE:
            raise Unsupported(f"process {target.pid} ({target.name}) is not a 64-bit "
                              "process", f"snapcore supports 64-bit {arch.NAME} processes only",
                              pid=target.pid, stage=stage)
        try:
            same = mm_fingerprint(target.pid) == plan.fingerprint
        except OSError:
            same = False
        if not same or not is_syscall_instruction(target.pid, at):
            raise TargetReplaced(f"process {target.pid} exec'd a new program since it "
                                 "was checked", "nothing was done to it; try again",
                                 pid=target.pid, stage=stage)
    return check
