"""Every thread of the target in the core, with its own registers and FP state."""

from __future__ import annotations

import os
import platform
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from conftest import gdb_per_thread, gdb_threads, snap_json
from helpers import prstatus_pids, wait_until

# The writer is the point here: core_pattern a file for every test (the
# kernel's writer, and what `auto` picks, the same on any host), and each
# writer named where both are tested.
pytestmark = pytest.mark.usefixtures("file_core_pattern")

EIGHT = ["main_sleeper", "sleeper_thread", "condvar_thread", "pipe_reader_thread",
         "busy_thread", "mutex_holder_thread", "mutex_waiter_thread", "xmm_thread"]


def task_ids(pid: int) -> list[int]:
    return sorted(int(t) for t in os.listdir(f"/proc/{pid}/task"))


def announced(victim) -> dict[str, int]:
    """Thread name -> tid, as the target itself reported them."""
    return {line.split()[1]: int(line.split()[2]) for line in victim.lines()
            if line.startswith("thread ")}


@pytest.mark.parametrize("writer", ["kernel", "snapcore"])
def test_eight_threads_each_in_core_where_it_was(writer, start_victim, threads_exe, out_dir):
    victim = start_victim("eight", exe=threads_exe)
    tids = announced(victim)
    assert sorted(tids) == sorted(EIGHT)

    code, doc = snap_json("--writer", writer, "-o", str(out_dir), str(victim.pid))

    assert code == 0, doc
    assert doc["threads"] == 8
    assert sorted(t["tid"] for t in doc["thread_map"]) == sorted(tids.values())
    core = Path(doc["core"]["path"])
    assert sorted(prstatus_pids(core)) == sorted(tids.values())
    # gdb lists each thread once, under the target's own LWP, with registers.
    assert sorted(gdb_threads(threads_exe, core)) == sorted(tids.values())
    stacks = gdb_per_thread(threads_exe, core, "bt")
    for name, tid in tids.items():
        stack = stacks[tid]
        assert "Couldn't find" not in stack and "<unavailable>" not in stack, stack
        function = "busy_thread_loop" if name == "busy_thread" else name
        assert function in stack, f"{name} (LWP {tid}):\n{stack}"
    assert "pthread_cond_wait" in stacks[tids["condvar_thread"]]
    assert "read" in stacks[tids["pipe_reader_thread"]]
    assert "lock" in stacks[tids["mutex_waiter_thread"]]
    pcs = gdb_per_thread(threads_exe, core, "info symbol $pc")
    assert "busy_thread_loop" in pcs[tids["busy_thread"]], pcs[tids["busy_thread"]]
    # SSE state survives: xmm0 of the spinning thread holds its constant.
    xmm = gdb_per_thread(threads_exe, core, "p/x $v0.d.u[0]" if platform.machine() == "aarch64"
                         else "p/x $xmm0.v2_int64[0]")  # arm64: its v0, with the same value
    assert "0x1122334455667788" in xmm[tids["xmm_thread"]], xmm[tids["xmm_thread"]]
    victim.wait_for_heartbeats(victim.heartbeats())
    victim.assert_unharmed()


def test_threads_main_dumps_only_the_main_thread(start_victim, threads_exe, out_dir):
    victim = start_victim("eight", exe=threads_exe)
    code, doc = snap_json("--threads", "main", "-o", str(out_dir), str(victim.pid))
    assert code == 0, doc
    assert doc["threads"] == 1
    assert doc["thread_map"][0]["tid"] == victim.pid
    assert prstatus_pids(Path(doc["core"]["path"])) == [victim.pid]
    victim.wait_for_heartbeats(victim.heartbeats())
    victim.assert_unharmed()


def test_thread_churn_neither_hangs_nor_leaves_threads_stopped(start_victim, threads_exe,
                                                               out_dir):
    victim = start_victim("churn", exe=threads_exe)
    for _ in range(5):
        code, doc = snap_json("-o", str(out_dir), "--max-per-hour", "0", str(victim.pid))
        assert code == 0, doc
        assert doc["threads"] >= 1
        victim.assert_unharmed()
    beats = victim.heartbeats()
    victim.wait_for_heartbeats(beats)
    victim.assert_unharmed()


def test_five_hundred_threads_all_in_core(start_victim, threads_exe, out_dir):
    victim = start_victim("many", exe=threads_exe, args=("500",))
    wait_until(lambda: len(task_ids(victim.pid)) == 501, "all 500 threads exist")
    tids = task_ids(victim.pid)
    assert len(tids) == 501

    code, doc = snap_json("-o", str(out_dir), str(victim.pid))

    assert code == 0, doc
    assert doc["threads"] == 501
    assert sorted(prstatus_pids(Path(doc["core"]["path"]))) == tids
    # The point: let time pass.  Each sleeper sleeps 100 ms at a time; in
    # 0.5 s every one wakes at least once more and checks for EINTR.
    time.sleep(0.5)
    victim.wait_for_heartbeats(victim.heartbeats())
    victim.assert_unharmed()


def test_target_in_its_own_pid_namespace(threads_exe, tmp_path, out_dir):
    """A container's pids: the core must name the threads as the process knows
    them (pid 1 and up), and the child must be reaped under its namespace pid."""
    report = tmp_path / "report.txt"
    outer = subprocess.Popen(["unshare", "--pid", "--fork", "--kill-child", "--mount-proc",
                              str(threads_exe), "eight", str(report)], stdout=subprocess.PIPE)
    try:
        assert outer.stdout.readline() == b"ready\n"
        pid = psutil.Process(outer.pid).children()[0].pid  # unshare forks the target
        inside = {name: tid for name, tid in
                  (line.split()[1:] for line in report.read_text().splitlines()
                   if line.startswith("thread "))}
        assert inside["main_sleeper"] == "1"

        code, doc = snap_json("-o", str(out_dir), str(pid))

        assert code == 0, doc
        core = Path(doc["core"]["path"])
        assert sorted(prstatus_pids(core)) == sorted(int(t) for t in inside.values())
        assert sorted(gdb_threads(threads_exe, core)) == sorted(int(t) for t in
                                                               inside.values())
        stacks = gdb_per_thread(threads_exe, core, "bt")
        assert "mutex_waiter_thread" in stacks[int(inside["mutex_waiter_thread"])]
        assert {t["core_lwp"] for t in doc["thread_map"]} == {int(t) for t in
                                                              inside.values()}
        wait_until(lambda: psutil.Process(pid).children() == [],
                   "the snapshot child is reaped inside the namespace")
        assert "TracerPid:\t0" in Path(f"/proc/{pid}/status").read_text()
        assert "VIOLATION" not in report.read_text()
    finally:
        # unshare forwards SIGTERM to the namespace's init, which ignores it;
        # SIGKILL ends unshare, and --kill-child takes the target with it.
        outer.kill()
        outer.wait()
