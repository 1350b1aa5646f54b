"""Targets near the machine's limits: task limits (pids cgroup, RLIMIT_NPROC), a
sparse core moved across filesystems, MADV_DONTFORK/WIPEONFORK regions, a frozen
cgroup, the child's OOM in a memory cgroup, and a second snapcore mid-dump.

Each cgroup is a v1 sub-cgroup of its own, created per test and removed
afterwards (its processes moved back to the parent first: conftest.cgroup)."""

from __future__ import annotations

import ctypes
import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from snapcore.errors import ExitCode

from conftest import compile_target, gdb, run_snapcore, snap_json
from helpers import check_json, verdicts

TASK_LIMITS = 13  # new exit code: the target is too near its task limits
NOBODY = 65534


@pytest.fixture(scope="session")
def limits_exe(build_dir):
    return compile_target(build_dir, "limits")


def move_into(cg: Path, pid: int) -> None:
    (cg / "cgroup.procs").write_text(str(pid))
    assert str(pid) in (cg / "cgroup.procs").read_text().split()


def tasks_of(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def one_line(proc, stderr: str | None = None) -> str:
    """The single line an error is, on stderr."""
    stderr = proc.stderr if stderr is None else stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, f"exit {proc.returncode}, not one line:\n{stderr}"
    return lines[0]


def steady_tasks(pid: int) -> int:
    """Its task count without the thread it creates and joins every 20 ms."""
    return min(tasks_of(pid) for _ in range(20))


def children_of(pid: int) -> set[int]:
    return {p.pid for p in psutil.Process(pid).children()}


def unharmed(victim, allowed: tuple[str, ...] = ()) -> None:
    """victim.assert_unharmed() for the spawner, which forks children of its own:
    those live for microseconds, a snapshot child left behind stays.  `allowed`:
    violations accepted (a forced snapshot near a limit may make its forks fail)."""
    assert victim.proc.poll() is None, f"target died: {victim.proc.returncode}"
    for tid in os.listdir(f"/proc/{victim.pid}/task"):
        try:
            status = Path(f"/proc/{victim.pid}/task/{tid}/status").read_text()
        except FileNotFoundError:
            continue  # its short-lived thread
        assert "TracerPid:\t0\n" in status, f"thread {tid} left traced"
        assert "\nState:\tt" not in status and "\nState:\tT" not in status, \
            f"thread {tid} left stopped"
    end = time.monotonic() + 2
    while kids := children_of(victim.pid):
        assert time.monotonic() < end, f"target has children: {kids}"
        time.sleep(0.005)
    lines = victim.lines()
    assert [x for x in lines if x.startswith("VIOLATION") and x not in allowed] == []
    beats = {x.split()[1] for x in lines if x.startswith("hb ")}
    assert beats <= {str(victim.pid)}, f"heartbeats from another pid: {beats}"


def refused_for_tasks(victim, out_dir: Path, limit_name: str) -> None:
    """snapcore and snapcore check refuse with exit 13 naming `limit_name`;
    the target is untouched; --force tasks goes ahead."""
    beats = victim.heartbeats()
    proc = run_snapcore("--max-per-hour", "0", "-o", str(out_dir), str(victim.pid))
    assert proc.returncode == TASK_LIMITS, f"exit {proc.returncode}: {proc.stderr}"
    assert limit_name in one_line(proc)
    code, doc = check_json("-o", str(out_dir), str(victim.pid))
    assert verdicts(doc).get("tasks") == "refuse", doc["checks"]
    assert code == TASK_LIMITS
    victim.wait_for_heartbeats(beats + 10)  # ten rounds of its own fork + thread
    unharmed(victim)

    code, doc = snap_json("--force", "tasks", "--max-per-hour", "0", "-o", str(out_dir),
                          str(victim.pid))
    assert code not in (ExitCode.USAGE, TASK_LIMITS), doc
    victim.wait_for_heartbeats(victim.heartbeats() + 5)
    unharmed(victim, allowed=("VIOLATION fork EAGAIN", "VIOLATION pthread_create EAGAIN"))


# 1. Task headroom in a pids cgroup

def test_pids_cgroup_without_headroom_is_refused(start_victim, limits_exe, cgroup, out_dir):
    victim = start_victim("spawner", exe=limits_exe)
    count = steady_tasks(victim.pid)
    assert count == 5  # main + 4 idle threads
    # Its own fork and thread still fit; a copy with one task per thread would not.
    cg = cgroup("pids", pids__max=count + 3)
    move_into(cg, victim.pid)
    victim.wait_for_heartbeats(victim.heartbeats() + 5)
    unharmed(victim)  # it runs fine at this limit
    refused_for_tasks(victim, out_dir, "pids.max")


def test_pids_cgroup_with_ample_headroom(start_victim, limits_exe, cgroup, out_dir):
    victim = start_victim("spawner", exe=limits_exe)
    cg = cgroup("pids", pids__max=steady_tasks(victim.pid) + 100)
    move_into(cg, victim.pid)
    code, doc = snap_json("--max-per-hour", "0", "-o", str(out_dir), str(victim.pid))
    assert code == 0, doc
    victim.wait_for_heartbeats(victim.heartbeats() + 10)
    unharmed(victim)


# 2. RLIMIT_NPROC

def tasks_of_uid(uid: int, but_children_of: int) -> int:
    """Tasks (threads) whose real uid is `uid`, as RLIMIT_NPROC counts them,
    leaving out the short-lived children of `but_children_of`."""
    count = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            status = Path(f"/proc/{entry}/status").read_text()
            fields = dict(line.split(":\t", 1) for line in status.splitlines()
                          if ":\t" in line)
            if int(fields["Uid"].split()[0]) != uid or \
                    int(fields["PPid"]) == but_children_of:
                continue
            count += int(fields["Threads"])
        except (OSError, KeyError, ValueError):
            continue
    return count


def as_nobody() -> None:
    os.setgroups([])
    os.setgid(NOBODY)
    os.setuid(NOBODY)


def test_rlimit_nproc_without_headroom_is_refused(start_victim, limits_exe, out_dir):
    victim = start_victim("spawner", exe=limits_exe, user="nobody")
    limit = min(tasks_of_uid(NOBODY, victim.pid) for _ in range(5)) + 3
    # Set by nobody: root here lacks CAP_SYS_RESOURCE, which prlimit on another
    # user's process needs; the owner may always lower its own limits.
    subprocess.run(["prlimit", f"--pid={victim.pid}", f"--nproc={limit}"], check=True,
                   preexec_fn=as_nobody)
    nproc = next(line.split()[2:4] for line in
                 Path(f"/proc/{victim.pid}/limits").read_text().splitlines()
                 if line.startswith("Max processes"))
    assert nproc == [str(limit), str(limit)]
    victim.wait_for_heartbeats(victim.heartbeats() + 5)
    unharmed(victim)  # it runs fine at this limit
    refused_for_tasks(victim, out_dir, "RLIMIT_NPROC")


# 3. A sparse core stored on another filesystem

@pytest.fixture
def small_fs(tmpfs):
    return tmpfs("64m")


def staging_dirs() -> set[str]:
    return {p for p in os.listdir("/var/tmp") if p.startswith(".snapcore-staging-")}


def test_sparse_core_stays_sparse_across_filesystems(start_victim, limits_exe, small_fs):
    # A target of another user: the kernel writes its core under /var/tmp,
    # snapcore then moves it onto the 64 MiB tmpfs.
    victim = start_victim("sparse", exe=limits_exe, user="nobody")
    pages = [(int(x.split()[1], 16), x.split()[2]) for x in victim.lines()
             if x.startswith("addr ")]
    assert len(pages) == 4
    before = staging_dirs()
    out = small_fs / "cores"

    code, doc = snap_json("--max-per-hour", "0", "-o", str(out), str(victim.pid))

    assert code == 0, doc
    core = Path(doc["core"]["path"])
    assert core.parent == out
    st = core.stat()
    assert st.st_size > 8 << 30, st.st_size
    assert st.st_blocks * 512 < 8 << 20, f"{st.st_blocks * 512} bytes on disk"
    assert stat.S_IMODE(st.st_mode) == 0o600
    assert staging_dirs() <= before
    commands = [f"x/gx {addr:#x}" for addr, _ in pages] + \
               [f"x/gx {addr + 4088:#x}" for addr, _ in pages]
    text = gdb(limits_exe, core, *commands)
    for addr, value in pages:
        for at in (addr, addr + 4088):
            assert f"{at:#x}:\t{value}" in text, f"{at:#x} should hold {value}:\n{text}"
    victim.wait_for_heartbeats(victim.heartbeats())
    victim.assert_unharmed()


# 4. MADV_DONTFORK and MADV_WIPEONFORK regions

def mapping_bounds(pid: int, address: int) -> tuple[int, int]:
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        start, end = (int(x, 16) for x in line.split()[0].split("-"))
        if start <= address < end:
            return start, end
    raise AssertionError(f"{address:#x} is not mapped in {pid}")


def regions(listed: list[dict]) -> list[dict]:
    """start, end and kind of each entry (other keys may come along), by start."""
    return sorted(({k: r[k] for k in ("kind", "start", "end")} for r in listed),
                  key=lambda r: r["start"])


def test_dontfork_and_wipeonfork_regions_are_reported_missing(start_victim, limits_exe,
                                                              out_dir):
    victim = start_victim("forkflags", exe=limits_exe)
    reported = {x.split()[0]: int(x.split()[1], 16) for x in victim.lines()
                if x.startswith(("dontfork ", "wipeonfork "))}
    expected = sorted(({"kind": kind, "start": s, "end": e} for kind, (s, e) in
                       ((k, mapping_bounds(victim.pid, a)) for k, a in reported.items())),
                      key=lambda r: r["start"])
    assert [r["end"] - r["start"] for r in expected] == [1 << 20, 1 << 20]

    code, doc = snap_json("-o", str(out_dir), str(victim.pid))

    assert code == 0, doc
    assert "regions_missing" in doc, sorted(doc)
    assert regions(doc["regions_missing"]) == expected
    record = json.loads(Path(doc["core"]["record"]).read_text())
    assert "regions_missing" in record, sorted(record)
    assert regions(record["regions_missing"]) == expected
    victim.wait_for_heartbeats(victim.heartbeats() + 1)  # it checked pattern and flags
    victim.assert_unharmed()


# 5. A frozen cgroup

def test_frozen_target_is_refused_quickly(start_victim, cgroup, out_dir):
    victim = start_victim("sleep")
    cg = cgroup("freezer")
    move_into(cg, victim.pid)
    beats = victim.heartbeats()
    try:
        (cg / "freezer.state").write_text("FROZEN")
        end = time.monotonic() + 10
        while (cg / "freezer.state").read_text().strip() != "FROZEN":
            assert time.monotonic() < end, "the cgroup never froze"
            time.sleep(0.01)
        started = time.monotonic()
        try:
            proc = run_snapcore("-o", str(out_dir), str(victim.pid), timeout=30)
        except subprocess.TimeoutExpired:
            raise AssertionError("snapcore still ran after 30 s on a frozen target") from None
        took = time.monotonic() - started
        assert proc.returncode == ExitCode.UNSUPPORTED, \
            f"exit {proc.returncode} after {took:.1f} s: {proc.stderr}"
        assert "frozen" in one_line(proc).lower()
        assert took < 15, f"{took:.1f} s"
    finally:
        (cg / "freezer.state").write_text("THAWED")
    victim.wait_for_heartbeats(beats)
    victim.assert_unharmed()


# 6. The child's OOM in a memory cgroup

@pytest.fixture
def rewriter_near_its_memory_limit(start_victim, limits_exe, cgroup):
    """A target rewriting a 200 MiB heap, started inside a memory cgroup (so
    its memory is charged there) limited to its usage + 64 MiB."""
    cg = cgroup("memory")
    victim = start_victim("rewriter", exe=limits_exe,
                          prefix=("sh", "-c", f'echo $$ > {cg}/cgroup.procs && exec "$@"',
                                  "sh"))
    usage = int((cg / "memory.usage_in_bytes").read_text())
    assert usage > 200 << 20, usage
    (cg / "memory.limit_in_bytes").write_text(str(usage + (64 << 20)))
    victim.wait_for_heartbeats(victim.heartbeats() + 1)
    victim.assert_unharmed()
    return victim, cg


def oom_kills(cg: Path) -> int:
    fields = dict(line.split() for line in (cg / "memory.oom_control").read_text()
                  .splitlines())
    return int(fields.get("oom_kill", 0))


def test_memory_cgroup_v1_limit_is_refused(rewriter_near_its_memory_limit, out_dir):
    victim, cg = rewriter_near_its_memory_limit
    proc = run_snapcore("-o", str(out_dir), str(victim.pid))
    assert proc.returncode == ExitCode.MEMORY, f"exit {proc.returncode}: {proc.stderr}"
    assert "memory.limit_in_bytes" in one_line(proc)
    victim.wait_for_heartbeats(victim.heartbeats() + 1)
    victim.assert_unharmed()
    assert oom_kills(cg) == 0


def test_forced_past_memory_cgroup_v1_limit_the_child_goes_not_the_target(
        rewriter_near_its_memory_limit, out_dir):
    """Forced past the memory check: the dump's controller abandons the child
    as its copies near the room (or, if the copies outrun it, the OOM killer
    takes the child, oom_score_adj 1000); the target lives on."""
    victim, cg = rewriter_near_its_memory_limit
    proc = run_snapcore("--force", "memory", "-o", str(out_dir), str(victim.pid))
    assert victim.proc.poll() is None, \
        f"the target died ({victim.proc.returncode}); OOM kills: {oom_kills(cg)}"
    assert proc.returncode in (0, ExitCode.CORE_NOT_WRITTEN), \
        f"exit {proc.returncode}: {proc.stderr}"
    if proc.returncode == ExitCode.CORE_NOT_WRITTEN:
        line = one_line(proc)
        abandoned = "copy-on-write copies reached" in line and "the child was killed" in line
        oom = "oom" in line.lower() or "out of memory" in line.lower()
        assert abandoned or oom, line
        assert "core_pattern" not in line, line
        assert abandoned or oom_kills(cg) >= 1
    victim.wait_for_heartbeats(victim.heartbeats() + 1)
    victim.assert_unharmed()


# 7. A second snapcore while the first one dumps

def shares_memory(pid: int, other: int) -> bool:
    """kcmp(KCMP_VM): whether two processes have one address space."""
    return ctypes.CDLL(None, use_errno=True).syscall(312, pid, other, 1, 0, 0) == 0


def copy_traced_by(tracer: int, target: int) -> int | None:
    """A live process traced by `tracer` that is a copy of `target`: not the
    target, and not a task sharing its memory (an intermediate clone).  Only
    processes started after the tracer (a higher pid) are looked at."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) <= tracer or int(entry) == target:
            continue
        try:
            status = Path(f"/proc/{entry}/status").read_text()
        except OSError:
            continue
        if f"\nTracerPid:\t{tracer}\n" in status and "\nState:\tZ" not in status \
                and not shares_memory(target, int(entry)):
            return int(entry)
    return None


def status_of(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return ""


def alive(pid: int) -> bool:
    return status_of(pid) != "" and "\nState:\tZ" not in status_of(pid)


def freeze(cg: Path, pid: int) -> None:
    move_into(cg, pid)
    (cg / "freezer.state").write_text("FROZEN")
    end = time.monotonic() + 10
    while (cg / "freezer.state").read_text().strip() != "FROZEN":
        assert time.monotonic() < end, "the cgroup never froze"
        time.sleep(0.01)


@pytest.mark.parametrize("second_dir", ["same", "other"])
def test_second_snapcore_during_a_dump_is_busy(second_dir, start_victim, limits_exe, cgroup,
                                               tmp_path, out_dir):
    """The first snapcore is caught once its copy of the target exists and the
    target is released, and frozen there (a freezer cgroup, not a signal) so
    that it stays mid-snapshot, however fast the dump, until the second one
    has answered; then thawed to finish."""
    victim = start_victim("hold", exe=limits_exe)  # 300 MiB written
    hold = cgroup("freezer")
    first = subprocess.Popen([sys.executable, "-m", "snapcore", "--max-per-hour", "0",
                              "-o", str(out_dir), str(victim.pid)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    other = out_dir if second_dir == "same" else tmp_path / "other-cores"
    try:
        end = time.monotonic() + 20
        kid = None
        while True:
            assert first.poll() is None, f"the first snapcore ended (exit " \
                f"{first.returncode}) before its copy was seen: {first.stderr.read()}"
            assert time.monotonic() < end, "the first snapcore made no copy of the target"
            kid = kid or copy_traced_by(first.pid, victim.pid)
            if kid and "TracerPid:\t0\n" in status_of(victim.pid):
                break  # the copy exists, the target is released: mid-snapshot
            time.sleep(0.002)
        freeze(hold, first.pid)
        assert alive(kid), "the copy is gone"
        second = run_snapcore("--max-per-hour", "0", "-o", str(other), str(victim.pid),
                              timeout=50)
        (hold / "freezer.state").write_text("THAWED")
        _, err = first.communicate(timeout=50)
    finally:
        (hold / "freezer.state").write_text("THAWED")
        if first.poll() is None:
            first.kill()
            first.wait()
    assert second.returncode == ExitCode.BUSY, f"exit {second.returncode}: {second.stderr}"
    line = one_line(second)
    assert "busy" in line.lower() or "already" in line.lower(), line
    assert "run as root" not in line, line
    assert first.returncode == 0, err
    victim.wait_for_heartbeats(victim.heartbeats())
    victim.assert_unharmed()
