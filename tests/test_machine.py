"""A machine snapcore has no architecture table for (linux/arch.py): every
command that would touch a process is refused in one line with exit code 6,
before the target is looked at; the commands that read files work.

The machine is made one snapcore has no table for (platform.machine answers
riscv64 before snapcore is imported, in the command's own interpreter), so
this stays true whichever machines snapcore supports.  The target is real
and must come out exactly as it went in.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from snapcore.errors import ExitCode

from conftest import run_snapcore
from helpers import cores_in, process_state

MACHINE = "riscv64"
ON_ANOTHER_MACHINE = ("import platform, sys; platform.machine = lambda: %r; "
                      "from snapcore.__main__ import run; run()" % MACHINE)


def elsewhere(*args: str) -> subprocess.CompletedProcess:
    """The real command, in an interpreter that believes it runs on riscv64."""
    return subprocess.run([sys.executable, "-c", ON_ANOTHER_MACHINE, *args],
                          capture_output=True, text=True, timeout=60)


def tracer_of(pid: int) -> str:
    status = Path(f"/proc/{pid}/status").read_text()
    return next(line.split()[1] for line in status.splitlines() if line.startswith("TracerPid:"))


@pytest.mark.parametrize("command", [
    ("{pid}",),
    ("snap", "--json", "{pid}"),
    ("check", "{pid}"),
    ("stacks", "{pid}"),
    ("watch", "--cpu", "1", "{pid}"),
])
def test_touching_a_process_is_refused_in_one_line(start_victim, out_dir, command):
    victim = start_victim("sleep")
    threads = sorted(Path(f"/proc/{victim.pid}/task").iterdir())
    args = [a.format(pid=victim.pid) for a in command]
    proc = elsewhere(*args, "-o", str(out_dir))
    assert proc.returncode == ExitCode.UNSUPPORTED, proc.stderr
    if "--json" in args:
        error = json.loads(proc.stdout)["error"]
        assert error["exit_code"] == ExitCode.UNSUPPORTED and MACHINE in error["message"]
    else:
        assert proc.stdout == ""
        line, = proc.stderr.splitlines()
        assert line.startswith("snapcore: error: this machine is riscv64, and snapcore "
                               "supports x86_64 and aarch64 only"), line
    assert "Traceback" not in proc.stderr
    # Refused before the preflight: not even the output directory was made.
    assert not out_dir.exists()
    # Running or sleeping between heartbeats, never stopped or traced.
    assert process_state(victim.pid) in ("R", "S") and tracer_of(victim.pid) == "0"
    assert sorted(Path(f"/proc/{victim.pid}/task").iterdir()) == threads
    victim.wait_for_heartbeats(victim.heartbeats())
    victim.assert_unharmed()


def test_refused_before_the_target_is_looked_at(start_victim, out_dir):
    """Held by another tracer, the target would be refused with 5 (busy) once
    looked at: the machine's 6 comes first."""
    victim = start_victim("sleep")
    holder = subprocess.Popen(
        [sys.executable, "-c", "import time; from ptrace.binding.func import ptrace; "
         f"ptrace(0x4206, {victim.pid}, 0, 0); print('seized', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "seized\n"
        assert run_snapcore("-o", str(out_dir), str(victim.pid)).returncode == ExitCode.BUSY
        assert elsewhere("-o", str(out_dir), str(victim.pid)).returncode == ExitCode.UNSUPPORTED
        assert tracer_of(victim.pid) == str(holder.pid)
    finally:
        holder.kill()
        holder.wait()


def test_reading_snapshots_works(start_victim, out_dir):
    """list, info and prune read files only: no architecture table needed."""
    victim = start_victim("sleep")
    run_snapcore("-q", "-o", str(out_dir), str(victim.pid), check=True)
    core, = cores_in(out_dir)
    listed = elsewhere("list", "--json", "-o", str(out_dir))
    assert listed.returncode == 0, listed.stderr
    assert core in listed.stdout
    for match in (str(victim.pid), str(out_dir / core)):
        info = elsewhere("info", match, "-o", str(out_dir))
        assert info.returncode == 0, info.stderr
        assert "victim" in info.stdout
    pruned = elsewhere("prune", "--keep", "1", "--dry-run", "-o", str(out_dir))
    assert pruned.returncode == 0, pruned.stderr
    assert cores_in(out_dir) == [core]
