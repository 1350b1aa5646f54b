"""Who reaps the snapshot child (engine/forkthread.py): the fork thread
snapcore adds to the target, never the target itself, its parent, a child
subreaper above it or its pid namespace's init.  Each reaper here is a real
program (tests/targets/reaper.c) that logs every child it reaps, or never
reaps at all, as a container's pid 1 may; and a snapcore killed mid-dump
leaves nothing but one page the next snapshot removes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from conftest import compile_target, snap_json
from helpers import process_state, wait_until

# Both writers, the kernel's named: core_pattern a file for every test (where
# the host pipes cores, the kernel would hand the snapshot to that handler).
pytestmark = pytest.mark.usefixtures("file_core_pattern")


@pytest.fixture(scope="session")
def reaper_exe(build_dir):
    return compile_target(build_dir, "reaper")


def status(pid: int) -> dict[str, str]:
    return dict(line.split(":\t", 1) for line in
                Path(f"/proc/{pid}/status").read_text().splitlines() if ":\t" in line)


def beats(report: Path) -> int:
    return sum(1 for x in report.read_text().splitlines() if x.startswith("hb "))


def still_well(report: Path) -> None:
    """The target beats again, and reported nothing wrong."""
    before = beats(report)
    wait_until(lambda: beats(report) > before, "the target beats again")
    assert [x for x in report.read_text().splitlines() if "VIOLATION" in x] == []


def fork_pages(pid: int) -> list[str]:
    """Anonymous one-page r-x mappings holding snapcore's fork thread code."""
    from snapcore.engine.forkthread import page_contents
    found = []
    with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/mem", "rb", buffering=0) as mem:
        for line in maps:
            parts = line.split()
            start, end = (int(x, 16) for x in parts[0].split("-"))
            if parts[1] == "r-xp" and len(parts) == 5 and end - start == 4096:
                mem.seek(start)
                if mem.read(64).startswith(page_contents()[:42]):
                    found.append(parts[0])
    return found


def leftovers_below(pid: int) -> list[str]:
    """Every task below `pid` that is not simply alive: zombies, and threads
    named snapcore-fork."""
    found = []
    for proc in [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]:
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                found.append(f"zombie {proc.pid} (parent {proc.ppid()})")
            for thread in proc.threads():
                name = Path(f"/proc/{proc.pid}/task/{thread.id}/comm").read_text().strip()
                if name == "snapcore-fork":
                    found.append(f"fork thread {thread.id} in {proc.pid}")
        except (psutil.NoSuchProcess, FileNotFoundError):
            continue
    return found


class Reaper:
    """reaper.c above the victim: a child subreaper, or (pidns) a pid 1."""

    def __init__(self, reaper_exe, victim_exe, mode: str, tmp_path: Path, pidns: bool,
                 victim_mode: str = "sleep", cpu: int | None = None):
        self.log, self.report = tmp_path / "reaper.log", tmp_path / "report.txt"
        self.log.touch()
        self.report.touch()
        cmd = [str(reaper_exe), mode, str(self.log), str(victim_exe), victim_mode,
               str(self.report)]
        if pidns:
            cmd = ["unshare", "--pid", "--fork", "--kill-child", "--mount-proc", *cmd]
        if cpu is not None:  # the victim, and the child it is copied to, on one CPU
            cmd = ["taskset", "-c", str(cpu), *cmd]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE)
        assert self.proc.stdout.readline() == b"ready\n"
        top = psutil.Process(self.proc.pid)
        while top.name() in ("taskset", "unshare") and top.children():
            top = top.children()[0]
        self.pid = top.pid
        self.victim = psutil.Process(self.pid).children()[0].pid

    def reaped(self) -> list[str]:
        return [x for x in self.log.read_text().splitlines() if x.startswith("reaped")]

    def assert_clean(self) -> None:
        assert self.reaped() == [], "the reaper was handed a child it never made"
        assert leftovers_below(self.pid) == []
        assert psutil.Process(self.victim).children() == []
        assert status(self.victim)["TracerPid"].strip() == "0"
        assert fork_pages(self.victim) == []
        lines = self.report.read_text().splitlines()
        assert [x for x in lines if "VIOLATION" in x] == []
        own = status(self.victim)["NSpid"].split()[-1]  # its pid as it sees it
        assert {x.split()[1] for x in lines if x.startswith("hb ")} <= {own}
        before = beats(self.report)
        wait_until(lambda: beats(self.report) > before, "the target beats again")

    def stop(self) -> None:
        for pid in (self.victim, self.pid):  # the victim first: not left an orphan
            try:
                psutil.Process(pid).kill()
            except psutil.NoSuchProcess:
                pass
        self.proc.kill()
        self.proc.wait()


