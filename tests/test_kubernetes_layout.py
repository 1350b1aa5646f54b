"""The layout `kubectl debug POD --target=CONTAINER` makes (docs/kubernetes.md):
snapcore runs inside the target's pid namespace, where the target is pid 1,
but in a mount namespace of its own (the debug container's filesystem).

The node-level layout (`kubectl debug node/...`: snapcore in the host's pid
namespace, the target in a pid and mount namespace of its own) is covered by
test_threads.py::test_target_in_its_own_pid_namespace,
test_first_law.py::test_namespace_init_target_gets_no_sigchld and
test_snapshot.py::test_target_in_another_mount_namespace.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil

from helpers import leftover_staging, prstatus_pids, wait_until


def test_snapcore_in_the_targets_pid_namespace_and_its_own_mount_namespace(
        victim_exe, tmp_path, out_dir):
    report = tmp_path / "report.txt"
    report.touch()
    outer = subprocess.Popen(["unshare", "--pid", "--fork", "--kill-child", "--mount-proc",
                              str(victim_exe), "sleep", str(report)], stdout=subprocess.PIPE)
    pid = None
    try:
        assert outer.stdout.readline() == b"ready\n"
        pid = psutil.Process(outer.pid).children()[0].pid
        # The debug container: the target's pid namespace (nsenter -p), a mount
        # namespace of its own with that namespace's /proc.
        debug = ["nsenter", "--target", str(pid), "--pid", "--",
                 "unshare", "--mount", "--propagation", "private", "sh", "-c",
                 'mount -t proc proc /proc && exec "$@"', "sh"]
        proc = subprocess.run([*debug, sys.executable, "-m", "snapcore", "--json", "-o",
                               str(out_dir), "1"], capture_output=True, text=True,
                              timeout=120)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        doc = json.loads(proc.stdout)
        assert doc["target"]["pid"] == 1
        assert [(t["tid"], t["core_lwp"]) for t in doc["thread_map"]] == [(1, 1)]
        assert doc["reap_pause_ms"] == 0  # pid 1 adopts orphans: the fork thread reaps instead
        core = Path(doc["core"]["path"])
        assert core.parent == out_dir and prstatus_pids(core) == [1]
        assert leftover_staging(f"/proc/{pid}/root/var/tmp") == []

        assert psutil.Process(pid).children() == []
        status = Path(f"/proc/{pid}/status").read_text()
        assert "TracerPid:\t0\n" in status and "State:\tS" in status
        beats = sum(1 for x in report.read_text().splitlines() if x.startswith("hb "))
        wait_until(lambda: sum(1 for x in report.read_text().splitlines()
                               if x.startswith("hb ")) > beats, "the target beats again")
        lines = report.read_text().splitlines()
        assert [x for x in lines if "VIOLATION" in x] == []
        assert {x.split()[1] for x in lines if x.startswith("hb ")} == {"1"}
    finally:
        # The target first, so that unshare, its parent, reaps it and exits.
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
        try:
            outer.wait(timeout=10)
        except subprocess.TimeoutExpired:
            outer.kill()
            outer.wait()
