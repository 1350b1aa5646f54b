"""The checks judged against a procfs of fixture files: no live process.

tests/fixtures/proc holds what the kernel showed of a `sleep` (its stat,
status and limits, as read; its uid made 1000), the machine's meminfo, and
a cgroup2 host's mountinfo whose cgroup mount (@CGROUP@) each test puts in
its own directory, with the target's cgroup and its limit files there.
Each test changes what its case needs, then runs the check as the
preflight does (linux/facts.py: every file read once) and reads the verdict.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

from snapcore.core.core_pattern import CorePattern
from snapcore.engine import checks_limits, checks_process
from snapcore.engine.plan import Plan
from snapcore.engine.verdicts import OK, REFUSE, WARN, Preflight
from snapcore.linux import procfs, procstat
from snapcore.linux.facts import Facts
from snapcore.linux.maps import Vma

pytestmark = pytest.mark.unit
FIXTURES = Path(__file__).parent / "fixtures" / "proc"
PID = 4242
MiB = 1 << 20
PF_KTHREAD = 0x00200000  # include/linux/sched.h


class Tree:
    """A copy of the fixture procfs in tmp_path, and the cgroup2 mount its
    mountinfo names (the target's cgroup: /system.slice/app.service)."""

    def __init__(self, tmp_path: Path):
        self.proc = tmp_path / "proc"
        shutil.copytree(FIXTURES, self.proc)
        self.cgroup = tmp_path / "cgroup"
        mountinfo = self.proc / "self" / "mountinfo"
        mountinfo.write_text(mountinfo.read_text().replace("@CGROUP@", str(self.cgroup)))
        # Any 64-bit x86_64 executable will do for the target's: this Python.
        (self.proc / str(PID) / "exe").symlink_to(os.path.realpath(sys.executable))
        self.group = self.cgroup / "system.slice" / "app.service"
        self.group.mkdir(parents=True)

    def file(self, name: str) -> Path:
        return self.proc / name

    def set_line(self, name: str, key: str, value: str) -> None:
        """Key:<tab>value in a status file, or in meminfo."""
        path = self.file(name)
        lines = path.read_text().splitlines()
        found = [i for i, line in enumerate(lines) if line.split(":")[0] == key]
        assert found, f"no {key} in {name}"
        lines[found[0]] = f"{key}:\t{value}"
        path.write_text("\n".join(lines) + "\n")

    def set_stat(self, name: str, **numbered) -> None:
        """Fields of a stat file by their proc(5) number: f3="D", f9=flags."""
        path = self.file(name)
        head, rest = path.read_text().rsplit(") ", 1)
        fields = rest.split()
        for key, value in numbered.items():
            fields[int(key[1:]) - 3] = str(value)
        path.write_text(f"{head}) {' '.join(fields)}\n")

    def set_limit(self, name: str, soft: str, hard: str) -> None:
        path = self.file(f"{PID}/limits")
        lines = [f"{line[:26]}{soft:<21}{hard:<21}{line[68:]}" if line.startswith(name) else line
                 for line in path.read_text().splitlines()]
        path.write_text("\n".join(lines) + "\n")

    def cgroup_files(self, directory: Path | None = None, **files: str) -> None:
        """memory_max="100M" writes memory.max."""
        for key, value in files.items():
            ((directory or self.group) / key.replace("_", ".")).write_text(value + "\n")

    def process(self, pid: int, uid: int, threads: int) -> None:
        """Another process, of real uid `uid`, with `threads` tasks."""
        status = self.file(f"{PID}/status").read_text()
        (self.proc / str(pid)).mkdir()
        self.file(f"{pid}/status").write_text(status.replace(
            "Uid:\t1000\t1000\t1000\t1000", f"Uid:\t{uid}\t{uid}\t{uid}\t{uid}"))
        for tid in range(pid, pid + threads):
            (self.proc / str(pid) / "task" / str(tid)).mkdir(parents=True)

    def preflight(self) -> Preflight:
        facts = Facts(PID, str(self.proc))
        return Preflight(Plan(procfs.read(PID, facts), facts, CorePattern("core", uses_pid=False)))


@pytest.fixture
def tree(tmp_path) -> Tree:
    return Tree(tmp_path)


def verdict(pre: Preflight, name: str):
    found = [c for c in pre.checks if c.name == name]
    assert len(found) == 1, pre.checks
    return found[0]


# The readers

def test_stat_fields_by_their_proc5_numbers():
    # Field N holds N * 10; comm holds spaces and parentheses.
    text = "77 (a) (b c) R " + " ".join(str(n * 10) for n in range(4, 53)) + "\n"
    stat = procstat.parse_stat(text)
    assert stat.state == "R"
    assert (stat.ppid, stat.pgrp, stat.session, stat.flags) == (40, 50, 60, 90)
    assert (stat.utime, stat.stime, stat.cutime, stat.cstime) == (140, 150, 160, 170)
    assert (stat.nice, stat.num_threads, stat.starttime) == (190, 200, 220)
    assert (stat.startstack, stat.policy, stat.arg_start, stat.env_end) == (280, 410, 480, 510)
    assert stat.fingerprint == (260, 270, 280, 450, 460, 470, 480, 490, 500, 510)
    # A kernel before 3.5 stops at field 44: the layout's end reads 0.
    short = procstat.parse_stat("77 (x) S " + " ".join(str(n) for n in range(4, 45)))
    assert (short.starttime, short.start_data, short.env_end) == (22, 0, 0)


def test_readers_of_a_real_sleep(tree):
    stat = procstat.read_stat(PID, proc=str(tree.proc))
    assert stat.state == "S" and stat.num_threads == 1 and not stat.kernel_thread
    assert procstat.read_stat(PID, PID, str(tree.proc)) == stat
    limits = procstat.read_limits(PID, str(tree.proc))
    assert limits["Max core file size"] == (0, procstat.RLIM_INFINITY)
    assert limits["Max stack size"] == (8 << 20, procstat.RLIM_INFINITY)
    assert limits["Max realtime priority"] == (0, 0) and len(limits) == 16
    tree.set_line("meminfo", "MemAvailable", "2048 kB")
    info = procstat.read_meminfo(str(tree.proc))
    assert info["MemAvailable"] == 2 * MiB
    assert info["HugePages_Total"] == 0 and "Hugepagesize" in info
    target = tree.preflight().plan.target
    assert (target.uid, target.name, target.threads, target.cmdline) == \
        (1000, "sleep", [PID], ["sleep", "1000"])
    assert (target.core_soft, target.core_hard) == (0, procstat.RLIM_INFINITY)
    assert target.start_time == stat.starttime and target.elf_class == 2


def test_one_preflight_reads_each_file_once(tree):
    tree.cgroup_files(memory_max=str(100 * MiB), memory_current=str(90 * MiB),
                      pids_max="10", pids_current="2")
    pre = tree.preflight()
    checks_limits.check_memory(pre, [_mapping(MiB)], None)
    # Gone now, the facts already read stay: the next check sees the same moment.
    for name in ("self/mountinfo", f"{PID}/cgroup", "meminfo", f"{PID}/limits"):
        tree.file(name).unlink()
    (tree.group / "memory.max").write_text("max\n")
    checks_limits.check_tasks(pre)
    assert "room for 8" in verdict(pre, "tasks").reason
    assert pre.plan.facts.cgroups.memory_headroom() == (str(tree.group / "memory.max"), 10 * MiB)


# permission

def test_permission_with_cap_sys_ptrace(tree):
    pre = tree.preflight()
    checks_process.check_permission(pre)
    check = verdict(pre, "permission")
    assert (check.verdict, check.reason) == (OK, "may trace: CAP_SYS_PTRACE; ptrace_scope 1")


@pytest.mark.parametrize("scope, uid_offset, verdict_, says", [
    ("3", 0, REFUSE, "ptrace_scope is 3: no process may be traced"),
    ("2", 0, REFUSE, "ptrace_scope is 2: only CAP_SYS_PTRACE"),
    ("1", 0, REFUSE, "ptrace_scope is 1: only a parent"),
    ("0", 1, REFUSE, "belongs to uid"),
    ("0", 0, OK, "may trace: same user"),
])
def test_permission_without_the_capability(tree, scope, uid_offset, verdict_, says):
    tree.set_line("self/status", "CapEff", "0000000000000000")
    tree.file("sys/kernel/yama/ptrace_scope").write_text(scope + "\n")
    uid = os.geteuid() + uid_offset
    tree.set_line(f"{PID}/status", "Uid", f"{uid}\t{uid}\t{uid}\t{uid}")
    pre = tree.preflight()
    checks_process.check_permission(pre)
    check = verdict(pre, "permission")
    assert check.verdict == verdict_ and says in check.reason, check


def test_permission_without_yama(tree):
    tree.file("sys/kernel/yama/ptrace_scope").unlink()
    pre = tree.preflight()
    checks_process.check_permission(pre)
    assert verdict(pre, "permission").reason == "may trace: CAP_SYS_PTRACE"


# state

def test_state_running(tree):
    pre = tree.preflight()
    checks_process.check_state(pre)
    check = verdict(pre, "state")
    assert (check.verdict, check.reason) == (OK, "running (state S), 1 thread(s)")


def test_state_thread_in_uninterruptible_sleep(tree):
    tree.set_stat(f"{PID}/task/{PID}/stat", f3="D")
    pre = tree.preflight()
    checks_process.check_state(pre)
    check = verdict(pre, "state")
    assert check.verdict == WARN and check.setting == "timeout"
    assert check.reason == f"1 thread(s) in uninterruptible sleep (e.g. {PID})"


@pytest.mark.parametrize("change, says", [
    (lambda t: t.set_line(f"{PID}/status", "State", "Z (zombie)"), "is a zombie"),
    (lambda t: t.set_line(f"{PID}/status", "State", "T (stopped)"), "is stopped (state T)"),
    (lambda t: t.set_line(f"{PID}/status", "Tgid", "4200"), "is a thread of process 4200"),
    (lambda t: t.set_stat(f"{PID}/stat", f9=PF_KTHREAD), "is a kernel thread"),
    (lambda t: t.cgroup_files(cgroup_events="populated 1\nfrozen 1"), "in a frozen cgroup"),
])
def test_state_refused(tree, change, says):
    change(tree)
    pre = tree.preflight()
    checks_process.check_state(pre)
    check = verdict(pre, "state")
    assert check.verdict == REFUSE and says in check.reason, check


def test_state_frozen_names_the_cgroup(tree):
    tree.cgroup_files(cgroup_events="populated 1\nfrozen 1")
    pre = tree.preflight()
    checks_process.check_state(pre)
    assert f"({tree.group})" in verdict(pre, "state").reason


# memory

def _mapping(rss: int) -> Vma:
    return Vma(0x10000, 0x10000 + rss, "rw-p", 0, 0, "", rss=rss)


def _memory(tree: Tree, rss: int) -> tuple[Preflight, object]:
    pre = tree.preflight()
    checks_limits.check_memory(pre, [_mapping(rss)], None)
    return pre, verdict(pre, "memory")


def test_memory_available(tree):
    tree.set_line("meminfo", "MemAvailable", f"{1 << 20} kB")  # 1 GiB
    pre, check = _memory(tree, 10 * MiB)
    assert (check.verdict, check.reason) == \
        (OK, "copy-on-write worst case 10.0 MiB, 1.0 GiB available")
    plan = pre.plan
    assert (plan.memory_worst, plan.memory_room, plan.memory_limit_file) == (10 * MiB, 1 << 30, "")


def test_memory_over_half_of_what_is_available(tree):
    tree.set_line("meminfo", "MemAvailable", f"{16 << 10} kB")
    _, check = _memory(tree, 10 * MiB)
    assert check.verdict == WARN and "over half of MemAvailable (16.0 MiB)" in check.reason


def test_memory_not_available(tree):
    tree.set_line("meminfo", "MemAvailable", f"{8 << 10} kB")
    _, check = _memory(tree, 10 * MiB)
    assert check.verdict == REFUSE and "MemAvailable is 8.0 MiB" in check.reason


def test_memory_under_the_cgroup_limit(tree):
    tree.cgroup_files(memory_max=str(100 * MiB), memory_current=str(90 * MiB))
    pre, check = _memory(tree, 20 * MiB)
    limit = str(tree.group / "memory.max")
    assert check.verdict == REFUSE
    assert f"its cgroup has 10.0 MiB left below {limit}" in check.reason
    assert (pre.plan.memory_room, pre.plan.memory_limit_file) == (10 * MiB, limit)


def test_memory_the_tightest_limit_on_the_way_up(tree):
    tree.cgroup_files(memory_max=str(1 << 30), memory_current=str(10 * MiB))
    tree.cgroup_files(tree.group.parent, memory_max=str(200 * MiB),
                      memory_current=str(150 * MiB))
    pre, check = _memory(tree, 5 * MiB)
    assert check.verdict == OK
    assert check.reason.endswith(f"50.0 MiB left under its cgroup's limit "
                                 f"({tree.group.parent / 'memory.max'})")


def test_memory_strict_overcommit(tree):
    tree.file("sys/vm/overcommit_memory").write_text("2\n")
    tree.set_line("meminfo", "CommitLimit", f"{100 << 10} kB")
    tree.set_line("meminfo", "Committed_AS", f"{96 << 10} kB")
    _, check = _memory(tree, 10 * MiB)
    assert check.verdict == REFUSE and "strict overcommit leaves 4.0 MiB" in check.reason


@pytest.mark.parametrize("rss, verdict_, says", [
    (60 * MiB, REFUSE, "over half of the 100.0 MiB left there"),
    (10 * MiB, WARN, "memory.oom.group is 1"),
])
def test_memory_oom_group(tree, rss, verdict_, says):
    tree.cgroup_files(memory_oom_group="1", memory_max=str(200 * MiB),
                      memory_current=str(100 * MiB))
    pre, check = _memory(tree, rss)
    assert check.verdict == verdict_ and says in check.reason, check
    assert pre.plan.memory_room == 50 * MiB


def test_memory_cgroup_out_of_sight(tree):
    tree.file(f"{PID}/cgroup").write_text("0::/../../kubepods/pod1/app\n")
    _, check = _memory(tree, MiB)
    assert check.verdict == WARN and check.fix == checks_limits.BLIND_FIX
    assert "(its cgroup is 0::/../../kubepods/pod1/app)" in check.reason


# tasks

def test_tasks_pids_limit(tree):
    tree.cgroup_files(pids_max="10", pids_current="8")
    pre = tree.preflight()
    checks_limits.check_tasks(pre)
    check = verdict(pre, "tasks")
    assert check.verdict == REFUSE and check.setting == "threads"
    assert check.reason.startswith(f"the snapshot adds up to 3 tasks and {tree.group}/pids.max "
                                   "leaves room for 2")


def test_tasks_rlimit_nproc(tree):
    tree.set_limit("Max processes", "6", "6")
    tree.process(4300, 1000, threads=2)
    tree.process(4400, 0, threads=5)  # another user's: not counted
    pre = tree.preflight()
    checks_limits.check_tasks(pre)
    check = verdict(pre, "tasks")
    assert check.verdict == REFUSE
    assert "RLIMIT_NPROC of uid 1000 (6) leaves room for 3" in check.reason


def test_tasks_room(tree):
    tree.set_limit("Max processes", "100", "100")
    tree.cgroup_files(pids_max="max", pids_current="8")
    pre = tree.preflight()
    checks_limits.check_tasks(pre)
    assert (verdict(pre, "tasks").verdict, verdict(pre, "tasks").reason) == \
        (OK, "the snapshot adds up to 3 tasks; room for 99")


def test_tasks_of_root_without_a_limit(tree):
    tree.set_line(f"{PID}/status", "Uid", "0\t0\t0\t0")
    tree.set_limit("Max processes", "6", "6")  # root's user is exempt
    pre = tree.preflight()
    checks_limits.check_tasks(pre)
    assert (verdict(pre, "tasks").verdict, verdict(pre, "tasks").reason) == \
        (OK, "the snapshot adds up to 3 tasks; no task limit")
