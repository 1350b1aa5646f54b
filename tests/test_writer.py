"""snapcore's own core writer against the kernel's: the same core of the same
process, read by gdb, elfutils and pyelftools; where `auto` picks it (a pipe
core_pattern, a hard RLIMIT_CORE of 0); what it leaves out and what it
leaves as holes; compression while writing; standard output."""

from __future__ import annotations

import json
import os
import platform
import pty
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
from elftools.elf.elffile import ELFFile

from conftest import compile_target, run_snapcore, snap_json
from helpers import check_json, cores_in, prstatus_pids
from snapcore.linux.maps import read_smaps

EIGHT = ["main_busy", "sleeper_thread", "condvar_thread", "pipe_reader_thread", "busy_thread",
         "ymm_thread", "mutex_waiter_thread", "sleeper2_thread"]
BUSY = {"main_busy": "main_busy", "busy_thread": "busy_thread_loop"}
# The machine's two CPUs are shared (and the targets' threads spin): an
# idle-priority dump could wait long before the controller steps it up.
FAST = ("--dump-deadline", "1")
YMM = bytes(range(1, 33))
GIB = 1 << 30


@pytest.fixture(scope="session")
def fidelity_exe(build_dir):
    return compile_target(build_dir, "fidelity")


def announced(victim) -> dict[str, int]:
    return {line.split()[1]: int(line.split()[2]) for line in victim.lines()
            if line.startswith("thread ")}


def address(victim, what: str) -> int:
    return int(next(line.split()[1] for line in victim.lines() if line.startswith(what + " ")),
               16)


SECTIONS = {"bt": "bt", "threads": "info threads", "all_bt": "thread apply all bt",
            "pc": "thread apply all p/x $pc", "sp": "thread apply all p/x $sp",
            "ymm": "thread apply all p/x $ymm0.v4_int64", "libs": "info sharedlibrary",
            "auxv": "info auxv"}
ARM64 = platform.machine() == "aarch64"
if ARM64:  # the ymm thread's 32 bytes are in v0 and v1 (tests/targets/fidelity.c)
    SECTIONS["ymm"] = "thread apply all p/x $v0.d.u"


def gdb_report(exe: Path, core: Path, pattern: int) -> dict[str, str]:
    """One gdb run: each command's output under its name."""
    cmd = ["gdb", "-batch", "-nx"]
    for name, command in [*SECTIONS.items(), ("pattern", f"x/16xb {pattern:#x}")]:
        cmd += ["-ex", f"echo @@{name}\\n", "-ex", command]
    out = subprocess.run(cmd + [str(exe), str(core)], capture_output=True, text=True,
                         timeout=120).stdout
    parts = re.split(r"^@@(\w+)\n", out, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2]))


def per_thread(text: str) -> dict[int, str]:
    sections: dict[int, str] = {}
    current = None
    for line in text.splitlines():
        m = re.match(r"^Thread \d+ \(.*LWP (\d+)\)\)?:$", line)
        if m:
            current = int(m.group(1))
            sections[current] = ""
        elif current is not None and not line.startswith("warning:"):
            sections[current] += re.sub(r"^\$\d+ = ", "", line) + "\n"  # value history numbers
    return sections


def functions(bt: str) -> list[str]:
    return re.findall(r"^#\d+\s+(?:0x[0-9a-f]+ in )?(\w+)", bt, re.M)


def loads(core: Path) -> list[tuple[int, int, int, int]]:
    with open(core, "rb") as f:
        return [(s["p_vaddr"], s["p_memsz"], s["p_flags"], s["p_filesz"])
                for s in ELFFile(f).iter_segments() if s["p_type"] == "PT_LOAD"]


def notes(core: Path) -> list[tuple[str, bytes]]:
    """Every note, read with pyelftools (n_type, raw descriptor)."""
    out = []
    with open(core, "rb") as f:
        for segment in ELFFile(f).iter_segments():
            if segment["p_type"] == "PT_NOTE":
                for n in segment.iter_notes():
                    f.seek(n["n_offset"] + 12 + ((n["n_namesz"] + 3) & ~3))
                    out.append((n["n_type"], f.read(n["n_descsz"])))
    return out


