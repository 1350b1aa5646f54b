"""The dump's priority on a busy machine: stepped up only when it would not
finish in time or its copies eat the memory promised; the time limit."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from snapcore.errors import ExitCode

from conftest import compile_target, run_snapcore, snap_json
from helpers import cores_in

@pytest.fixture
def busy_machine(start_victim):
    """Twice as many spinning processes as CPUs: a SCHED_IDLE task barely runs."""
    return [start_victim("busy") for _ in range(2 * os.cpu_count())]


@pytest.fixture(scope="session")
def busyheap_exe(build_dir):
    return compile_target(build_dir, "busyheap")


@pytest.mark.slow
def test_saturated_machine_steps_the_dump_up_and_completes(start_victim, busyheap_exe,
                                                          busy_machine, out_dir):
    # 256 MB, two spinning threads of its own, four more hogs, two CPUs:
    # at SCHED_IDLE this dump used to take minutes.
    victim = start_victim("spin", exe=busyheap_exe, args=("256", "2"))
    code, doc = snap_json("-o", str(out_dir), str(victim.pid))
    assert code == 0, doc
    steps = doc["priority_steps"]
    assert steps and steps[0]["from"] == "idle" and "deadline" in steps[0]["why"], steps
    assert all(s["to"].startswith("nice ") for s in steps)
    assert int(steps[-1]["to"].split()[1]) >= 0  # never above the target (nice 0)
    assert doc["core"]["allocated"] >= 256 << 20  # complete: the whole heap is in it
    record = (Path(doc["core"]["record"])).read_text()
    assert '"priority_steps"' in record and steps[0]["why"] in record
    verbose = run_snapcore("-v", "--force", "rate-limit", "-o", str(out_dir), str(victim.pid))
    assert verbose.returncode == 0 and re.search(r"^priority +at \d+\.\d s, idle -> nice 19: ",
                                                 verbose.stdout, re.M), verbose.stdout
    victim.assert_unharmed()


def test_idle_machine_never_steps_up(start_victim, busyheap_exe, out_dir):
    victim = start_victim("spin", exe=busyheap_exe, args=("64", "0"))
    code, doc = snap_json("-o", str(out_dir), str(victim.pid))
    assert code == 0 and doc["priority_steps"] == [], doc
    victim.assert_unharmed()


def test_copy_on_write_pressure_steps_the_dump_up(start_victim, busyheap_exe, busy_machine,
                                                 cgroup, out_dir):
    # A target rewriting its whole heap during the dump, in a memory cgroup
    # (v1) whose room is less than twice its heap: the copies pass half the room.
    memory_cgroup = cgroup("memory")
    victim = start_victim("rewrite", exe=busyheap_exe, args=("64", "1"))
    (memory_cgroup / "cgroup.procs").write_text(str(victim.pid))
    used = int((memory_cgroup / "memory.usage_in_bytes").read_text())
    (memory_cgroup / "memory.limit_in_bytes").write_text(str(used + (100 << 20)))
    code, doc = snap_json("-o", str(out_dir), str(victim.pid))
    assert code == 0, doc
    memory = [s for s in doc["priority_steps"] if "copy-on-write copies" in s["why"]]
    assert memory and memory[0]["from"] == "idle", doc["priority_steps"]
    victim.assert_unharmed()


def test_dump_longer_than_max_dump_time_is_killed(start_victim, busyheap_exe, busy_machine,
                                                  out_dir):
    victim = start_victim("spin", exe=busyheap_exe, args=("256", "0"))  # not done in 0.3 s
    proc = run_snapcore("--dump-deadline", "0", "--max-dump-time", "0.3", "-o", str(out_dir),
                        str(victim.pid))
    assert proc.returncode == ExitCode.CORE_NOT_WRITTEN, proc.stderr
    assert "longer than the longest dump allowed" in proc.stderr and \
        "(--max-dump-time)" in proc.stderr
    assert not out_dir.exists() or cores_in(out_dir) == []
    victim.wait_for_heartbeats(victim.heartbeats())
    victim.assert_unharmed()  # the killed child is reaped: no zombie
