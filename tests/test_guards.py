"""Guard rails: each preflight check against a real target in the matching
condition, the faults a snapshot must survive, and `snapcore check`."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from snapcore.engine import preflight
from snapcore.engine.ratelimit import RateLimiter, program
from snapcore.linux import procfs
from snapcore.engine.request import Request
from snapcore.engine.snapshot import take
from snapcore.errors import ExitCode, SnapcoreError

from conftest import (cgroup_hierarchies, cgroup_root, run_snapcore, snap_json,
                      wait_until_catching)
from helpers import (check_json, cores_in, in_fork, process_state, prstatus_pids, verdicts,
                     wait_until)


def test_check_on_a_healthy_target_says_go(start_victim, out_dir):
    victim = start_victim("sleep")
    code, doc = check_json("-o", str(out_dir), str(victim.pid))
    assert code == 0 and doc["would_snapshot"] is True
    assert set(verdicts(doc)) == set(preflight.CHECKS)
    assert set(verdicts(doc).values()) == {"ok"}
    assert doc["core_estimate"] > 0
    assert not out_dir.exists()  # check writes nothing
    victim.assert_unharmed()
    human = run_snapcore("check", "-o", str(out_dir), str(victim.pid))
    assert human.returncode == 0 and "a snapshot would go ahead" in human.stdout


def test_check_exit_code_is_the_refusals(start_victim, out_dir):
    victim = start_victim("sleep")
    os.kill(victim.pid, signal.SIGSTOP)
    try:
        code, doc = check_json("-o", str(out_dir), str(victim.pid))
        assert code == ExitCode.UNSUPPORTED and doc["would_snapshot"] is False
        assert verdicts(doc)["state"] == "refuse"
    finally:
        os.kill(victim.pid, signal.SIGCONT)


def test_non_dumpable_root_target_is_caught_in_the_child(start_victim, out_dir):
    victim = start_victim("nodump")
    proc = run_snapcore("-o", str(out_dir), str(victim.pid))
    assert proc.returncode == ExitCode.CORE_NOT_WRITTEN, proc.stderr
    assert "non-dumpable" in proc.stderr and "--force dumpable" in proc.stderr
    assert not out_dir.exists() or cores_in(out_dir) == []
    victim.wait_for_heartbeats(victim.heartbeats())
    victim.assert_unharmed()  # the child is gone and reaped


@pytest.mark.parametrize("user", [None, "nobody"])
def test_forced_non_dumpable_target_gives_a_core_and_keeps_its_flag(user, start_victim,
                                                                   out_dir):
    """--force dumpable makes only the child dumpable: a core, and the process
    itself stays non-dumpable (its /proc files stay root's)."""
    victim = start_victim("nodump", user=user)
    code, doc = snap_json("--force", "dumpable", "-o", str(out_dir), str(victim.pid))
    assert code == 0, doc
    assert Path(doc["core"]["path"]).stat().st_size > 0
    if user:
        assert os.stat(f"/proc/{victim.pid}/stat").st_uid == 0  # still non-dumpable
    victim.wait_for_heartbeats(victim.heartbeats())
    victim.assert_unharmed()


def test_non_dumpable_target_of_another_user_is_refused_before(start_victim, out_dir):
    victim = start_victim("nodump", user="nobody")
    code, doc = check_json("-o", str(out_dir), str(victim.pid))
    assert code == ExitCode.CORE_NOT_WRITTEN and verdicts(doc)["dumpable"] == "refuse"
    victim.assert_unharmed()


def test_uninterruptible_sleep_times_out_and_leaves_target_alone(start_victim, out_dir):
    victim = start_victim("vfork")  # its main thread waits for a vfork child: state D
    wait_until(lambda: process_state(victim.pid) == "D", "the main thread waits in D")
    code, doc = check_json("-o", str(out_dir), str(victim.pid))
    assert verdicts(doc)["state"] == "warn", doc
    started = time.monotonic()
    proc = run_snapcore("--timeout", "0.5", "-o", str(out_dir), str(victim.pid))
    assert proc.returncode == ExitCode.TIMEOUT, proc.stderr
    assert "did not stop in time" in proc.stderr and time.monotonic() - started < 2.5
    victim.wait_for_heartbeats(0, timeout=10)  # the vfork child ended; it runs on
    victim.assert_unharmed()


@pytest.fixture
def tiny_fs(tmpfs):
    return tmpfs("2m")


def test_no_room_on_disk_is_refused(start_victim, tiny_fs):
    victim = start_victim("fat")  # a core of 24 MiB
    proc = run_snapcore("-o", str(tiny_fs / "cores"), str(victim.pid))
    assert proc.returncode == ExitCode.OUTPUT, proc.stderr
    assert "the core needs about" in proc.stderr and "--force disk" in proc.stderr
    victim.assert_unharmed()


def test_disk_filling_during_the_dump_ends_cleanly(start_victim, tiny_fs):
    victim = start_victim("fat")
    proc = run_snapcore("--force", "disk", "-o", str(tiny_fs / "cores"), str(victim.pid))
    assert proc.returncode == ExitCode.CORE_NOT_WRITTEN, proc.stderr
    assert "full" in proc.stderr or "truncated" in proc.stderr, proc.stderr
    assert cores_in(tiny_fs / "cores") == []  # the staging directory is gone too
    victim.wait_for_heartbeats(victim.heartbeats())
    victim.assert_unharmed()


@pytest.fixture
def strict_overcommit():
    """vm.overcommit_memory=2 with 512 MiB left to commit; always restored."""
    files = {name: Path(f"/proc/sys/vm/{name}") for name in
             ("overcommit_memory", "overcommit_kbytes", "overcommit_ratio")}
    saved = {name: f.read_text() for name, f in files.items()}

    def tighten():
        committed = next(int(line.split()[1]) for line in
                         Path("/proc/meminfo").read_text().splitlines()
                         if line.startswith("Committed_AS:"))
        files["overcommit_kbytes"].write_text(str(committed + 512 * 1024))
        files["overcommit_memory"].write_text("2")

    yield tighten
    files["overcommit_memory"].write_text(saved["overcommit_memory"])
    if saved["overcommit_kbytes"].strip() != "0":
        files["overcommit_kbytes"].write_text(saved["overcommit_kbytes"])
    else:
        files["overcommit_ratio"].write_text(saved["overcommit_ratio"])


def test_memory_headroom_under_strict_overcommit(start_victim, out_dir, strict_overcommit):
    victim = start_victim("bigmap")  # 3 GiB private writable: fork must commit it again
    strict_overcommit()
    proc = run_snapcore("-o", str(out_dir), str(victim.pid))
    assert proc.returncode == ExitCode.MEMORY, proc.stderr
    assert "strict overcommit" in proc.stderr and "--force memory" in proc.stderr
    victim.assert_unharmed()


def test_rate_limit_refuses_with_the_next_allowed_time(start_victim, out_dir):
    victim = start_victim("read")
    assert snap_json("--max-per-hour", "1", "-o", str(out_dir), str(victim.pid))[0] == 0
    proc = run_snapcore("--max-per-hour", "1", "-o", str(out_dir), str(victim.pid))
    assert proc.returncode == ExitCode.RATE_LIMITED
    assert "next allowed at" in proc.stderr and "--force rate-limit" in proc.stderr
    forced = snap_json("--max-per-hour", "1", "--force", "rate-limit", "-o", str(out_dir),
                       str(victim.pid))
    assert forced[0] == 0
    victim.assert_unharmed()


def test_rate_limit_counts_each_program_not_each_executable(start_victim, out_dir):
    # Same executable, different command lines: two programs (two Python
    # services are not one), each named by its command line.
    first, second = start_victim("read"), start_victim("read")
    code, doc = snap_json("--max-per-hour", "1", "-o", str(out_dir), str(first.pid))
    assert code == 0 and doc["target"]["program"] == " ".join(
        Path(f"/proc/{first.pid}/cmdline").read_text().rstrip("\0").split("\0"))
    code, doc = snap_json("--max-per-hour", "1", "-o", str(out_dir), str(second.pid))
    assert code == 0, doc
    code, doc = snap_json("--max-per-hour", "1", "-o", str(out_dir), str(first.pid))
    assert code == ExitCode.RATE_LIMITED, doc
    first.assert_unharmed()
    second.assert_unharmed()


def test_rate_limit_counts_a_service_by_its_unit_across_restarts(start_victim, out_dir):
    # systemd puts each service in a cgroup named after its unit; a restarted
    # service (a new pid, another command line) is still the same program.
    # Its units live in v1's name=systemd hierarchy where there is one (a
    # hybrid host has both: the one snapcore reads first), else in v2's.
    hierarchy = "systemd" if "systemd" in cgroup_hierarchies() else "unified"
    unit = cgroup_root(hierarchy) / "system.slice" / "snapcore-test.service"
    made_slice = not unit.parent.exists()
    unit.mkdir(parents=True)
    try:
        before, after = start_victim("read"), start_victim("sleep")
        for victim in (before, after):
            (unit / "cgroup.procs").write_text(str(victim.pid))
        code, doc = snap_json("--max-per-hour", "1", "-o", str(out_dir), str(before.pid))
        assert code == 0 and doc["target"]["program"] == "snapcore-test.service", doc
        record = json.loads(Path(doc["core"]["record"]).read_text())
        assert record["target"]["program"] == "snapcore-test.service"
        proc = run_snapcore("--max-per-hour", "1", "-o", str(out_dir), str(after.pid))
        assert proc.returncode == ExitCode.RATE_LIMITED, proc.stderr
        assert "1 snapshots of snapcore-test.service in the last hour" in proc.stderr
        before.assert_unharmed()
        after.assert_unharmed()
    finally:
        for pid in (unit / "cgroup.procs").read_text().split():
            unit.parent.parent.joinpath("cgroup.procs").write_text(pid)
        unit.rmdir()
        if made_slice:
            unit.parent.rmdir()


def test_one_snapshot_at_a_time_per_target(start_victim, out_dir):
    victim = start_victim("sleep")
    limiter = RateLimiter(out_dir, 4)
    with limiter.exclusive(program(procfs.read(victim.pid)), victim.pid):
        proc = run_snapcore("-o", str(out_dir), str(victim.pid))
    assert proc.returncode == ExitCode.BUSY and "another snapcore" in proc.stderr
    victim.assert_unharmed()


def as_nobody(work):
    """Run work() as the unprivileged user nobody and return what it returns (JSON)."""
    return in_fork(work, as_nobody=True)


def test_unprivileged_user_cannot_trace_root(start_victim, out_dir):
    victim = start_victim("sleep")
    checks = {c["name"]: c for c in as_nobody(lambda: preflight.run(
        victim.pid, Request(output_dir=Path("/tmp/x"))).as_dicts())}
    assert checks["permission"]["verdict"] == "refuse"
    assert "belongs to uid 0" in checks["permission"]["reason"]
    assert "CAP_SYS_PTRACE" in checks["permission"]["fix"]
    victim.assert_unharmed()


def test_unprivileged_user_snapshots_its_own_process(start_victim, tmp_path):
    """No root, no capability: ptrace of one's own process, and the child's
    setup done from inside it (soft core limit, priorities, oom_score_adj)."""
    victim = start_victim("sleep", user="nobody")
    shared = Path(tempfile.mkdtemp(prefix="snapcore-nobody-"))  # reachable by nobody
    shared.chmod(0o1777)  # sticky: nobody may write there, nobody else move its cores
    unreachable = tmp_path / "cores"  # under root's 0700 pytest directory

    checks = {c["name"]: c for c in as_nobody(lambda: preflight.run(
        victim.pid, Request(output_dir=unreachable)).as_dicts())}
    assert checks["output-dir"]["verdict"] == "refuse"

    def work():
        try:
            snap = take(victim.pid, Request(output_dir=shared / "cores"))
            return {"core": str(snap.core_path), "notes": snap.notes}
        except SnapcoreError as exc:
            return {"error": exc.one_line()}

    result = as_nobody(work)
    assert "core" in result, result
    core = Path(result["core"])
    assert core.stat().st_uid == 65534 and stat.S_IMODE(core.stat().st_mode) == 0o600
    assert result["notes"] == []  # every setup step worked without privileges
    assert prstatus_pids(core) == [victim.pid]
    victim.wait_for_heartbeats(victim.heartbeats())
    victim.assert_unharmed()
    shutil.rmtree(shared)


def test_force_names_are_validated(start_victim):
    victim = start_victim("sleep")
    proc = run_snapcore("--force", "everything", str(victim.pid))
    assert proc.returncode == ExitCode.USAGE and "no such check" in proc.stderr


def test_sigint_in_the_middle_of_many_snapshots(start_victim, out_dir):
    """Busy target (a thread computing, others blocked): Ctrl-C at random moments."""
    victim = start_victim("futex")
    rng = random.Random(4)
    outcomes = set()
    for _ in range(20):
        proc = subprocess.Popen([sys.executable, "-m", "snapcore", "--max-per-hour", "0",
                                 "-o", str(out_dir), str(victim.pid)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        # snapcore's own start (Python catches SIGINT itself)
        wait_until_catching(proc, signal.SIGTERM)
        time.sleep(rng.uniform(0.0, 0.3))  # the random moment itself: nothing to poll for
        proc.send_signal(signal.SIGINT)
        proc.send_signal(signal.SIGINT)  # a second Ctrl-C must not abort the clean-up
        _, err = proc.communicate(timeout=60)
        assert proc.returncode in (0, 130), err
        assert "Traceback" not in err
        outcomes.add(proc.returncode)
        victim.assert_unharmed()
    assert 130 in outcomes, "no Ctrl-C landed while snapcore ran: the test proved nothing"
    victim.send("wake\n")
    victim.wait_for_line("woken")
    victim.assert_unharmed()


def snapshot_child(snapcore_pid: int, target: int, timeout: float = 10.0) -> int | None:
    """The snapshot child: a process traced by this snapcore that is not the
    target (the fork thread, a thread, is not listed in /proc); None if the
    run ended before one appeared."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if not os.path.exists(f"/proc/{snapcore_pid}/status"):
            return None
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == target:
                continue
            try:
                status = Path(f"/proc/{entry}/status").read_text(errors="replace")
            except OSError:
                continue
            fields = dict(x.split(":\t", 1) for x in status.splitlines() if ":\t" in x)
            if fields.get("TracerPid", "0").strip() == str(snapcore_pid):
                return int(entry)
        time.sleep(0.001)
    return None


def test_child_killed_from_outside_ends_cleanly(start_victim, out_dir):
    victim = start_victim("fat")
    killed = 0
    for _ in range(8):
        proc = subprocess.Popen([sys.executable, "-m", "snapcore", "--max-per-hour", "0",
                                 "-o", str(out_dir), str(victim.pid)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        child = snapshot_child(proc.pid, victim.pid)
        if child is not None:
            try:
                os.kill(child, signal.SIGKILL)
            except ProcessLookupError:
                pass  # the snapshot finished first: nothing to kill
        _, err = proc.communicate(timeout=60)
        assert proc.returncode in (0, ExitCode.CORE_NOT_WRITTEN), err
        if proc.returncode:
            assert "snapshot child" in err and "Traceback" not in err
            killed += 1
        victim.assert_unharmed()
        if killed >= 2:
            break
    assert killed >= 1, "the child was never caught alive: the test proved nothing"
    victim.wait_for_heartbeats(victim.heartbeats())
    victim.assert_unharmed()


@pytest.mark.slow
def test_target_exiting_at_any_moment(victim_exe, tmp_path, out_dir):
    """The target dies at moments spread over a whole snapshot, from snapcore's
    own start to its exit: always a documented exit code, never a traceback,
    and no process left traced or stopped."""
    def start():
        target = subprocess.Popen([str(victim_exe), "fat", str(tmp_path / "report.txt")],
                                  stdout=subprocess.PIPE)
        assert target.stdout.readline() == b"ready\n"
        proc = subprocess.Popen([sys.executable, "-m", "snapcore", "--max-per-hour", "0",
                                 "-o", str(out_dir), str(target.pid)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wait_until_catching(proc, signal.SIGTERM)
        return target, proc

    target, proc = start()  # one whole run, to know how long a run lasts here
    began = time.monotonic()
    proc.communicate(timeout=60)
    whole = time.monotonic() - began
    target.kill()
    target.wait()
    outcomes = set()
    for i in range(20):
        target, proc = start()
        time.sleep(whole * i / 20)  # the moment itself: nothing to poll for
        target.kill()
        target.wait()
        _, err = proc.communicate(timeout=60)
        assert proc.returncode in (0, ExitCode.NO_SUCH_PROCESS,
                                   ExitCode.CORE_NOT_WRITTEN, ExitCode.UNSUPPORTED), err
        if proc.returncode == ExitCode.UNSUPPORTED:
            assert "is a zombie" in err  # dead, not yet reaped by the test
        assert "Traceback" not in err
        outcomes.add(proc.returncode)
    assert ExitCode.NO_SUCH_PROCESS in outcomes or ExitCode.UNSUPPORTED in outcomes, outcomes
    traced = [line for line in subprocess.run(["ps", "-eo", "stat,pid,comm"],
                                              capture_output=True, text=True).stdout
              .splitlines() if line.startswith(("t", "T"))]
    assert traced == []


def test_core_estimate_is_what_the_core_takes_on_disk_and_with_holes(start_victim, out_dir):
    """A reserve touched in a few pages is holes; a private file mapping once
    written is dumped whole, read in from its file: the disk check needs the
    second, `ls -l` shows the first."""
    victim = start_victim("sparse")
    code, doc = snap_json("-o", str(out_dir), str(victim.pid))
    assert code == 0, doc
    core = Path(doc["core"]["path"]).stat()
    allocated, apparent = core.st_blocks * 512, core.st_size
    assert apparent > 8 << 30 and allocated < 256 << 20
    assert doc["core"]["allocated"] == allocated and doc["core"]["size"] == apparent
    assert allocated >= 32 << 20  # the file mapping, whole
    assert 0.8 * allocated <= doc["core_estimate"] <= 1.25 * allocated + (1 << 20), doc
    assert 0.95 * apparent <= doc["core_estimate_apparent"] <= 1.05 * apparent, doc
    victim.assert_unharmed()