def build_ids(core: Path) -> dict[str, str]:
    """Module path -> build-id, as elfutils finds them in the core's memory."""
    out = subprocess.run(["eu-unstrip", "-n", f"--core={core}"], capture_output=True,
                         text=True, timeout=60).stdout
    ids = {}
    for line in out.splitlines():
        fields = line.split()
        if len(fields) >= 5 and "@" in fields[1]:  # RANGE BUILDID@ADDR FILE DEBUG NAME
            ids[fields[4]] = fields[1].split("@")[0]
    return ids


def test_both_writers_make_the_same_core(core_pattern, start_victim, fidelity_exe, out_dir):
    core_pattern("core")  # the kernel writes a file (the machine's setting, whatever it was)
    victim = start_victim("run", exe=fidelity_exe)
    tids = announced(victim)
    assert sorted(tids) == sorted(EIGHT)
    pattern, dontdump = address(victim, "pattern"), address(victim, "dontdump")
    cores, docs = {}, {}
    for writer in ("kernel", "snapcore"):
        code, doc = snap_json("--writer", writer, "--max-per-hour", "0", *FAST, "-o",
                              str(out_dir), str(victim.pid))
        assert code == 0, doc
        assert doc["writer"]["name"] == writer and doc["threads"] == 8
        assert doc["thread_map"][0]["tid"] == victim.pid  # the core's first thread
        cores[writer], docs[writer] = Path(doc["core"]["path"]), doc
    reports = {w: gdb_report(fidelity_exe, c, pattern) for w, c in cores.items()}
    kernel, own = reports["kernel"], reports["snapcore"]

    for r in reports.values():
        # gdb opens both on the main thread, busy in its loop.
        assert "main_busy" in r["bt"] and re.search(r"\bmain \(", r["bt"]), r["bt"]
        assert re.search(r"^\* 1 .*LWP %d\)" % victim.pid, r["threads"], re.M), r["threads"]
        assert sorted(int(x) for x in re.findall(r"LWP (\d+)", r["threads"])) == \
            sorted(tids.values())
    stacks = {w: per_thread(r["all_bt"]) for w, r in reports.items()}
    pcs = {w: per_thread(r["pc"]) for w, r in reports.items()}
    sps = {w: per_thread(r["sp"]) for w, r in reports.items()}
    for name, tid in tids.items():
        if name in BUSY:  # running: somewhere inside its loop in each
            for w in cores:
                assert BUSY[name] in stacks[w][tid], (w, name, stacks[w][tid])
            continue
        assert functions(stacks["kernel"][tid]) == functions(stacks["snapcore"][tid]), name
        assert pcs["kernel"][tid] == pcs["snapcore"][tid], name
        assert sps["kernel"][tid] == sps["snapcore"][tid], name
        assert name in stacks["snapcore"][tid]
    ymm = {w: per_thread(r["ymm"]) for w, r in reports.items()}
    assert ymm["kernel"][tids["ymm_thread"]] == ymm["snapcore"][tids["ymm_thread"]]
    assert "0x807060504030201" in ymm["snapcore"][tids["ymm_thread"]]
    expected = "\t".join(f"0x{(i * 7 + 3) & 0xff:02x}" for i in range(8))
    for r in reports.values():
        assert expected in r["pattern"], r["pattern"]
    assert kernel["pattern"] == own["pattern"]
    assert kernel["libs"] == own["libs"] and "libc.so" in own["libs"]
    assert kernel["auxv"] == own["auxv"] and "AT_ENTRY" in own["auxv"]

    # The same mappings, dumped the same way (layout: see core/dumprules.py).
    assert loads(cores["kernel"]) == loads(cores["snapcore"])
    for core in cores.values():
        by_start = {v: (memsz, filesz) for v, memsz, _, filesz in loads(core)}
        assert by_start[dontdump] == (1 << 20, 0)  # MADV_DONTDUMP: not in the core
    # Every note readable by pyelftools and elfutils; the same notes in the same
    # order; the ymm thread's registers as it set them.
    kinds = {w: [t for t, _ in notes(c)] for w, c in cores.items()}
    assert kinds["snapcore"] == [k for k in kinds["kernel"] if k != 0x205]  # XSAVE_LAYOUT
    for core in cores.values():
        proc = subprocess.run(["eu-readelf", "-n", str(core)], capture_output=True, text=True)
        assert proc.returncode == 0 and proc.stderr == "", proc.stderr
        assert "NT_PRPSINFO" in proc.stdout or "PRPSINFO" in proc.stdout
        if ARM64:  # NT_PRFPREG: vregs[32] first
            fpsimd = [d for t, d in notes(core) if t in ("NT_FPREGSET", "NT_PRFPREG", 2)]
            assert any(d[0:16] == YMM[:16] and d[16:32] == YMM[16:] for d in fpsimd)
        else:
            xstates = [d for t, d in notes(core) if t in ("NT_X86_XSTATE", 0x202)]
            assert any(d[160:176] == YMM[:16] and d[576:592] == YMM[16:] for d in xstates)
        assert sorted(prstatus_pids(core)) == sorted(tids.values())
        assert prstatus_pids(core)[0] == victim.pid
    ids = {w: build_ids(c) for w, c in cores.items()}
    assert ids["kernel"] == ids["snapcore"] and str(fidelity_exe) in ids["snapcore"]
    exe_id = re.search(r"Build ID: (\w+)", subprocess.run(
        ["readelf", "-n", str(fidelity_exe)], capture_output=True, text=True).stdout).group(1)
    assert ids["snapcore"][str(fidelity_exe)] == exe_id
    victim.wait_for_heartbeats(victim.heartbeats())
    victim.assert_unharmed()