@pytest.fixture
def reaper(reaper_exe, victim_exe, tmp_path):
    made = []

    def make(mode: str, pidns: bool, victim_mode: str = "sleep", cpu=None) -> Reaper:
        made.append(Reaper(reaper_exe, victim_exe, mode, tmp_path, pidns, victim_mode, cpu))
        return made[-1]

    yield make
    for r in made:
        r.stop()


def snapshots(pid: int, out_dir: Path, writers=("kernel", "snapcore"), rounds: int = 2):
    for _ in range(rounds):
        for writer in writers:
            code, doc = snap_json("--max-per-hour", "0", "--writer", writer, "-o",
                                  str(out_dir), str(pid))
            assert code == 0, doc
            assert doc["reap_pause_ms"] == 0, doc  # one stop, never a second
            assert doc["notes"] == [], doc["notes"]


def test_one_window_and_the_child_is_never_the_targets(start_victim, out_dir):
    victim = start_victim("sleep")
    code, doc = snap_json("--max-per-hour", "0", "-o", str(out_dir), str(victim.pid))
    assert code == 0, doc
    assert doc["reap_pause_ms"] == 0
    assert not psutil.pid_exists(doc["child_pid"]) or \
        psutil.Process(doc["child_pid"]).status() != psutil.STATUS_ZOMBIE
    assert leftovers_below(victim.pid) == []
    assert fork_pages(victim.pid) == []
    victim.wait_for_heartbeats(victim.heartbeats())
    victim.assert_unharmed()


@pytest.mark.parametrize("mode", ["log", "never"])
def test_a_subreaper_above_the_target_is_never_handed_the_child(reaper, out_dir, mode):
    """A child subreaper ancestor (a service manager, tini -s): every orphan
    below it would be its own.  It reaps nothing, and keeps no zombie."""
    r = reaper(mode, pidns=False)
    snapshots(r.victim, out_dir)
    r.assert_clean()


@pytest.mark.parametrize("mode", ["log", "never"])
def test_a_namespace_init_above_the_target_is_never_handed_the_child(reaper, out_dir, mode):
    """A container whose pid 1 is the application and the target one of its
    workers: a pid 1 that logs every child it reaps logs none; one that never
    reaps keeps no zombie."""
    r = reaper(mode, pidns=True)
    snapshots(r.victim, out_dir)
    r.assert_clean()


def test_a_subreaper_target_gets_no_child_and_no_sigchld(start_victim, out_dir):
    """The target itself adopts orphans (PR_SET_CHILD_SUBREAPER): it reports a
    SIGCHLD or a child its waitpid(-1) reaped as a violation."""
    victim = start_victim("subreaper")
    snapshots(victim.pid, out_dir)
    assert leftovers_below(victim.pid) == []
    victim.wait_for_heartbeats(victim.heartbeats())
    victim.assert_unharmed()


def test_a_namespace_init_target_gets_no_child_and_no_sigchld(victim_exe, tmp_path, out_dir):
    """The target is its pid namespace's init (a container's entrypoint)."""
    report = tmp_path / "report.txt"
    report.touch()
    outer = subprocess.Popen(["unshare", "--pid", "--fork", "--kill-child", "--mount-proc",
                              str(victim_exe), "sleep", str(report)], stdout=subprocess.PIPE)
    try:
        assert outer.stdout.readline() == b"ready\n"
        pid = psutil.Process(outer.pid).children()[0].pid
        assert status(pid)["NSpid"].split()[-1] == "1"
        snapshots(pid, out_dir)
        assert leftovers_below(pid) == [] and fork_pages(pid) == []
        still_well(report)
    finally:
        outer.kill()
        outer.wait()


@pytest.fixture
def hog_cpu0():
    """A busy loop on CPU 0: a SCHED_IDLE dump there barely runs."""
    hog = subprocess.Popen(["taskset", "-c", "0", "sh", "-c", "while :; do :; done"])
    yield 0
    hog.kill()
    hog.wait()


