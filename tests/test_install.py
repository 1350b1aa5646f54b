"""The README's Quick start, command one, as a new operator runs it: install.sh
with the distribution's python3 in a clean environment (PEP 668: no pip into
the system's Python), then the installed command on a process; and Ctrl-C at
any moment from the command's exec."""

from __future__ import annotations

import random
import signal
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
CLEAN = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}  # what `env -i` leaves, as on a server


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """install.sh into a place of its own; the installed command."""
    base = tmp_path_factory.mktemp("install")
    places = {"PREFIX": str(base / "opt"), "BINDIR": str(base / "bin"),
              "MANDIR": str(base / "man")}
    done = subprocess.run(["sh", str(ROOT / "install.sh")], env={**CLEAN, **places},
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (base / "man" / "man1" / "snapcore.1").is_file()
    return base / "bin" / "snapcore"


def test_install_script_then_a_snapshot(installed, tmp_path):
    target = subprocess.Popen(["sleep", "60"])
    try:
        taken = subprocess.run([str(installed), "-q", "-o", str(tmp_path / "cores"),
                                str(target.pid)], env=CLEAN, capture_output=True, text=True,
                               timeout=120)
        assert taken.returncode == 0, taken.stderr
        assert Path(taken.stdout.strip()).is_file()
        assert target.poll() is None
    finally:
        target.kill()
        target.wait()


@pytest.mark.parametrize("writer", ["kernel", "snapcore"])
def test_installed_command_compresses(installed, tmp_path, writer):
    """--compress (cron, timers and the README's object-storage recipe use
    it) works from the command install.sh put on PATH: zstandard is a
    dependency, not an extra."""
    target = subprocess.Popen(["sleep", "60"])
    try:
        taken = subprocess.run([str(installed), "-q", "--compress", "--writer", writer,
                                "--max-per-hour", "0", "-o", str(tmp_path / "cores"),
                                str(target.pid)], env=CLEAN, capture_output=True, text=True,
                               timeout=120)
        assert taken.returncode == 0, taken.stderr
        core = Path(taken.stdout.strip())
        assert core.name.endswith(".core.zst") and core.read_bytes()[:4] == b"\x28\xb5\x2f\xfd"
        assert target.poll() is None
    finally:
        target.kill()
        target.wait()


def test_ctrl_c_at_30_moments_from_exec(installed, start_victim, tmp_path):
    """From the exec of the installed command to its exit: never a traceback,
    exit 130 (or death by SIGINT before the interpreter runs a line, which the
    shell reports as 130 too; or 0 when it came after the work), and the
    target unharmed."""
    victim = start_victim("futex")  # a helper thread, the main one in a raw futex wait
    command = [str(installed), "--max-per-hour", "0", "-o", str(tmp_path / "cores"),
               str(victim.pid)]
    # Moments spread over a whole run, however fast this machine is.
    spans = []
    for _ in range(3):
        start = time.monotonic()
        subprocess.run(command, env=CLEAN, capture_output=True, check=True)
        spans.append(time.monotonic() - start)
    rng = random.Random(12)
    outcomes = []
    for _ in range(30):
        proc = subprocess.Popen(command, env=CLEAN, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        time.sleep(rng.uniform(0.0, sorted(spans)[1]))
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
        assert "Traceback" not in err, err
        assert proc.returncode in (0, 130, -signal.SIGINT), (proc.returncode, err)
        if proc.returncode == 130:
            assert err.count("\n") == 1 and err.startswith("snapcore: "), err
        outcomes.append(proc.returncode)
        victim.assert_unharmed()
    assert outcomes.count(130) >= 10, outcomes  # most landed while snapcore ran
    victim.send("wake\n")
    victim.wait_for_line("woken")
    victim.assert_unharmed()
