"""linux/ raises errno-level errors; the engine decides what they mean
(engine/kernelerrors.py).  Each linux/ error against the exit code, stage,
message and pid the engine gives it (the messages are the ones the lowest
layers used to raise themselves); then, live, a thread that vanishes under
a raw ptrace call, and a seize of a thread someone already traces.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import time

import pytest

from helpers import process_state, wait_until
from snapcore.engine import kernelerrors
from snapcore.engine.kernelerrors import decided, meaning
from snapcore.errors import (ExitCode, NoSuchProcess, SnapcoreError, Stage, StopTimeout,
                             TargetReplaced)
from snapcore.linux import ptrace, stops
from snapcore.linux.inject import wait_for_interrupt_stop
from snapcore.linux.stops import Execed, SignalStop
from snapcore.linux.ptrace import NotPermitted, PtraceFailed, TaskGone, failed
from snapcore.linux.stops import StopLate

TID = 4321
TIMEOUT_HINT = ("it may be in uninterruptible sleep (D); it is left untouched: try again "
                "later, or allow a longer stop timeout")

CASES = [
    # (the linux/ error, its class, exit code, stage, message, hint)
    (failed(errno.ESRCH, TID, "getregset"), "NoSuchProcess", ExitCode.NO_SUCH_PROCESS, "",
     f"thread {TID} is gone or not stopped (getregset)", ""),
    (failed(errno.ESRCH, TID, ptrace.RSEQ), "NoSuchProcess", ExitCode.NO_SUCH_PROCESS, "",
     f"thread {TID} is gone or not stopped (rseq)", ""),
    (TaskGone(errno.EPERM, TID, "seize", exiting=True), "NoSuchProcess",
     ExitCode.NO_SUCH_PROCESS, "", f"thread {TID} exited while snapcore attached to it", ""),
    (TaskGone(errno.ECHILD, TID, "wait"), "NoSuchProcess", ExitCode.NO_SUCH_PROCESS, "",
     f"thread {TID} is no longer traced", ""),
    (TaskGone(None, TID, "wait", ended=True), "NoSuchProcess", ExitCode.NO_SUCH_PROCESS, "",
     f"thread {TID} ended", ""),
    (TaskGone(None, TID, "syscall", ended=True), "NoSuchProcess", ExitCode.NO_SUCH_PROCESS,
     "inject", f"thread {TID} exited during an injected syscall", ""),
    (TaskGone(None, TID, "interrupt", ended=True), "NoSuchProcess", ExitCode.NO_SUCH_PROCESS,
     "", f"thread {TID} exited", ""),
    (TaskGone(None, TID, "capture", ended=True), "NoSuchProcess", ExitCode.NO_SUCH_PROCESS,
     "capture", f"process {TID} exited", ""),
    (Execed(TID, "syscall"), "TargetReplaced", ExitCode.NO_SUCH_PROCESS, "inject",
     f"thread {TID} exec'd a new program", ""),
    (Execed(TID, "interrupt"), "TargetReplaced", ExitCode.NO_SUCH_PROCESS, "capture",
     f"process of thread {TID} exec'd a new program", "nothing was done to it; try again"),
    (failed(errno.EPERM, TID, "setregset"), "PermissionDenied", ExitCode.PERMISSION, "",
     f"not permitted to trace {TID} (setregset)", "run as root or with CAP_SYS_PTRACE"),
    (NotPermitted(errno.EPERM, TID, "seize", tracer=77, tracer_name="gdb"), "AlreadyTraced",
     ExitCode.BUSY, "", f"thread {TID} is already traced by 77 (gdb)",
     "busy: wait until that tracer is done (another snapcore, gdb or strace)"),
    (NotPermitted(errno.EPERM, TID, "seize", tracer=77), "AlreadyTraced", ExitCode.BUSY, "",
     f"thread {TID} is already traced by 77 (?)",
     "busy: wait until that tracer is done (another snapcore, gdb or strace)"),
    (NotPermitted(errno.EACCES, TID, ptrace.SECCOMP_FILTER, 0), "PermissionDenied",
     ExitCode.PERMISSION, "", f"cannot read the seccomp filters of {TID}",
     "run as root with CAP_SYS_ADMIN"),
    (failed(errno.EPERM, TID, ptrace.SECCOMP_FILTER, 0), "PermissionDenied",
     ExitCode.PERMISSION, "", f"cannot read the seccomp filters of {TID}",
     "run as root with CAP_SYS_ADMIN"),
    (failed(errno.EINVAL, TID, ptrace.SECCOMP_FILTER, 3), "InternalError", ExitCode.ERROR, "",
     f"reading seccomp filter 3 of {TID} failed: Invalid argument", ""),
    (failed(errno.EFAULT, TID, ptrace.RSEQ), "InternalError", ExitCode.ERROR, "",
     f"ptrace rseq configuration of {TID} failed: Bad address", ""),
    (failed(errno.EIO, TID, "getsigmask"), "InternalError", ExitCode.ERROR, "",
     f"ptrace getsigmask on {TID} failed: Input/output error", ""),
    # EACCES to a seize (an LSM's refusal) means what it meant before: a failure unforeseen
    (failed(errno.EACCES, TID, "seize"), "InternalError", ExitCode.ERROR, "",
     f"ptrace seize on {TID} failed: Permission denied", ""),
    (StopLate(TID), "StopTimeout", ExitCode.TIMEOUT, "",
     f"thread {TID} did not stop in time", TIMEOUT_HINT),
    (SignalStop(TID, "interrupt", signal.SIGSTOP), "Unsupported", ExitCode.UNSUPPORTED, "",
     f"thread {TID} was stopped by signal {int(signal.SIGSTOP)} meanwhile",
     "it must stay stopped; try again once it runs"),
    (SignalStop(TID, "syscall", signal.SIGSEGV), "InternalError", ExitCode.ERROR, "inject",
     f"thread {TID} got signal {int(signal.SIGSEGV)} during an injected syscall", ""),
    (SignalStop(TID, "inject", signal.SIGUSR1), "Unsupported", ExitCode.UNSUPPORTED, "inject",
     f"signal {int(signal.SIGUSR1)} reached thread {TID} while it was held",
     "it was delivered at the release, as the kernel would have; try again"),
]


@pytest.mark.unit
@pytest.mark.parametrize("error, kind, code, stage, message, hint", CASES,
                         ids=[f"{type(c[0]).__name__}-{c[0].request}-{c[0].errno}"
                              for c in CASES])
def test_each_linux_error_means_what_it_meant(error, kind, code, stage, message, hint):
    said = meaning(error)
    assert isinstance(said, SnapcoreError) and type(said).__name__ == kind
    doc = said.as_dict()
    assert (doc["exit_code"], doc["stage"], doc["message"], doc["hint"], doc["pid"]) == \
        (code, stage, message, hint, TID)
    if kind == "StopTimeout":
        assert said.setting == "timeout"  # the hint names the setting it is about


@pytest.mark.unit
def test_errno_level_errors_are_the_oserrors_they_are():
    gone, refused, other = (failed(code, TID, "cont") for code in
                            (errno.ESRCH, errno.EPERM, errno.EIO))
    assert isinstance(gone, ProcessLookupError) and isinstance(refused, PermissionError)
    assert type(other) is PtraceFailed and isinstance(other, OSError)
    assert (gone.errno, gone.tid, gone.request) == (errno.ESRCH, TID, "cont")
    assert isinstance(StopLate(TID), TimeoutError) and StopLate(TID).errno == errno.ETIMEDOUT
    # An exec is the program gone: whoever waits for a gone thread sees it.
    assert isinstance(Execed(TID, "syscall"), TaskGone)
    assert isinstance(meaning(Execed(TID, "syscall")), NoSuchProcess)


@pytest.mark.unit
def test_decided_translates_at_a_phase_entry_and_passes_the_rest():
    @decided
    def phase(error):
        raise error

    with pytest.raises(TargetReplaced) as caught:
        phase(Execed(TID, "interrupt"))
    assert caught.value.stage == Stage.CAPTURE and caught.value.__cause__ is None
    engine_own = NoSuchProcess("snapshot child 5 exited", pid=5)
    with pytest.raises(NoSuchProcess) as caught:
        phase(engine_own)
    assert caught.value is engine_own  # the engine's own errors are left as they are
    with pytest.raises(FileNotFoundError):  # so is anything that is not linux/'s ptrace
        phase(FileNotFoundError(errno.ENOENT, "gone"))
    with pytest.raises(StopTimeout):
        with kernelerrors.decided:
            raise StopLate(TID)


def _held_sleeper() -> subprocess.Popen:
    proc = subprocess.Popen(["sleep", "60"])
    wait_until(lambda: process_state(proc.pid) == "S", "the sleeper sleeps")
    return proc


def test_a_thread_that_vanishes_under_a_raw_ptrace_call_is_task_gone():
    """Seized and stopped, the thread answers; killed (its end not yet
    collected: a zombie is in no ptrace stop), the same request is ESRCH,
    raised by linux/ptrace.py as TaskGone, which the engine says is exit 3."""
    proc = _held_sleeper()
    try:
        with stops.signals_held([signal.SIGCHLD]):
            ptrace.seize(proc.pid)
            ptrace.interrupt(proc.pid)
            wait_for_interrupt_stop(proc.pid, time.monotonic() + 10)
            assert ptrace.get_regs(proc.pid) is not None  # stopped: it answers
            os.kill(proc.pid, signal.SIGKILL)
            wait_until(lambda: process_state(proc.pid) == "Z", "the thread is a zombie")
            with pytest.raises(TaskGone) as caught:
                ptrace.get_regs(proc.pid)
    finally:
        proc.kill()
        proc.wait()
    gone = caught.value
    assert (gone.errno, gone.tid, gone.request) == (errno.ESRCH, proc.pid, "getregset")
    assert type(gone).__module__ == "snapcore.linux.ptrace"
    said = meaning(gone)
    assert said.exit_code == ExitCode.NO_SUCH_PROCESS and said.pid == proc.pid
    assert said.message == f"thread {proc.pid} is gone or not stopped (getregset)"


def test_a_thread_someone_traces_is_not_permitted_and_names_its_tracer():
    """A second seize of a traced thread is EPERM; the tracer (this test)
    comes with it, and the engine says "busy" (exit 5), not "run as root".
    Its end (SIGKILL) ends the tracing too."""
    proc = _held_sleeper()
    try:
        with stops.signals_held([signal.SIGCHLD]):
            ptrace.seize(proc.pid)
            with pytest.raises(NotPermitted) as caught:
                ptrace.seize(proc.pid)
    finally:
        proc.kill()
        proc.wait()
    refused = caught.value
    assert (refused.errno, refused.request, refused.tracer) == (errno.EPERM, "seize",
                                                                os.getpid())
    said = meaning(refused)
    assert said.exit_code == ExitCode.BUSY
    assert said.message.startswith(f"thread {proc.pid} is already traced by {os.getpid()} (")
