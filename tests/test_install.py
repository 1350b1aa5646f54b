"""The README's Quick start, command one, as a new operator runs it: install.sh
with the distribution's python3 in a clean environment (PEP 668: no pip into
the system's Python), then the installed command on a process."""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).parent.parent
CLEAN = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}  # what `env -i` leaves, as on a server


def test_install_script_then_a_snapshot(tmp_path):
    places = {"PREFIX": str(tmp_path / "opt"), "BINDIR": str(tmp_path / "bin"),
              "MANDIR": str(tmp_path / "man")}
    done = subprocess.run(["sh", str(ROOT / "install.sh")], env={**CLEAN, **places},
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    snapcore = tmp_path / "bin" / "snapcore"
    assert (tmp_path / "man" / "man1" / "snapcore.1").is_file()
    target = subprocess.Popen(["sleep", "60"])
    try:
        taken = subprocess.run([str(snapcore), "-q", "-o", str(tmp_path / "cores"),
                                str(target.pid)], env=CLEAN, capture_output=True, text=True,
                               timeout=120)
        assert taken.returncode == 0, taken.stderr
        assert Path(taken.stdout.strip()).is_file()
        assert target.poll() is None
    finally:
        target.kill()
        target.wait()
