"""End-to-end: snapcore PID on real processes, checked from inside the target and in the core."""

from __future__ import annotations

import os
import socket
import stat
import time
from pathlib import Path

import pytest

from conftest import gdb, gdb_threads, snap_json, wait_until_catching
from helpers import cores_in, leftover_staging, process_state, prstatus_pids, wait_until

# The writer is the point here: core_pattern a file for every test (the
# kernel's writer, and what `auto` picks, the same on any host), and each
# writer named where both are tested.
pytestmark = pytest.mark.usefixtures("file_core_pattern")

# What each target mode does after the snapshot to prove its blocking call
# came back with the right result, and the function its core must show.
MODES = {
    "sleep": ("mode_sleep", None),
    "read": ("mode_read", "read"),
    "accept": ("mode_accept", "accept"),
    "futex": ("mode_futex", "futex"),
    "busy": ("busy_loop", None),
}


def poke(victim, action: str) -> None:
    """Make the target's blocking call return, and check it got the right result."""
    if action == "read":
        victim.send("hello\n")
        victim.wait_for_line("got hello")
    elif action == "accept":
        port = int(next(x for x in victim.lines() if x.startswith("port ")).split()[1])
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
        victim.wait_for_line("accepted")
    elif action == "futex":
        victim.send("wake\n")
        victim.wait_for_line("woken")


@pytest.mark.parametrize("writer", ["kernel", "snapcore"])
@pytest.mark.parametrize("mode", list(MODES))
def test_snapshot_leaves_blocked_target_unharmed(mode, writer, start_victim, out_dir,
                                                 victim_exe):
    function, action = MODES[mode]
    victim = start_victim(mode)
    # Settled in its blocking call (asleep), or in its loop for `busy`.
    wait_until(lambda: process_state(victim.pid) == ("R" if mode == "busy" else "S")
               and victim.heartbeats() >= (0 if mode in ("read", "accept", "futex") else 1),
               "the target settles into its blocking call")
    beats = victim.heartbeats()
    tids = sorted(int(t) for t in os.listdir(f"/proc/{victim.pid}/task"))

    code, doc = snap_json("--writer", writer, "-o", str(out_dir), str(victim.pid))

    assert code == 0, doc
    assert doc["target"]["pid"] == victim.pid
    assert doc["threads"] == len(tids)
    assert sorted(t["tid"] for t in doc["thread_map"]) == tids
    assert doc["child_pid"] != victim.pid
    assert 0 < doc["pause_ms"] < 1000
    core = Path(doc["core"]["path"])
    assert core.parent == out_dir
    assert core.name.endswith(f"_victim_{victim.pid}.core")
    st = core.stat()
    assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == os.geteuid()
    assert st.st_size == doc["core"]["size"]
    # The call the target was blocked in completes normally afterwards.
    poke(victim, action)
    victim.wait_for_heartbeats(beats if action else beats + 1)
    victim.assert_unharmed()
    # The core shows the target where it was, under its own thread id.
    assert sorted(prstatus_pids(core)) == tids
    trace = gdb(victim_exe, core, "thread apply all bt")
    assert function in trace, trace
    assert "Couldn't find general-purpose registers" not in trace
    assert sorted(gdb_threads(victim_exe, core)) == tids


def test_busy_thread_core_shows_rip_inside_loop(start_victim, out_dir, victim_exe):
    victim = start_victim("busy")
    code, doc = snap_json("-o", str(out_dir), str(victim.pid))
    assert code == 0, doc
    out = gdb(victim_exe, Path(doc["core"]["path"]), "info symbol $pc")
    assert "busy_loop" in out, out
    victim.assert_unharmed()


def test_target_of_another_user_gets_core_owned_by_root(start_victim, out_dir):
    victim = start_victim("sleep", user="nobody")
    code, doc = snap_json("-o", str(out_dir), str(victim.pid))
    assert code == 0, doc
    core = Path(doc["core"]["path"])
    st = core.stat()
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, 0o600)
    assert doc["target"]["uid"] != 0
    victim.wait_for_heartbeats(victim.heartbeats())
    victim.assert_unharmed()
    # No staging directory is left behind.
    assert leftover_staging("/var/tmp") == []
    assert cores_in(out_dir) == [core.name]


def test_repeated_snapshots_are_distinct_and_sorted(start_victim, out_dir):
    victim = start_victim("read")
    paths = [snap_json("-o", str(out_dir), str(victim.pid))[1]["core"]["path"]
             for _ in range(3)]
    assert len(set(paths)) == 3
    assert cores_in(out_dir) == [Path(p).name for p in paths]
    poke(victim, "read")
    victim.assert_unharmed()


def test_sigint_at_any_moment_leaves_target_running(start_victim, out_dir):
    """Ctrl-C lands before, during and after the stop window: the target never suffers."""
    import signal
    import subprocess
    import sys

    victim = start_victim("sleep")
    outcomes = []
    for delay in (0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4):
        proc = subprocess.Popen([sys.executable, "-m", "snapcore", "-o", str(out_dir),
                                 "--max-per-hour", "0", str(victim.pid)],
                                stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        # snapcore's own start (Python catches SIGINT itself)
        wait_until_catching(proc, signal.SIGTERM)
        time.sleep(delay)  # the moment itself: nothing to poll for
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode in (0, 130), err
        assert "Traceback" not in err
        outcomes.append(proc.returncode)
        if proc.returncode == 130:
            assert err.strip().startswith(("snapcore: error: interrupted",
                                   "snapcore: interrupted before it started")), err
        victim.assert_unharmed()
    assert 130 in outcomes, f"no Ctrl-C landed while snapcore ran: {outcomes}"
    victim.wait_for_heartbeats(victim.heartbeats())
    victim.assert_unharmed()


def test_target_in_another_mount_namespace(start_victim, tmp_path, victim_exe):
    """A container's view of the files: the output directory does not exist for
    the target, so the kernel must write the core where the target can."""
    out_dir = tmp_path / "cores"
    hide = ("unshare", "--mount", "--propagation", "private", "sh", "-c",
            'mount -t tmpfs tmpfs "$0" && exec "$@"', str(tmp_path))
    victim = start_victim("sleep", prefix=hide)
    assert os.readlink(f"/proc/{victim.pid}/ns/mnt") != os.readlink("/proc/self/ns/mnt")
    code, doc = snap_json("-o", str(out_dir), str(victim.pid))
    assert code == 0, doc
    core = Path(doc["core"]["path"])
    assert core.parent == out_dir and prstatus_pids(core) == [victim.pid]
    assert leftover_staging(f"/proc/{victim.pid}/root/var/tmp") == []
    victim.wait_for_heartbeats(victim.heartbeats())
    victim.assert_unharmed()
