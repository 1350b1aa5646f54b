"""Targets snapcore must refuse, and core_pattern set-ups it must handle.

Every refusal is one line with a fix and a documented exit code, and leaves
the target exactly as it was.
"""

from __future__ import annotations

import os
import platform
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from snapcore.errors import ExitCode

from conftest import TARGETS, run_snapcore, snap_json
from helpers import cores_in, process_state, prstatus_pids, wait_until


def refused(code: ExitCode, *args: str) -> str:
    proc = run_snapcore(*args)
    assert proc.returncode == code, proc.stderr
    assert proc.stderr.startswith("snapcore: error: ") and proc.stderr.count("\n") == 1
    return proc.stderr


def test_zombie_is_refused(out_dir):
    proc = subprocess.Popen(["true"])
    wait_until(lambda: process_state(proc.pid) == "Z", "it has exited, not reaped")
    assert "zombie" in refused(ExitCode.UNSUPPORTED, "-o", str(out_dir), str(proc.pid))
    proc.wait()


def test_stopped_target_is_refused_and_stays_stopped(start_victim, out_dir):
    victim = start_victim("sleep")
    os.kill(victim.pid, signal.SIGSTOP)
    wait_until(lambda: process_state(victim.pid) == "T", "it is stopped")
    assert "stopped" in refused(ExitCode.UNSUPPORTED, "-o", str(out_dir), str(victim.pid))
    assert process_state(victim.pid) == "T"
    os.kill(victim.pid, signal.SIGCONT)
    victim.wait_for_heartbeats(victim.heartbeats())
    victim.assert_unharmed()


def test_already_traced_names_the_tracer(start_victim, out_dir):
    victim = start_victim("sleep")
    tracer = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from ptrace.binding.func import ptrace; "
         f"ptrace(0x4206, {victim.pid}, 0, 0); print('seized', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert tracer.stdout.readline() == "seized\n"
        err = refused(ExitCode.BUSY, "-o", str(out_dir), str(victim.pid))
        assert f"already traced by {tracer.pid} (python" in err
    finally:
        tracer.kill()
        tracer.wait()
    victim.wait_for_heartbeats(victim.heartbeats())
    victim.assert_unharmed()


@pytest.mark.skipif(platform.machine() != "x86_64",
                    reason="its target is i386 code (gcc -m32, int $0x80)")
def test_32bit_target_is_refused(build_dir, out_dir):
    exe = build_dir / "compat32"
    subprocess.run(["gcc", "-m32", "-nostdlib", "-static", "-fno-pic", "-o", str(exe),
                    str(TARGETS / "compat32.c")], check=True)
    proc = subprocess.Popen([str(exe)])
    try:
        wait_until(lambda: process_state(proc.pid) == "S", "the 32-bit target sleeps")
        assert "not a 64-bit x86_64 process" in refused(ExitCode.UNSUPPORTED, "-o",
                                                       str(out_dir), str(proc.pid))
        assert process_state(proc.pid) == "S"
    finally:
        proc.kill()
        proc.wait()


def test_target_under_strace_is_refused(start_victim, out_dir):
    victim = start_victim("sleep")
    strace = subprocess.Popen(["strace", "-p", str(victim.pid), "-o", "/dev/null"],
                              stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: f"TracerPid:\t{strace.pid}" in
                   Path(f"/proc/{victim.pid}/status").read_text(), "strace traces the target")
        err = refused(ExitCode.BUSY, "-o", str(out_dir), str(victim.pid))
        assert f"already traced by {strace.pid} (strace)" in err
    finally:
        strace.terminate()  # strace detaches cleanly on SIGTERM
        strace.wait()
    victim.wait_for_heartbeats(victim.heartbeats())
    victim.assert_unharmed()


