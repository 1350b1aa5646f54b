"""The README's Quick start, command one, as a new operator runs it: install.sh
with the distribution's python3 in a clean environment (PEP 668: no pip into
the system's Python), then the installed command on a process; and Ctrl-C at
any moment from the command's exec.  Every documented recipe runs with that
command, under cron's environment (`env -i PATH=/usr/bin:/bin`); the README's
cron line, unit and runbook are read from README.md itself, so that they
cannot drift from what is tested."""

from __future__ import annotations

import random
import re
import shlex
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
CLEAN = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}  # what `env -i` leaves, as on a server
CRON = {"PATH": "/usr/bin:/bin"}  # cron's PATH (and what a unit may have)


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
    (base / "install.stderr").write_text(done.stderr)  # for the test of its warning
    return base / "bin" / "snapcore"


def test_install_warns_when_bindir_is_not_on_path_and_leaves_no_stray_gdb(installed):
    """BINDIR (a temporary one) is not on the installing shell's PATH: one
    line says so and how to run it; python-ptrace's demo gdb.py and
    strace.py are not left in the virtualenv's bin/."""
    said = (installed.parent.parent / "install.stderr").read_text()
    lines = [line for line in said.splitlines() if "warning" in line]
    assert lines == [f"install.sh: warning: {installed.parent} is not on PATH: run "
                     f"{installed} by its full path"], said
    venv_bin = installed.parent.parent / "opt" / "bin"
    assert (venv_bin / "snapcore").is_file()
    assert not (venv_bin / "gdb.py").exists() and not (venv_bin / "strace.py").exists()


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


def _zstandard_hint(python: str, env: dict) -> str:
    """The hint snapcore gives, under PYTHON, when zstandard cannot be imported."""
    code = ("import sys; sys.modules['zstandard'] = None\n"
            "from snapcore.core.sink import zstd_missing; print(zstd_missing())")
    out = subprocess.run([python, "-c", code], env=env, capture_output=True, text=True,
                         timeout=60, check=True).stdout.strip()
    assert "install it: " in out, out
    return out.split("install it: ", 1)[1]


def test_install_hints_name_a_command_that_works(installed):
    """A missing zstandard is a broken install: the hint names the command
    for the way snapcore was installed, and that command, run as given, works
    (the old hint, pip install 'snapcore[compress]', fails under PEP 668)."""
    venv_python = str(installed.parent.parent / "opt" / "bin" / "python3")
    hint = _zstandard_hint(venv_python, CRON)
    assert hint == f"{venv_python} -m pip install zstandard"
    ran = subprocess.run(hint, shell=True, env=CRON, capture_output=True, text=True,
                         timeout=300)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    # Debian's own python3 (snapcore run from a checkout): pip is refused
    # there (PEP 668), apt has the package.
    hint = _zstandard_hint("/usr/bin/python3", {**CRON, "PYTHONPATH": str(ROOT)})
    assert hint == "apt-get install python3-zstandard"
    simulated = subprocess.run(hint.replace("install", "install -s", 1), shell=True,
                               env=CLEAN, capture_output=True, text=True, timeout=120)
    assert simulated.returncode == 0, simulated.stdout + simulated.stderr
