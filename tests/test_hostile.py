"""Hostile targets and hostile neighbours (tests/targets/hostile.c).

A target that execs itself in a loop, one that exits mid-dump so that its pid
can be handed to an innocent process, a seccomp filter keyed on the vDSO, an
unprivileged user racing the staging directory with links to files it must
not reach, and snapcore itself SIGKILLed at random moments.  Each leaves its
target (or its bystander) unharmed, checked from inside and from /proc.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest
from elftools.elf.elffile import ELFFile

from snapcore.errors import ExitCode
from snapcore.linux.procstat import read_stat

from conftest import compile_target, gdb
from helpers import prstatus_pids

STAGING_PREFIX = ".snapcore-staging-"


@pytest.fixture(scope="session")
def hostile_exe(build_dir):
    return compile_target(build_dir, "hostile")




def snapcore_cmd(out_dir: Path, pid: int) -> list[str]:
    return [sys.executable, "-m", "snapcore", "--json", "--max-per-hour", "0",
            "-o", str(out_dir), str(pid)]


def outcome(code: int, stdout: str, stderr: str) -> dict:
    """The one JSON document of a finished run; never a traceback, at most one
    line on stderr, and an error is one line."""
    assert "Traceback" not in stderr and stderr.count("\n") <= 1, stderr
    try:
        doc = json.loads(stdout)
    except json.JSONDecodeError:
        raise AssertionError(f"exit {code}, not one JSON document: {stdout!r} {stderr!r}") \
            from None
    if code != 0 and "error" in doc:  # (exit 9, a piped core, is a snapshot's document)
        error = doc["error"]
        assert error["exit_code"] == code, doc
        assert "\n" not in error["message"] + error["hint"], doc
    return doc


def summary(stdout: str) -> str:
    """A run's JSON document in one line: the error's message, or the core."""
    try:
        doc = json.loads(stdout)
    except json.JSONDecodeError:
        return repr(stdout[-300:])
    if not doc.get("ok"):
        return str(doc.get("error", {}).get("message"))
    return (f"core {doc.get('core')}, core_pattern {doc.get('core_pattern')}, "
            f"notes {doc.get('notes')}")


def staging_dirs(*bases: Path) -> set[Path]:
    found = set()
    for base in bases:
        if base.is_dir():
            found |= {base / n for n in os.listdir(base) if n.startswith(STAGING_PREFIX)}
    return found


class Staging:
    """The staging directories this test's own snapcore runs leave behind.

    Another test run may snapshot meanwhile, so a new directory in /var/tmp is
    ours only when its name carries the pid of one of our runs
    (.snapcore-staging-PID-...), or, for a name without a pid, when the test
    claims it.  Under our output directory every one is ours."""

    VAR_TMP = Path("/var/tmp")

    def __init__(self):
        self.before = staging_dirs(self.VAR_TMP)
        self.pids: set[int] = set()  # of our snapcore runs
        self.claim = lambda path: False
        self.seen: set[Path] = set()

    def ours(self, path: Path) -> bool:
        if path.parent != self.VAR_TMP:
            return True
        head, dash, _ = path.name[len(STAGING_PREFIX):].partition("-")
        if dash and head.isdigit():  # mkdtemp's own part has no '-'
            return int(head) in self.pids
        try:
            return self.claim(path)
        except OSError:
            return False

    def leftovers(self, out_dir: Path, claim=None) -> list[str]:
        """Ours, still there after 2 s (a run of ours may not be quite done)."""
        self.claim = claim or self.claim
        end = time.monotonic() + 2
        while True:
            left = {p for p in staging_dirs(self.VAR_TMP, out_dir) - self.before if self.ours(p)}
            self.seen |= left
            if not left or time.monotonic() > end:
                return sorted(str(p) for p in left)
            time.sleep(0.05)


@pytest.fixture
def staging():
    watch = Staging()
    yield watch
    for path in watch.seen:
        shutil.rmtree(path, ignore_errors=True)


def snap(out_dir: Path, pid: int, staging: Staging | None = None) -> tuple[int, dict]:
    proc = subprocess.Popen(snapcore_cmd(out_dir, pid), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    if staging is not None:
        staging.pids.add(proc.pid)
    out, err = proc.communicate(timeout=60)
    return proc.returncode, outcome(proc.returncode, out, err)


def harm(victim, allowed: frozenset = frozenset()) -> list[str]:
    """Everything wrong with the target right now (empty: unharmed): dead,
    stopped, traced, a child (zombies included), a thread snapcore added
    (snapcore-fork) still there, a violation it reported.  `allowed`: zombies
    accepted by pid."""
    if victim.proc.poll() is not None:
        return [f"target died: {victim.proc.returncode}"]
    problems = []
    try:
        tids = os.listdir(f"/proc/{victim.pid}/task")
    except FileNotFoundError:
        return ["target gone from /proc"]
    for tid in tids:
        try:
            letter = read_stat(victim.pid, int(tid)).state
            status = Path(f"/proc/{victim.pid}/task/{tid}/status").read_text()
        except (FileNotFoundError, ProcessLookupError):
            continue  # a thread that ended meanwhile
        if letter in "tT":
            problems.append(f"thread {tid} left stopped ({letter})")
        if status.startswith("Name:\tsnapcore-fork\n"):
            problems.append(f"thread {tid} is snapcore's fork thread, still there")
        if "TracerPid:\t0\n" not in status:
            tracer = status.split("TracerPid:\t", 1)[1].split()[0]
            problems.append(f"thread {tid} left traced by {tracer}")
    children = []
    try:
        for child in psutil.Process(victim.pid).children():  # zombies included
            try:
                if child.status() == psutil.STATUS_ZOMBIE and child.pid in allowed:
                    continue
                children.append(f"{child.pid} ({child.status()})")
            except psutil.NoSuchProcess:
                pass  # reaped meanwhile
    except psutil.NoSuchProcess:
        pass
    if children:
        problems.append(f"target has children: {', '.join(children)}")
    problems += [x for x in victim.lines() if x.startswith("VIOLATION")]
    return problems


def fork_pages(pid: int) -> list[int]:
    """Pages a killed snapcore left (engine/leftovers.py recognises them)."""
    from snapcore.engine.leftovers import stale_pages
    from snapcore.linux.maps import read_smaps
    return stale_pages(pid, read_smaps(pid))


def blocked_signals(pid: int) -> dict[str, str]:
    """SigBlk of each thread, from /proc."""
    masks = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            status = Path(f"/proc/{pid}/task/{tid}/status").read_text()
        except (FileNotFoundError, ProcessLookupError):
            continue
        masks[tid] = next(x for x in status.splitlines() if x.startswith("SigBlk:")).split()[1]
    return masks


def settled(victim, timeout: float = 2.0, allowed: frozenset = frozenset()) -> list[str]:
    """Poll /proc until the target is unharmed; what is still wrong after `timeout`."""
    end = time.monotonic() + timeout
    while True:
        problems = harm(victim, allowed)
        if not problems or time.monotonic() > end:
            return problems
        time.sleep(0.02)


# 1. A target that execs itself every ~30 ms: same pid, new address space.

def incarnation(pid: int) -> int:
    args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    return int(args[3]) if len(args) > 4 else 0


# An exec during the dump ends the fork thread (de_thread) and passes the
# child to the thread that exec'd: snapcore ends the child before that exec
# completes (no SIGCHLD for it), and a zombie with exit signal 0 stays, which
# only a __WALL wait (this target's check) finds (docs/kernel-notes.md).
EXEC_LEFTOVER = re.compile(
    r"VIOLATION waitpid\(__WALL\) reaped child \d+ \(status 0x(9|86)\) in \d+")  # killed; dumped


@pytest.mark.slow
def test_exec_loop_target_survives_repeated_snapshots(start_victim, hostile_exe, out_dir):
    victim = start_victim("exec_loop", exe=hostile_exe)
    codes, exec_mid_dump, said_all = [], 0, []
    for i in range(15):
        code, doc = snap(out_dir, victim.pid)
        codes.append(code)
        assert code in (0, ExitCode.NO_SUCH_PROCESS, ExitCode.UNSUPPORTED), \
            f"snapshot {i}: exit {code}: {summary(json.dumps(doc))}"
        said = doc["error"]["message"] if code else " ".join(doc.get("notes", []))
        said_all.append((code, said))
        if code in (0, ExitCode.NO_SUCH_PROCESS) and "during the snapshot" in said:
            exec_mid_dump += 1
        assert victim.proc.poll() is None, \
            f"target died ({victim.proc.returncode}) in snapshot {i}: {doc}\n{harm(victim)}"
        if code == 0:
            core = Path(doc["core"]["path"])
            st = core.lstat()
            assert stat.S_ISREG(st.st_mode) and st.st_nlink == 1, core
            assert prstatus_pids(core) == [victim.pid]
    # At least one snapshot came through: a loop of refusals tests no dump.
    assert 0 in codes, said_all
    # It still execs itself (it was not left stuck in one image) ...
    start = incarnation(victim.pid)
    end = time.monotonic() + 5
    while incarnation(victim.pid) < start + 3:
        assert time.monotonic() < end, f"target stopped exec'ing at {start}: {harm(victim)}"
        time.sleep(0.02)
    # ... and nothing happened to it: alive, untraced, no child, no violation
    # but the zombies an exec mid-dump leaves, one per such snapshot at most.
    problems = settled(victim)
    leftovers = [x for x in problems if EXEC_LEFTOVER.fullmatch(x)]
    assert len(leftovers) <= exec_mid_dump, (said_all, problems)
    assert [x for x in problems if x not in leftovers] == [], (said_all, problems)


# 2. The target exits during the dump and its pid goes to an innocent process.

def reuse_pid(pid: int, start_victim, hostile_exe):
    """Start `innocent` under `pid` (ns_last_pid, then fork); None if someone
    else took the pid first."""
    for _ in range(10):
        Path("/proc/sys/kernel/ns_last_pid").write_text(str(pid - 1))
        victim = start_victim("innocent", exe=hostile_exe)
        if victim.pid == pid:
            return victim
        victim.stop()
        if psutil.pid_exists(pid):
            return None
    return None


@pytest.fixture
def big_out_dir(out_dir):
    """An output directory for large cores, removed afterwards."""
    yield out_dir
    shutil.rmtree(out_dir, ignore_errors=True)


def test_pid_reused_during_the_dump_leaves_the_new_process_alone(start_victim, hostile_exe,
                                                                  big_out_dir):
    out_dir = big_out_dir
    # When does the dump of a 300 MiB target run, counted from snapcore's start?
    calibration = start_victim("exit_mid_dump", exe=hostile_exe, args=("never",))
    started = time.monotonic()
    code, doc = snap(out_dir, calibration.pid)
    total = time.monotonic() - started
    assert code == 0, f"exit {code}: {summary(json.dumps(doc))}"
    calibration.stop()
    Path(doc["core"]["path"]).unlink()
    # Exit a quarter into the dump (0.1 s allowed for what follows the dump).
    exit_at = max(0.0, total - 0.1 - 0.75 * doc["dump_seconds"])

    raced = False
    for _attempt in range(3):
        dying = start_victim("exit_mid_dump", exe=hostile_exe, args=(f"{exit_at:.3f}",))
        pid = dying.pid
        proc = subprocess.Popen(snapcore_cmd(out_dir, pid), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        dying.proc.wait(timeout=30)  # reaped: its pid is free
        assert dying.proc.returncode == 0, \
            f"the target ended with {dying.proc.returncode}, not by itself: {dying.lines()}"
        innocent = reuse_pid(pid, start_victim, hostile_exe)
        born = time.monotonic()
        raced = innocent is not None and proc.poll() is None
        out, err = proc.communicate(timeout=60)
        said = f"snapcore exited {proc.returncode}: {summary(out)} {err}"
        if innocent is not None:
            time.sleep(max(0.0, born + 3 - time.monotonic()))  # it lives 3 s as `pid`
            innocent.wait_for_heartbeats(0)
            assert settled(innocent) == [], said
            innocent.assert_unharmed()
        assert proc.returncode in (0, ExitCode.NO_SUCH_PROCESS, ExitCode.CORE_NOT_WRITTEN), said
        outcome(proc.returncode, out, err)
        if raced:
            break
    assert raced, (f"could not give pid {pid} to a new process while snapcore still ran "
                   f"(exit at {exit_at:.2f} s of a {total:.2f} s run)")


# 3. A seccomp filter that kills any syscall made from inside the vDSO.

def test_seccomp_filter_on_the_vdso(start_victim, hostile_exe, out_dir, tmp_path):
    # The filter works: a syscall from the vDSO's own instruction kills.
    report = tmp_path / "selftest.txt"
    selftest = subprocess.run([str(hostile_exe), "seccomp_vdso", str(report), "selftest"],
                              capture_output=True, timeout=10)
    assert selftest.returncode == -signal.SIGSYS, (selftest, report.read_text())

    victim = start_victim("seccomp_vdso", exe=hostile_exe)
    beats = victim.heartbeats()
    code, doc = snap(out_dir, victim.pid)
    assert code in (0, ExitCode.UNSUPPORTED), f"exit {code}: {summary(json.dumps(doc))}"
    assert victim.proc.poll() is None, f"target killed ({victim.proc.returncode}): {doc}"
    if code == 0:
        core = Path(doc["core"]["path"])
        assert prstatus_pids(core) == [victim.pid]
        trace = gdb(hostile_exe, core, "bt")
        assert "mode_seccomp_vdso" in trace, trace
        assert "Couldn't find general-purpose registers" not in trace, trace
    else:
        assert "seccomp" in doc["error"]["message"].lower(), doc
    victim.wait_for_heartbeats(beats + 1)
    victim.assert_unharmed()


# 4. An unprivileged user races the staging directory with symlinks and hard links.

def file_state(path: Path) -> dict:
    st = path.lstat()
    return {"content": path.read_bytes(), "mode": stat.S_IMODE(st.st_mode),
            "type": stat.S_IFMT(st.st_mode), "uid": st.st_uid, "gid": st.st_gid,
            "nlink": st.st_nlink}


def without_nlink(state: dict) -> dict:
    """While the attacker works its own hard links to the canary come and go."""
    return {k: v for k, v in state.items() if k != "nlink"}


@pytest.fixture
def canaries():
    """A root-only file (0600 in a 0700 directory) for symlinks, and a file of
    another user (daemon) that nobody may hard-link to, beside /var/tmp."""
    root_dir = Path(tempfile.mkdtemp(prefix="snapcore-canary-root-"))
    root_canary = root_dir / "secret"
    root_canary.write_bytes(b"root canary: never to be read, written or moved\n")
    root_canary.chmod(0o600)
    link_dir = Path(tempfile.mkdtemp(prefix="snapcore-canary-", dir="/var/tmp"))
    link_dir.chmod(0o755)
    link_canary = link_dir / "daemon-file"
    link_canary.write_bytes(b"daemon canary: never to be chowned, chmoded or moved\n")
    os.chown(link_canary, 1, 1)
    # With fs.protected_hardlinks=1 nobody may link only to a file it can read
    # and write; that is still a file root must not give away.
    protected = Path("/proc/sys/fs/protected_hardlinks").read_text().strip() != "0"
    link_canary.chmod(0o666 if protected else 0o644)
    yield root_canary, link_canary
    shutil.rmtree(root_dir, ignore_errors=True)
    shutil.rmtree(link_dir, ignore_errors=True)


@pytest.mark.slow
def test_links_planted_in_the_staging_directory(core_pattern, canaries,  # noqa: F811
                                                start_victim, hostile_exe, victim_exe,
                                                out_dir, staging):
    core_pattern("core")
    root_canary, link_canary = canaries
    before = {p: file_state(p) for p in canaries}
    target = start_victim("sleep", exe=victim_exe, user="nobody")
    attacker = start_victim("attacker", exe=hostile_exe, user="nobody",
                            args=(str(root_canary), str(link_canary), str(target.pid)))
    codes = []
    for i in range(20):
        code, doc = snap(out_dir, target.pid, staging)
        codes.append(code)
        for canary in canaries:
            assert without_nlink(file_state(canary)) == without_nlink(before[canary]), \
                f"snapshot {i} (exit {code}) changed {canary}: {summary(json.dumps(doc))}"
        assert code in (0, ExitCode.CORE_NOT_WRITTEN, ExitCode.OUTPUT), \
            f"snapshot {i}: exit {code}: {summary(json.dumps(doc))}"
        if code == 0:
            core = Path(doc["core"]["path"])
            st = core.lstat()
            assert stat.S_ISREG(st.st_mode), f"{core} is not a regular file"
            assert (st.st_nlink, st.st_uid, stat.S_IMODE(st.st_mode)) == (1, 0, 0o600), st
            with open(core, "rb") as f:
                assert ELFFile(f).header["e_type"] == "ET_CORE", core
            assert prstatus_pids(core) == [target.pid]
        assert target.proc.poll() is None, f"target died in snapshot {i}"

    def dirs(word: str) -> set[Path]:
        return {Path(x.split()[1]) for x in attacker.lines() if x.startswith(word + " ")}

    end = time.monotonic() + 3  # let it finish with the last directory
    while dirs("attack") - dirs("result") and time.monotonic() < end:
        time.sleep(0.05)
    attacker.stop()
    # Ours: those the attacker found a copy of the target in (and pid-named ones).
    attacked = dirs("attack")
    # The attacker found a staging directory at least once, and a snapshot
    # came through at least once: else the loop proved nothing.
    assert attacked, f"exit codes {codes}; the attacker: {attacker.lines()}"
    assert 0 in codes, f"exit codes {codes}; the attacker: {attacker.lines()}"
    assert staging.leftovers(out_dir, claim=attacked.__contains__) == [], \
        f"exit codes {codes}; the attacker: {attacker.lines()}"
    assert {p: file_state(p) for p in canaries} == before, codes
    for name in os.listdir(out_dir):
        path = out_dir / name
        if name == ".snapcore":
            continue
        st = path.lstat()
        assert stat.S_ISREG(st.st_mode) and st.st_nlink == 1, f"{path}: {st}"
        assert name.endswith((".core", ".json")), path
    target.wait_for_heartbeats(target.heartbeats())
    target.assert_unharmed()


# 5. snapcore SIGKILLed at every moment it changes the target: at the entry
# of each of its ptrace and wait calls in turn (strace's fault injection is
# the killer: `-e inject=SYSCALL:signal=KILL:when=N` delivers SIGKILL to
# snapcore as it enters its Nth call of that kind).  Every state snapcore
# can leave the target in is the state after some call and before the next.

KILL_POINTS = ("ptrace", "wait4", "waitid")


def kill_points(cmd: list[str], log: Path) -> dict[str, int]:
    """How many calls of each kind one snapshot makes (a run under strace)."""
    subprocess.run(["strace", "-o", str(log), "-e", "trace=" + ",".join(KILL_POINTS),
                    "--", *cmd], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   check=True, timeout=60)
    calls = [line.split("(", 1)[0] for line in log.read_text().splitlines()]
    return {name: calls.count(name) for name in KILL_POINTS}


@pytest.mark.slow
def test_sigkill_at_every_call_leaves_the_target_unharmed(start_victim, tmp_path, staging):
    out_dir = tmp_path / "cores"
    # Its registers and FPU state are checked after each of its calls: a
    # thread that lands (linux/landing.py) must come back exactly as it was.
    victim = start_victim("registers")
    cmd = snapcore_cmd(out_dir, victim.pid)
    counts = kill_points(cmd, tmp_path / "calls.txt")
    assert counts["ptrace"] > 50, counts
    masks = blocked_signals(victim.pid)
    for name, count in counts.items():
        for n in range(1, count + 1):
            # From a fresh sleep: one the last run interrupted sleeps on in
            # restart_syscall, whose restart a landing cannot keep (EINTR;
            # docs/kernel-notes.md, "Landings").
            victim.wait_for_heartbeats(victim.heartbeats())
            proc = subprocess.run(["strace", "-o", "/dev/null", "-e", f"trace={name}",
                                   "-e", f"inject={name}:signal=KILL:when={n}", "--", *cmd],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                  timeout=60)
            problems = settled(victim, timeout=10)
            if not problems:
                now = blocked_signals(victim.pid)
                problems = [f"thread {t} signal mask {now[t]} (was {masks[t]})"
                            for t in now if t in masks and now[t] != masks[t]]
            assert problems == [], (f"snapcore killed entering its {name} call {n} of "
                                    f"{count} (exit {proc.returncode}): {problems}")
    code, doc = snap(out_dir, victim.pid, staging)
    assert code == 0, f"exit {code}: {summary(json.dumps(doc))}"
    assert settled(victim) == []
    assert fork_pages(victim.pid) == [], "the last snapshot left, or did not clear, a page"
    victim.wait_for_heartbeats(victim.heartbeats())
    victim.assert_unharmed()


# 6. snapcore SIGKILLed at random moments.

@pytest.mark.slow
def test_sigkill_at_random_moments(start_victim, threads_exe, fat_preload, big_out_dir,
                                   staging):
    out_dir = big_out_dir
    victim = start_victim("eight", exe=threads_exe,
                          prefix=("nice", "-n", "19", "env", f"LD_PRELOAD={fat_preload}",
                                  "HOSTILE_FAT_MB=100"))
    rss = psutil.Process(victim.pid).memory_info().rss
    assert rss > 100 << 20, f"the preload gave no 100 MiB heap: rss {rss}"
    cmd = snapcore_cmd(out_dir, victim.pid)
    started = time.monotonic()
    code, doc = snap(out_dir, victim.pid, staging)
    typical = time.monotonic() - started
    assert code == 0, f"exit {code}: {summary(json.dumps(doc))}"
    assert settled(victim) == []

    masks = blocked_signals(victim.pid)  # a killed snapcore must leave every mask as it was
    seed = int(os.environ.get("HOSTILE_SEED", time.time()))
    rng = random.Random(seed)
    for i in range(30):
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        staging.pids.add(proc.pid)
        delay = rng.uniform(0, typical)
        time.sleep(delay)  # the random moment itself: nothing to poll for
        proc.kill()
        proc.wait()
        # The fork thread, let go in its page, reaps the child and exits by
        # itself: no zombie, no thread of snapcore's stays; only its page.
        problems = settled(victim, timeout=10)
        now = blocked_signals(victim.pid)
        problems += [f"thread {t} signal mask {now[t]} (was {masks[t]})"
                     for t in now if t in masks and now[t] != masks[t]]
        assert problems == [], (f"SIGKILL {i} after {delay:.3f} s of a {typical:.2f} s run "
                                f"(HOSTILE_SEED={seed}): {problems}")

    code, doc = snap(out_dir, victim.pid, staging)
    assert code == 0, f"exit {code}: {summary(json.dumps(doc))}"
    # A root target's: any under /var/tmp owned by root (a name without a pid).
    assert staging.leftovers(out_dir, claim=lambda p: p.stat().st_uid == 0) == [], \
        f"HOSTILE_SEED={seed}"
    names = set(os.listdir(out_dir)) - {".snapcore"}
    stems = {n.rsplit(".", 1)[0] for n in names}
    expected = {f"{s}.core" for s in stems} | {f"{s}.json" for s in stems}
    assert names == expected, (f"not only complete cores with their records "
                               f"(HOSTILE_SEED={seed}): {sorted(names ^ expected)} "
                               f"in {sorted(names)}")
    for name in names:
        assert (out_dir / name).is_file() and not (out_dir / name).is_symlink(), name
        if name.endswith(".json"):
            try:
                json.loads((out_dir / name).read_text())
            except json.JSONDecodeError:
                raise AssertionError(f"record {name} is incomplete (HOSTILE_SEED={seed})") \
                    from None
    assert settled(victim) == []
    assert fork_pages(victim.pid) == [], "the last snapshot left, or did not clear, a page"
    beats = {x.split()[1] for x in victim.lines() if x.startswith("hb ")}
    assert beats <= {str(victim.pid)}, f"heartbeats from another pid: {beats}"