def dump_in_progress(reaper_: Reaper, out_dir: Path, writer: str) -> subprocess.Popen:
    """A snapcore in the middle of a dump: its child exists and dumps (the
    kernel's writer, idle on the CPU a hog keeps busy) or is read (snapcore's
    writer, into a pipe nobody reads yet)."""
    cmd = [sys.executable, "-m", "snapcore", "--max-per-hour", "0", "--writer", writer,
           "--dump-deadline", "0", "-o", "-" if writer == "snapcore" else str(out_dir),
           str(reaper_.victim)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    wait_until(lambda: any(t.name() == "snapcore-fork" for t in _threads(reaper_.victim)),
               "the fork thread exists", timeout=30)
    wait_until(lambda: any(c.pid != reaper_.victim for c in
                           psutil.Process(reaper_.victim).children()), "the child exists")
    return proc


def _threads(pid: int):
    out = []
    for tid in Path(f"/proc/{pid}/task").iterdir():
        try:
            out.append(psutil.Process(int(tid.name)))
        except psutil.NoSuchProcess:
            pass
    return out


@pytest.mark.slow
@pytest.mark.parametrize("writer", ["kernel", "snapcore"])
def test_snapcore_killed_mid_dump_leaves_only_a_page_the_next_snapshot_removes(
        reaper, out_dir, writer, hog_cpu0):
    """SIGKILL of snapcore while the child dumps: the child and the sentinel
    die with it (EXITKILL), the fork thread reaps them from its own page and
    exits.  The page stays; the next snapshot recognises and unmaps it."""
    r = reaper("log", pidns=True, victim_mode="fat", cpu=hog_cpu0)
    proc = dump_in_progress(r, out_dir, writer)
    proc.kill()
    proc.communicate()
    wait_until(lambda: leftovers_below(r.pid) == [] and
               psutil.Process(r.victim).children() == [], "the fork thread reaped and left")
    assert len(fork_pages(r.victim)) == 1
    assert r.reaped() == []
    code, doc = snap_json("--max-per-hour", "0", "-o", str(out_dir), str(r.victim))
    assert code == 0, doc
    assert any("unmapped the page" in n for n in doc["notes"]), doc["notes"]
    r.assert_clean()


@pytest.mark.slow
def test_a_namespace_init_target_killed_mid_dump_then_snapshot_again(victim_exe, tmp_path,
                                                                   out_dir, hog_cpu0):
    """The target is its pid namespace's init, and snapcore is SIGKILLed in
    the middle of the kernel's dump: nothing is left for that init to reap
    (it is the target: it would wait for no one), and the next snapshot goes
    ahead and unmaps the page the killed one left."""
    report = tmp_path / "report.txt"
    report.touch()
    outer = subprocess.Popen(["taskset", "-c", str(hog_cpu0), "unshare", "--pid", "--fork",
                              "--kill-child", "--mount-proc", str(victim_exe), "fat",
                              str(report)], stdout=subprocess.PIPE)
    try:
        assert outer.stdout.readline() == b"ready\n"
        top = psutil.Process(outer.pid)
        while top.name() in ("taskset", "unshare"):
            top = top.children()[0]
        pid = top.pid
        assert status(pid)["NSpid"].split()[-1] == "1"
        target = Reaper.__new__(Reaper)
        target.victim = pid
        proc = dump_in_progress(target, out_dir, "kernel")
        proc.kill()
        proc.communicate()
        wait_until(lambda: leftovers_below(pid) == [], "the fork thread reaped and left")
        assert len(fork_pages(pid)) == 1
        code, doc = snap_json("--max-per-hour", "0", "-o", str(out_dir), str(pid))
        assert code == 0, doc
        assert any("unmapped the page" in n for n in doc["notes"]), doc["notes"]
        assert leftovers_below(pid) == [] and fork_pages(pid) == []
        still_well(report)
    finally:
        outer.kill()
        outer.wait()


def _child_of_fork_thread(pid: int) -> tuple[int, str] | None:
    """(pid, state) of the snapshot child, from the fork thread's children."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            if Path(f"/proc/{pid}/task/{tid}/comm").read_text().strip() != "snapcore-fork":
                continue
            kids = Path(f"/proc/{pid}/task/{tid}/children").read_text().split()
        except OSError:
            continue
        for kid in kids:
            return int(kid), process_state(int(kid)) or "gone"
    return None


@pytest.mark.slow
@pytest.mark.parametrize("writer", ["kernel", "snapcore"])
def test_ctrl_c_as_the_child_ends_leaves_no_zombie(start_victim, out_dir, writer):
    """Ctrl-C aimed at the fork thread's end: the moment the child has dumped
    and snapcore takes the fork thread back to reap it.  A request landing
    halfway through must not leave the fork thread stopped mid-call (its
    child's zombie then outlived it, a child of the target for good)."""
    victim = start_victim("sleep")
    landed = 0
    for _ in range(20):
        proc = subprocess.Popen([sys.executable, "-m", "snapcore", "--max-per-hour", "0",
                                 "--writer", writer, "-o", str(out_dir), str(victim.pid)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        seen = None
        while proc.poll() is None:
            seen = _child_of_fork_thread(victim.pid) or seen
            if seen and (_child_of_fork_thread(victim.pid) or (0, "gone"))[1] in "XZtgone":
                proc.send_signal(signal.SIGINT)
                break
        _, err = proc.communicate(timeout=60)
        assert proc.returncode in (0, 130), err
        assert "Traceback" not in err, err
        landed += proc.returncode == 130
        victim.assert_unharmed()
    assert landed, "no Ctrl-C landed while snapcore ran: the test proved nothing"