def test_a_huge_reservation_touched_in_four_pages_is_a_small_sparse_file(
        start_victim, fidelity_exe, out_dir):
    """8 GiB mapped, four pages written: the whole mapping in the core (it
    was written: anon_vma), as holes but for those pages.  (The kernel's
    writer takes about a minute here, page by page: docs/benchmarks.md.)"""
    victim = start_victim("big", exe=fidelity_exe)
    reservation, dontdump = address(victim, "reservation"), address(victim, "dontdump")
    code, doc = snap_json("--writer", "snapcore", *FAST, "-o", str(out_dir), str(victim.pid))
    assert code == 0, doc
    core = Path(doc["core"]["path"])
    by_start = {v: (memsz, filesz) for v, memsz, _, filesz in loads(core)}
    assert by_start[reservation] == (8 * GIB, 8 * GIB)
    assert by_start[dontdump] == (1 << 20, 0)
    assert core.stat().st_size > 8 * GIB and core.stat().st_blocks * 512 < 64 << 20
    out = subprocess.run(["gdb", "-batch", "-nx", "-ex",
                          f"x/2xb {reservation + 4 * GIB + 2 * 4096}", "-ex",
                          f"x/2xb {reservation + 4096 * 9}", str(fidelity_exe), str(core)],
                         capture_output=True, text=True).stdout
    assert "0x43	0x00" in out and out.count("0x00	0x00") == 1, out
    victim.assert_unharmed()


@pytest.fixture
def handler(tmp_path):
    """A pipe handler that leaves a mark, named by the dumping process's pid,
    when the kernel runs it (core_pattern is the machine's: other processes
    may crash meanwhile)."""
    marks = tmp_path / "marks"
    marks.mkdir()
    script = tmp_path / "handler.sh"
    script.write_text(f"#!/bin/sh\ntouch {marks}/$1\ncat > /dev/null\n")
    script.chmod(0o755)
    return script, marks


def handler_ran_for(marks: Path, *pids: int) -> bool:
    # A handler that never runs leaves no condition to wait for: the time it
    # would take to run (a fork and exec by the kernel, well under 0.3 s) is
    # the point.
    time.sleep(0.3)
    return any((marks / str(pid)).exists() for pid in pids)


