"""A thread inside an rseq critical section must get the abort the kernel owes
it: snapcore never lets an injected syscall cancel it (snapcore/linux/rseq.py).

The target (tests/targets/rseq.c) reads rseq_cs as its section's last load
before the commit: a commit that saw it cleared is a thread put back inside a
section the kernel had seen it leave, the one way a tracer cancels the abort.
The second test plays that wrong tracer, so the first one can fail."""

from __future__ import annotations

import signal
import time

import pytest

from conftest import compile_target, run_snapcore
from snapcore.linux import arch, ptrace, rseq, stops
from snapcore.linux.inject import wait_for_interrupt_stop


def _violations(victim) -> list[str]:
    return [x for x in victim.lines() if x.startswith("VIOLATION")]


@pytest.mark.slow
def test_rseq_critical_section_is_aborted_not_committed(build_dir, start_victim, out_dir):
    exe = compile_target(build_dir, "rseq")
    # Single-threaded and always busy in its critical section: the injected
    # calls can only run in this thread, nearly always from inside the section.
    victim = start_victim("rseq", exe=exe)
    for _ in range(10):
        proc = run_snapcore("--max-per-hour", "0", "-q", "-o", str(out_dir), str(victim.pid))
        assert proc.returncode == 0, proc.stderr
    victim.wait_for_heartbeats(victim.heartbeats())
    assert _violations(victim) == []
    victim.assert_unharmed()


def _stop(tid: int) -> ptrace.Regs:
    ptrace.interrupt(tid)
    wait_for_interrupt_stop(tid, time.monotonic() + 10)
    return ptrace.get_regs(tid)


def test_a_tracer_that_resumes_a_thread_outside_its_section_is_caught(build_dir,
                                                                     start_victim):
    """What snapcore must not do, done on purpose: stop the thread inside its
    section, let it run a moment outside (the kernel clears rseq_cs on the way
    back to user space), put its registers back inside, let it go.  The
    target must report the commit."""
    exe = compile_target(build_dir, "rseq")
    victim = start_victim("rseq", exe=exe)
    outside = next(int(x.split()[2], 16) for x in victim.lines()
                   if x.startswith("rseq outside_spin "))
    with stops.signals_held([signal.SIGCHLD]):
        ptrace.seize(victim.pid)
        try:
            for _ in range(1000):
                regs = _stop(victim.pid)
                if rseq.abort_ip(victim.pid, getattr(regs, arch.REG_IP)) is not None:
                    break
                ptrace.cont(victim.pid)
            else:
                _stop(victim.pid)  # stopped, so that it can be let go
                pytest.fail("the target was never stopped inside its section")
            inside = ptrace.copy_regs(regs)
            setattr(regs, arch.REG_IP, outside)
            ptrace.set_regs(victim.pid, regs)
            ptrace.cont(victim.pid)
            time.sleep(0.05)  # in outside_spin: back in user space once at least
            assert getattr(_stop(victim.pid), arch.REG_IP) == outside
            ptrace.set_regs(victim.pid, inside)
        finally:
            ptrace.detach(victim.pid)
    deadline = time.monotonic() + 10
    while not _violations(victim):
        assert time.monotonic() < deadline, f"the commit went unseen: {victim.lines()[-3:]}"
        time.sleep(0.02)
    assert _violations(victim)[0].startswith("VIOLATION rseq commit with rseq_cs 0, ")
