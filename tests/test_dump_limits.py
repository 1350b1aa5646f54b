"""An idle-priority dump on a saturated machine: escalation and the time limit."""

from __future__ import annotations

import os

import pytest

from snapcore.errors import ExitCode

from conftest import run_snapcore, snap_json
from helpers import cores_in


@pytest.fixture
def busy_machine(start_victim):
    """Twice as many spinning processes as CPUs: a SCHED_IDLE task barely runs."""
    return [start_victim("busy") for _ in range(2 * os.cpu_count())]


def test_stalled_dump_is_raised_to_normal_priority(start_victim, busy_machine, out_dir):
    victim = start_victim("fat")
    code, doc = snap_json("--stall-timeout", "0.3", "-o", str(out_dir), str(victim.pid))
    assert code == 0, doc
    assert doc["escalated_after_s"] is not None and doc["escalated_after_s"] >= 0.3
    assert any("raised to normal priority at nice 19" in n for n in doc["notes"])
    victim.wait_for_heartbeats(victim.heartbeats())
    victim.assert_unharmed()


def test_dump_longer_than_max_dump_time_is_killed(start_victim, busy_machine, out_dir):
    victim = start_victim("fat")
    proc = run_snapcore("--stall-timeout", "0", "--max-dump-time", "0.3", "-o", str(out_dir),
                        str(victim.pid))
    assert proc.returncode == ExitCode.CORE_NOT_WRITTEN, proc.stderr
    assert "longer than the longest dump allowed" in proc.stderr and "(--max-dump-time)" in proc.stderr
    assert not out_dir.exists() or cores_in(out_dir) == []
    victim.wait_for_heartbeats(victim.heartbeats())
    victim.assert_unharmed()  # the killed child is reaped: no zombie
