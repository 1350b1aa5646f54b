"""Targets that change under snapcore: seccomp filters of one thread only, a
filter installed while snapcore starts, a userfaultfd whose fork waits for
its monitor, and job control storms (tests/targets/sandbox.c, victim.c)."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import threading
import time

import psutil
import pytest

from conftest import compile_target, run_snapcore, snap_json
from helpers import check_json, process_state, verdicts, wait_until
from snapcore.errors import ExitCode
from snapcore.linux import arch, heldsignals, procfs, ptrace, stops
from snapcore.linux.inject import HeldThread, wait_for_interrupt_stop


@pytest.fixture(scope="session")
def sandbox_exe(build_dir):
    return compile_target(build_dir, "sandbox")


def no_leftovers(pid: int) -> list[str]:
    """Children (zombies included) and fork threads left in the target."""
    found = [f"child {c.pid} ({c.status()})" for c in psutil.Process(pid).children()]
    for thread in psutil.Process(pid).threads():
        try:
            with open(f"/proc/{pid}/task/{thread.id}/comm") as f:
                if f.read().strip() == "snapcore-fork":
                    found.append(f"fork thread {thread.id}")
        except FileNotFoundError:
            pass
    return found


@pytest.mark.parametrize("mode", ["thread_kill", "thread_trap"])
@pytest.mark.usefixtures("file_core_pattern")  # asks for the kernel's writer
def test_a_thread_with_its_own_filter_never_runs_snapcores_calls(start_victim, sandbox_exe,
                                                                 out_dir, mode):
    """Filters belong to threads: a worker's own filter kills (or traps) a
    fork, the main thread has none and computes.  The worker, asleep in a
    syscall, would be the natural runner; its filters refuse, so the main
    thread runs the calls, and the fork thread and the child inherit its (no)
    filters."""
    victim = start_victim(mode, exe=sandbox_exe)
    code, doc = check_json(str(victim.pid))
    assert code == 0, doc
    assert "has no seccomp filter" in next(c["reason"] for c in doc["checks"]
                                           if c["name"] == "seccomp"), doc
    for writer in ("kernel", "snapcore", "kernel", "snapcore"):
        code, doc = snap_json("--max-per-hour", "0", "--writer", writer, "-o", str(out_dir),
                              str(victim.pid))
        assert code == 0, doc
        assert victim.proc.poll() is None, f"the target died: {victim.proc.returncode}"
    victim.wait_for_heartbeats(victim.heartbeats())
    victim.assert_unharmed()  # no SIGSYS handler ran, no child, untraced


@pytest.mark.slow
def test_a_filter_installed_while_snapcore_starts_never_kills(start_victim, sandbox_exe,
                                                             out_dir):
    """A sandbox that tightens itself after start-up: a filter killing any
    fork, on every thread, lands at a random moment from snapcore's start to
    about the time a whole snapshot takes here (measured first: seconds on a
    loaded machine), before its preflight, between its preflight and its
    window, or after.  snapcore reads the filters inside the window (no
    thread can install one while all are held): it snapshots, or refuses;
    the target never dies."""
    rng = random.Random(int(time.time()))
    outcomes = []
    victim = start_victim("late_filter", exe=sandbox_exe)
    started = time.monotonic()
    assert snap_json("--max-per-hour", "0", "-o", str(out_dir), str(victim.pid))[0] == 0
    whole = time.monotonic() - started
    victim.stop()
    for _ in range(20):
        victim = start_victim("late_filter", exe=sandbox_exe)
        proc = subprocess.Popen([sys.executable, "-m", "snapcore", "--json", "--max-per-hour",
                                 "0", "-o", str(out_dir), str(victim.pid)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(rng.uniform(0, 1.2 * whole))  # the random moment itself: nothing to poll for
        victim.send("filter\n")
        out, err = proc.communicate(timeout=60)
        victim.wait_for_line("filtered")
        assert victim.proc.poll() is None, f"the target died: {out} {err}"
        outcomes.append(proc.returncode)
        assert proc.returncode in (0, ExitCode.UNSUPPORTED), (out, err)
        if proc.returncode:
            assert "seccomp" in json.loads(out)["error"]["message"], out
        assert no_leftovers(victim.pid) == []
        victim.wait_for_heartbeats(victim.heartbeats())
        victim.assert_unharmed()
        victim.stop()
    assert 0 in outcomes, outcomes  # the filter came after the window at least once


def test_userfaultfd_with_fork_events_is_refused(start_victim, sandbox_exe, out_dir):
    """A fork of memory under a userfaultfd that asks for fork events waits
    until the monitor reads the event: the monitor is a thread the window
    would hold.  Refused before the target is touched."""
    victim = start_victim("uffd_fork", exe=sandbox_exe)
    code, doc = check_json(str(victim.pid))
    assert code == ExitCode.UNSUPPORTED and verdicts(doc)["userfaultfd"] == "refuse", doc
    started = time.monotonic()
    code, doc = snap_json("--max-per-hour", "0", "-o", str(out_dir), str(victim.pid))
    assert code == ExitCode.UNSUPPORTED, doc
    assert "userfaultfd" in doc["error"]["message"], doc
    assert time.monotonic() - started < 10
    assert "fork event" not in victim.lines()
    victim.wait_for_heartbeats(victim.heartbeats())
    victim.assert_unharmed()


class Storm:
    """Job control on the target's process group, as a shell's ^Z and fg, or
    a supervisor pausing it: `sig` then SIGCONT, each every `period` s."""

    def __init__(self, pgid: int, sig: int, period: float = 0.001):
        self.pgid, self.sig, self.period = pgid, sig, period
        self.done = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        while not self.done.is_set():
            for sig in (self.sig, signal.SIGCONT):
                try:
                    psutil.Process(self.pgid)  # still there
                    subprocess.os.killpg(self.pgid, sig)
                except (ProcessLookupError, psutil.NoSuchProcess):
                    return
                time.sleep(self.period)

    def stop(self) -> None:
        self.done.set()
        self.thread.join()
        subprocess.os.killpg(self.pgid, signal.SIGCONT)


CLEAN_REFUSALS = (ExitCode.UNSUPPORTED,)  # "stopped": it must stay stopped


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGSTOP, signal.SIGTSTP])
def test_job_control_storm_during_snapshots(start_victim, out_dir, sig):
    """SIGSTOP (or SIGTSTP) and SIGCONT to the target's process group every
    millisecond, during 30 snapshots.  A stop is normal life: each snapshot
    goes ahead (a stop signal taken during an injected call is given back
    at release) or is refused because the process is stopped; never a
    zombie, never an error about the signal, never a target left stopped."""
    victim = start_victim("sleep", prefix=("setsid",))
    storm = Storm(victim.pid, sig)
    codes = []
    try:
        for _ in range(30):
            proc = run_snapcore("--json", "--max-per-hour", "0", "-o", str(out_dir),
                                str(victim.pid))
            codes.append(proc.returncode)
            doc = json.loads(proc.stdout)
            assert proc.returncode == 0 or proc.returncode in CLEAN_REFUSALS, doc
            if proc.returncode:
                assert "stopped" in doc["error"]["message"], doc
    finally:
        storm.stop()
    assert 0 in codes, codes
    # The last stop may have held the fork thread on its way out: it ends
    # once the storm's final SIGCONT lets it run.
    wait_until(lambda: no_leftovers(victim.pid) == [], "nothing of snapcore's is left",
               timeout=5)
    victim.wait_for_heartbeats(victim.heartbeats())
    victim.assert_unharmed()


def test_a_signal_that_reaches_a_held_thread_is_taken_as_its_process_would():
    """linux/heldsignals.py against a real process's dispositions: ignored
    (SIG_IGN, or a default that ignores) and default stop signals need no
    holding, a caught or a fatal one does; a SIGCONT cancels the stops taken
    before it."""
    proc = subprocess.Popen([sys.executable, "-c", (
        "import signal, time\n"
        "signal.signal(signal.SIGUSR1, lambda *a: None)\n"
        "signal.signal(signal.SIGUSR2, signal.SIG_IGN)\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)\n")], stdout=subprocess.PIPE)
    try:
        assert proc.stdout.readline() == b"ready\n"
        held = HeldThread(proc.pid)
        said = {sig: procfs.disposition(proc.pid, sig) for sig in
                (signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM, signal.SIGCHLD,
                 signal.SIGTSTP, signal.SIGSTOP)}
        assert said == {signal.SIGUSR1: "catch", signal.SIGUSR2: "ignore",
                        signal.SIGTERM: "default", signal.SIGCHLD: "ignore",
                        signal.SIGTSTP: "default", signal.SIGSTOP: "default"}
        taken = {sig: heldsignals.absorbed(held, sig) for sig in
                 (signal.SIGUSR1, signal.SIGTERM, signal.SIGUSR2, signal.SIGWINCH,
                  signal.SIGSTOP, signal.SIGTSTP)}
        assert taken == {signal.SIGUSR1: False, signal.SIGTERM: False, signal.SIGUSR2: True,
                         signal.SIGWINCH: True, signal.SIGSTOP: True, signal.SIGTSTP: True}
        assert held.stops_taken == [signal.SIGSTOP, signal.SIGTSTP]
        assert heldsignals.absorbed(held, signal.SIGCONT) and held.stops_taken == []
    finally:
        proc.kill()
        proc.wait()


def test_a_stop_signal_taken_while_held_stops_the_process_at_release():
    """A stop signal snapcore took while holding a thread (suppressed in an
    injected call, or absorbed) is given back when the thread is let go:
    the process ends stopped, as its sender meant."""
    proc = subprocess.Popen(["sleep", "30"])
    try:
        wait_until(lambda: process_state(proc.pid) == "S", "the sleeper sleeps")
        held = HeldThread(proc.pid)
        with stops.signals_held([signal.SIGCHLD]):
            ptrace.seize(proc.pid)
            ptrace.interrupt(proc.pid)
            wait_for_interrupt_stop(proc.pid, time.monotonic() + 10)
            held.stopped = True
            # SIGSTOP: the kernel discards a SIGTSTP sent to an orphaned process
            # group (get_signal), which this one is when the suite runs detached.
            held.stops_taken.append(signal.SIGSTOP)
            held.release()
        wait_until(lambda: process_state(proc.pid) == "T", "the process is stopped", 5)
    finally:
        proc.kill()
        proc.wait()


class Sender:
    """Signals to one process every `period` s from this process: SIGRTMIN
    (queued: each one is delivered) counted, and SIGWINCH (ignored)."""

    def __init__(self, pid: int, period: float = 0.001):
        self.pid, self.period, self.sent = pid, period, 0
        self.done = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        while not self.done.is_set():
            subprocess.os.kill(self.pid, signal.SIGRTMIN)
            self.sent += 1
            subprocess.os.kill(self.pid, signal.SIGWINCH)
            time.sleep(self.period)

    def stop(self) -> int:
        self.done.set()
        self.thread.join()
        return self.sent


@pytest.mark.slow
def test_signals_sent_during_snapshots_are_each_delivered_once(build_dir, start_victim,
                                                                out_dir):
    """A caught, queued signal every millisecond and an ignored one beside it,
    during 20 snapshots: every snapshot goes ahead, and the target gets each
    caught signal once, from its sender (a signal that reaches the thread
    snapcore runs its calls in is held and delivered at release, or that
    window is let go and another taken), none swallowed, none sent again."""
    exe = compile_target(build_dir, "sigcount")
    victim = start_victim("sigcount", exe=exe)
    sender = Sender(victim.pid)
    delivered = 0
    try:
        for _ in range(20):
            code, doc = snap_json("--max-per-hour", "0", "-o", str(out_dir), str(victim.pid))
            assert code == 0, doc
            delivered += any("entering its handler" in note for note in doc["notes"])
    finally:
        sent = sender.stop()
    if arch.RESTART_DECIDED_AFTER_STOP:  # arm64: the runner is let run to its `svc`
        assert delivered, "no signal reached the runner before its first call"

    def counted() -> int:
        return max((int(x.split()[1]) for x in victim.lines() if x.startswith("count ")),
                   default=-1)
    wait_until(lambda: counted() >= sent, f"the target counts {sent} signals", timeout=10)
    time.sleep(0.1)
    assert counted() == sent
    victim.wait_for_heartbeats(victim.heartbeats())
    victim.assert_unharmed()


@pytest.mark.slow
def test_a_fork_that_outlives_the_stop_timeout_lets_the_target_go(start_victim, fat_preload,
                                                                  out_dir):
    """The page-table copy of 4 GiB takes some 60 ms here; with a stop
    timeout of 30 ms the target's threads are let go at the timeout while
    the fork goes on in the fork thread, and the snapshot is abandoned:
    never held past the timeout, nothing left."""
    victim = start_victim("sleep", prefix=("env", f"LD_PRELOAD={fat_preload}",
                                           "HOSTILE_FAT_MB=4096"))
    codes = []
    for _ in range(3):
        proc = run_snapcore("--json", "--max-per-hour", "0", "--timeout", "0.03", "-o",
                            str(out_dir), str(victim.pid))
        codes.append(proc.returncode)
        doc = json.loads(proc.stdout)
        assert proc.returncode in (0, ExitCode.TIMEOUT), doc
        if proc.returncode == ExitCode.TIMEOUT and "fork" in doc["error"]["message"]:
            assert "stop timeout" in doc["error"]["message"], doc
            break
        assert no_leftovers(victim.pid) == []
    else:
        pytest.fail(f"the fork never outlived the timeout: {codes}")
    assert no_leftovers(victim.pid) == []
    victim.wait_for_heartbeats(victim.heartbeats())
    victim.assert_unharmed()