def test_pipe_core_pattern_gets_snapcores_writer(core_pattern, handler, start_victim,
                                                 threads_exe, out_dir):
    script, ran = handler
    core_pattern(f"|{script} %P")
    victim = start_victim("eight", exe=threads_exe)
    code, doc = check_json("-o", str(out_dir), str(victim.pid))
    assert code == 0 and doc["writer"]["name"] == "snapcore"
    assert "pipes cores to" in doc["writer"]["reason"]

    code, doc = snap_json(*FAST, "-o", str(out_dir), str(victim.pid))

    assert code == 0, doc
    assert doc["writer"]["name"] == "snapcore" and doc["threads"] == 8
    core = Path(doc["core"]["path"])
    assert core.parent == out_dir and cores_in(out_dir) == [core.name]
    assert sorted(prstatus_pids(core)) == sorted(t["tid"] for t in doc["thread_map"])
    record = json.loads(Path(doc["core"]["record"]).read_text())
    assert record["writer"]["name"] == "snapcore" and "pipes" in record["writer"]["reason"]
    assert not handler_ran_for(ran, doc["child_pid"], victim.pid)  # the crash handler never ran
    victim.wait_for_heartbeats(victim.heartbeats())
    victim.assert_unharmed()


def test_pid_and_mount_namespace_with_a_pipe(core_pattern, handler, threads_exe, tmp_path,
                                            out_dir):
    """A container: the core names the threads as the container does, and no
    staging directory is made in the container's files (snapcore writes the
    core from its own process, into its own output directory)."""
    script, ran = handler
    core_pattern(f"|{script} %P")
    report = tmp_path / "report.txt"
    outer = subprocess.Popen(["unshare", "--pid", "--mount", "--fork", "--kill-child",
                              "--mount-proc", str(threads_exe), "eight", str(report)],
                             stdout=subprocess.PIPE)
    try:
        assert outer.stdout.readline() == b"ready\n"
        pid = psutil.Process(outer.pid).children()[0].pid
        inside = sorted(int(line.split()[2]) for line in report.read_text().splitlines()
                        if line.startswith("thread "))
        code, doc = snap_json(*FAST, "-o", str(out_dir), str(pid))
        assert code == 0, doc
        assert doc["writer"]["name"] == "snapcore"
        core = Path(doc["core"]["path"])
        assert sorted(prstatus_pids(core)) == inside and prstatus_pids(core)[0] == 1
        psinfo = next(d for t, d in notes(core) if t == "NT_PRPSINFO")
        assert int.from_bytes(psinfo[24:28], "little") == 1  # pr_pid as the container sees it
        assert not any(p.startswith(".snapcore") for p in os.listdir(f"/proc/{pid}/root/var/tmp"))
        assert not handler_ran_for(ran, doc["child_pid"], pid)
        assert psutil.Process(pid).children() == []
        assert "TracerPid:\t0" in Path(f"/proc/{pid}/status").read_text()
        assert "VIOLATION" not in report.read_text()
    finally:
        outer.kill()
        outer.wait()


def test_hard_core_limit_zero_gets_a_core(core_pattern, start_victim, out_dir):
    core_pattern("core")
    victim = start_victim("sleep", core_limit=(0, 0))
    code, doc = check_json("-o", str(out_dir), str(victim.pid))
    assert code == 0 and doc["writer"]["name"] == "snapcore"
    assert "gcore ignores the limit too" in doc["writer"]["reason"]
    code, doc = snap_json(*FAST, "-o", str(out_dir), str(victim.pid))
    assert code == 0, doc
    assert prstatus_pids(Path(doc["core"]["path"])) == [victim.pid]
    victim.wait_for_heartbeats(victim.heartbeats())
    victim.assert_unharmed()


def test_coredump_filter_is_honoured(start_victim, out_dir):
    """Bit 2 (file-backed private) dumps every file mapping whole; without
    bit 0 (anonymous private) the heap is left out."""
    victim = start_victim("fat")
    heap = max(read_smaps(victim.pid), key=lambda v: v.anonymous).start  # its 24 MiB
    filesz = {}
    for bits in ("0x33", "0x36"):
        Path(f"/proc/{victim.pid}/coredump_filter").write_text(bits)
        code, doc = snap_json("--writer", "snapcore", "--max-per-hour", "0", *FAST, "-o",
                              str(out_dir), str(victim.pid))
        assert code == 0, doc
        filesz[bits] = {v: f for v, _, _, f in loads(Path(doc["core"]["path"]))}
    libc = [v for v, _, flags, _ in loads(Path(doc["core"]["path"])) if flags == 5]
    assert filesz["0x33"][heap] >= 24 << 20 and filesz["0x36"][heap] == 0
    assert all(filesz["0x36"][v] > 0 for v in libc)
    if ARM64:  # aarch64's code segments start at file offset 0 (glibc's, the program's):
        # without bit 2 each keeps only its ELF header page (vma_dump_size's ELF_HEADERS)
        assert all(filesz["0x33"][v] <= 4096 for v in libc)
        assert any(filesz["0x36"][v] > 4096 for v in libc)
    else:
        assert any(filesz["0x33"][v] == 0 for v in libc)
    victim.assert_unharmed()


