"""One stop window per snapshot (snapcore/fork.py): the target never gets the
snapshot child as its own, and is never stopped again after the window."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import psutil

from conftest import snap_json


def _status(pid: int) -> dict[str, str]:
    return dict(line.split(":\t", 1) for line in
                Path(f"/proc/{pid}/status").read_text().splitlines() if ":\t" in line)


def _beats(report: Path) -> int:
    return sum(1 for x in report.read_text().splitlines() if x.startswith("hb "))


def test_one_window_and_the_child_is_never_the_targets(start_victim, out_dir):
    victim = start_victim("sleep")
    code, doc = snap_json("--max-per-hour", "0", "-o", str(out_dir), str(victim.pid))
    assert code == 0, doc
    assert doc["reap_pause_ms"] == 0  # no second stop of the target
    assert not any("reap" in note for note in doc["notes"]), doc["notes"]
    try:  # the child is gone, or an orphan of init here (pid 1 does not reap)
        assert int(_status(doc["child_pid"])["PPid"]) != victim.pid
    except FileNotFoundError:
        pass
    victim.wait_for_heartbeats(victim.heartbeats())
    victim.assert_unharmed()


def test_child_subreaper_target_is_not_handed_the_orphan(start_victim, out_dir):
    """A child subreaper adopts the orphans below it: the child is made the
    target's own instead (exit signal 0: no SIGCHLD, invisible to its wait())
    and reaped after the dump, once the target is checked to be the same."""
    victim = start_victim("subreaper")
    for _ in range(3):
        code, doc = snap_json("--max-per-hour", "0", "-o", str(out_dir), str(victim.pid))
        assert code == 0, doc
        assert doc["reap_pause_ms"] > 0, doc  # the second, guarded stop reaped it
        assert not any("not reaped" in note for note in doc["notes"]), doc["notes"]
    victim.wait_for_heartbeats(victim.heartbeats())
    victim.assert_unharmed()  # no SIGCHLD, nothing its waitpid(-1) reaped, no child


def test_namespace_init_target_gets_no_sigchld(start_victim, victim_exe, tmp_path, out_dir):
    """The init of a pid namespace (a container's entrypoint) adopts every
    orphan of its namespace: the same CLONE_PARENT child, reaped after the dump."""
    report = tmp_path / "report.txt"
    report.touch()
    outer = subprocess.Popen(["unshare", "--pid", "--fork", "--kill-child", "--mount-proc",
                              str(victim_exe), "sleep", str(report)], stdout=subprocess.PIPE)
    try:
        assert outer.stdout.readline() == b"ready\n"
        pid = psutil.Process(outer.pid).children()[0].pid
        assert _status(pid)["NSpid"].split()[-1] == "1"
        code, doc = snap_json("--max-per-hour", "0", "-o", str(out_dir), str(pid))
        assert code == 0, doc
        assert doc["reap_pause_ms"] > 0, doc
        assert psutil.Process(pid).children() == []
        assert _status(pid)["TracerPid"].strip() == "0"
        beats = _beats(report)
        deadline = time.monotonic() + 5
        while _beats(report) <= beats:  # it sleeps 300 ms a round: one more round
            assert time.monotonic() < deadline, "the target stopped beating"
            time.sleep(0.02)
        assert [x for x in report.read_text().splitlines() if "VIOLATION" in x] == []
    finally:
        outer.kill()
        outer.wait()
