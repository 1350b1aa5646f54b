"""Is it still the process that was checked?  What every stop of the target
verifies once its threads are held, and the one second stop there can be:
reaping a child made with CLONE_PARENT (engine/fork.py).
"""

from __future__ import annotations

import signal

from snapcore.engine import fork as forkmod
from snapcore.engine import preflight
from snapcore.errors import NoSuchProcess, SnapcoreError, Stage, StopTimeout, Unsupported
from snapcore.linux import arch, ptrace
from snapcore.linux.inject import TargetReplaced
from snapcore.linux.procfs import is_syscall_instruction, mm_fingerprint
from snapcore.linux.window import run_in_target


def identity_check(pre: preflight.Preflight, pidfd: int, stage: Stage):
    """What every stop of the target checks once its threads are held: the
    same process (pidfd), still 64-bit, the same program (no exec since the
    preflight: the same memory layout), `syscall` still at the address the
    seccomp filters were judged at."""
    target, at = pre.target, pre.syscall_at

    def check(tid: int) -> None:
        try:
            signal.pidfd_send_signal(pidfd, 0)
        except ProcessLookupError:
            raise NoSuchProcess(f"process {target.pid} exited", "nothing to snapshot",
                                pid=target.pid, stage=stage) from None
        if ptrace.regs_size(tid) != arch.REGS_SIZE:
            raise Unsupported(f"process {target.pid} ({target.name}) is not a 64-bit "
                              "process", "snapcore supports 64-bit x86_64 processes only",
                              pid=target.pid, stage=stage)
        try:
            same = mm_fingerprint(target.pid) == pre.fingerprint
        except OSError:
            same = False
        if not same or not is_syscall_instruction(target.pid, at):
            raise TargetReplaced(f"process {target.pid} exec'd a new program since it "
                                 "was checked", "nothing was done to it; try again",
                                 pid=target.pid, stage=stage)
    return check


def reap_adopted(pre: preflight.Preflight, pidfd: int, ns_pid: int, guard,
                 stop_timeout: float, notes: list[str]) -> float:
    """Reap a child made with CLONE_PARENT (see fork.py) from inside the
    target: the one case where snapcore stops the target a second time.  The
    same identity checks as the first window: a target that exec'd, exited,
    is stopped or traced by someone else meanwhile is left alone, and the
    child stays a zombie that only __WALL waits can see.

    One attempt, with three times the stop timeout: a thread that did not stop
    stays seized until snapcore exits, so a second attempt could only fail."""
    pid = pre.target.pid
    left = "it stays a zombie that only __WALL waits see"
    try:
        result, pause = run_in_target(pid, pre.syscall_at, arch.NR["wait4"], ns_pid, 0,
                                      forkmod.REAP_OPTIONS, 0, timeout=3 * stop_timeout,
                                      check=identity_check(pre, pidfd, Stage.REAP),
                                      guard=guard)
    except TargetReplaced as exc:
        notes.append(f"the snapshot child {ns_pid} was not reaped: {exc.message}; {left}")
        return 0.0
    except NoSuchProcess:
        return 0.0  # the target is gone, and its namespace with the child
    except StopTimeout:
        notes.append(f"the snapshot child {ns_pid} was not reaped: the target did not "
                     f"stop; {left}")
        return 0.0
    except SnapcoreError as exc:
        notes.append(f"the snapshot child {ns_pid} was not reaped ({exc.message}); {left}")
        return 0.0
    if result != ns_pid:
        notes.append(f"wait4 in the target for the snapshot child returned {result}")
    return pause