@pytest.mark.usefixtures("file_core_pattern")  # asks for the kernel's writer
def test_hard_core_limit_zero_is_refused_before_touching(start_victim, out_dir):
    """With the kernel's writer asked for; `auto` writes such a core itself
    (test_writer.py)."""
    victim = start_victim("sleep", core_limit=(0, 0))
    err = refused(ExitCode.CORE_NOT_WRITTEN, "--writer", "kernel", "-o", str(out_dir),
                  str(victim.pid))
    assert "hard RLIMIT_CORE" in err and "is 0" in err
    victim.wait_for_heartbeats(victim.heartbeats())
    victim.assert_unharmed()


def test_soft_core_limit_zero_still_gives_a_core(start_victim, out_dir):
    victim = start_victim("sleep", core_limit=(0, resource_unlimited()))
    code, doc = snap_json("-o", str(out_dir), str(victim.pid))
    assert code == 0, doc
    assert soft_core_limit(victim.pid) == "0"  # the target's own limit is untouched
    victim.assert_unharmed()


def resource_unlimited() -> int:
    import resource
    return resource.RLIM_INFINITY


def soft_core_limit(pid: int) -> str:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max core file size"):
            return line.split()[4]
    raise AssertionError("no core limit line")


def test_unusable_output_dir(start_victim):
    victim = start_victim("sleep")
    err = refused(ExitCode.OUTPUT, "-o", "/etc/hostname/cores", str(victim.pid))
    assert "/etc/hostname is not a directory" in err
    victim.assert_unharmed()


def test_absolute_core_pattern(core_pattern, start_victim, out_dir, tmp_path):
    crash = tmp_path / "crash"
    crash.mkdir()
    core_pattern(f"{crash}/core.%e.%p.%t.%h")
    victim = start_victim("sleep")
    code, doc = snap_json("-o", str(out_dir), str(victim.pid))
    assert code == 0, doc
    assert doc["core_pattern"]["kind"] == "absolute"
    core = Path(doc["core"]["path"])
    assert core.parent == out_dir and prstatus_pids(core) == [victim.pid]
    assert list(crash.iterdir()) == []  # moved, not copied
    victim.assert_unharmed()


def test_core_uses_pid(core_pattern, start_victim, out_dir):
    core_pattern("core", uses_pid=True)
    victim = start_victim("read")
    code, doc = snap_json("-o", str(out_dir), str(victim.pid))
    assert code == 0, doc
    assert prstatus_pids(Path(doc["core"]["path"])) == [victim.pid]
    victim.assert_unharmed()


def test_pipe_core_pattern_reports_the_handler(core_pattern, start_victim, out_dir,
                                              tmp_path):
    kept = tmp_path / "kept"
    kept.mkdir()
    handler = tmp_path / "handler.sh"
    handler.write_text(f"#!/bin/sh\ncat > {kept}/core.$1\n")
    handler.chmod(0o755)
    core_pattern(f"|{handler} %P")
    victim = start_victim("sleep")

    # The kernel's writer asked for: today's behaviour, for those who want
    # their snapshots in coredumpctl (`auto` writes the core here instead).
    code, doc = snap_json("--writer", "kernel", "-o", str(out_dir), str(victim.pid))

    assert code == ExitCode.CORE_PIPED, doc
    assert doc["writer"]["name"] == "kernel"
    assert doc["core"] is None
    assert doc["core_pattern"]["kind"] == "pipe"
    assert doc["core_pattern"]["handler"] == str(handler)
    assert str(doc["child_pid"]) in doc["core_pattern"]["lookup"]
    handed = kept / f"core.{doc['child_pid']}"
    wait_until(lambda: handed.exists() and handed.stat().st_size >= 4,
               "the pipe handler wrote the core's first bytes")
    assert handed.read_bytes()[:4] == b"\x7fELF"
    assert not out_dir.exists() or cores_in(out_dir) == []
    victim.assert_unharmed()
    quiet = run_snapcore("-q", "--writer", "kernel", "-o", str(out_dir), str(victim.pid))
    assert quiet.returncode == ExitCode.CORE_PIPED and quiet.stdout == ""
    assert "coredump" not in quiet.stderr and str(handler) in quiet.stderr
