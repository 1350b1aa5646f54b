"""A thread inside an rseq critical section must get the abort the kernel owes
it: snapcore never lets an injected syscall cancel it (snapcore/rseq.py)."""

from __future__ import annotations

import pytest

from conftest import compile_target, run_snapcore


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
    assert [x for x in victim.lines() if x.startswith("VIOLATION rseq")] == []
    victim.assert_unharmed()