def test_compress_never_puts_the_raw_core_on_disk(start_victim, victim_exe, out_dir):
    victim = start_victim("fat")
    out_dir.mkdir()
    seen: set[str] = set()
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            seen.update(os.listdir(out_dir))

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        code, doc = snap_json("--compress", "-o", str(out_dir), "--writer", "snapcore",
                              *FAST, str(victim.pid))
    finally:
        done.set()
        watcher.join()
    assert code == 0, doc
    assert any(name.endswith(".core.zst") for name in seen)  # the watcher saw the write
    assert [name for name in seen if not name.endswith((".zst", ".json", ".part"))
            and name != ".snapcore"] == []
    packed = Path(doc["core"]["path"])
    assert packed.name.endswith(".core.zst")
    raw = out_dir / "unpacked.core"
    subprocess.run(["zstd", "-q", "-d", str(packed), "-o", str(raw)], check=True)
    bt = subprocess.run(["gdb", "-batch", "-nx", "-ex", "bt", str(victim_exe), str(raw)],
                        capture_output=True, text=True).stdout
    assert "main" in bt, bt
    victim.assert_unharmed()


def test_stdout_to_a_file_and_never_to_a_terminal(start_victim, victim_exe, tmp_path):
    victim = start_victim("sleep")
    core = tmp_path / "x.core"
    with open(core, "wb") as f:
        proc = subprocess.run([sys.executable, "-m", "snapcore",
                               "--max-per-hour", "0", *FAST, "-o", "-", str(victim.pid)],
                              stdout=f, stderr=subprocess.PIPE, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "standard output" in proc.stderr  # the report went to stderr
    assert prstatus_pids(core) == [victim.pid]
    bt = subprocess.run(["gdb", "-batch", "-nx", "-ex", "bt", str(victim_exe), str(core)],
                        capture_output=True, text=True).stdout
    assert "main" in bt, bt

    main, secondary = pty.openpty()
    try:
        proc = subprocess.run([sys.executable, "-m", "snapcore", "-o",
                               "-", str(victim.pid)], stdout=secondary,
                              stderr=subprocess.PIPE, text=True, timeout=120)
    finally:
        os.close(secondary)
        os.close(main)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "terminal" in proc.stderr
    victim.wait_for_heartbeats(victim.heartbeats())
    victim.assert_unharmed()


def test_the_controller_steps_the_writer_thread_up_on_a_busy_machine(start_victim, build_dir,
                                                                     out_dir):
    """Every CPU taken, twice over: the idle writer thread starves until the
    dump's controller steps it up, by its thread id, as it does the kernel's
    child (test_dump_limits.py)."""
    hogs = [start_victim("busy") for _ in range(2 * (os.cpu_count() or 2))]
    victim = start_victim("spin", exe=compile_target(build_dir, "busyheap"), args=("64", "2"))
    code, doc = snap_json("--writer", "snapcore", "--dump-deadline", "1", "-o", str(out_dir),
                          str(victim.pid))
    assert code == 0, doc
    steps = doc["priority_steps"]
    assert steps and steps[0]["from"] == "idle" and "deadline" in steps[0]["why"], steps
    assert all("error" not in s for s in steps), steps
    assert doc["core"]["allocated"] >= 64 << 20  # complete: the whole heap is in it
    victim.assert_unharmed()
    for hog in hogs:
        hog.assert_unharmed()


def test_kernel_writer_with_a_pipe_to_stdout_is_one_line(start_victim):
    victim = start_victim("sleep")
    proc = run_snapcore("--writer", "kernel", "-o", "-", str(victim.pid))
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stdout == ""
    victim.assert_unharmed()
