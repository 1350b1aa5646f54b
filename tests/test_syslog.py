"""Syslog in an incident: a refusal (nothing touched) is not a failure
(after the process was held), --reason is on the line, and a missing
/dev/log with --syslog is said once."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent


@pytest.fixture
def sink(tmp_path):
    path = str(tmp_path / "log.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(10)
    yield sock, dict(os.environ, SNAPCORE_SYSLOG_SOCKET=path)
    sock.close()


def snapcore(*args: str, env=None):
    return subprocess.run([sys.executable, "-m", "snapcore", *args], capture_output=True,
                          text=True, cwd=ROOT, env=env or os.environ, timeout=120)


def test_a_refusal_and_a_failure_read_differently_with_the_reason(start_victim, sink,
                                                                  tmpfs, tmp_path):
    sock, env = sink
    victim = start_victim("fat")  # 24 MiB touched
    small = tmpfs("1m")
    # Past the disk check by force: the core does not fit, after the fork.
    failed = snapcore("--reason", "INC-7", "--force", "disk", "--writer", "snapcore",
                      "-o", str(small / "cores"), str(victim.pid), env=env)
    assert failed.returncode != 0
    line = sock.recv(8192).decode()
    assert line.startswith("<27>"), line  # an error, not a warning
    assert f"failed snapshot of pid {victim.pid} at the " in line
    assert "after it was held" in line and line.endswith("; reason: INC-7")
    assert "refused" not in line
    refused = snapcore("--reason", "INC-7", "--max-per-hour", "0", "--min-free", "100%",
                       "-o", str(tmp_path / "cores"), str(victim.pid), env=env)
    assert refused.returncode != 0
    line = sock.recv(8192).decode()
    assert line.startswith("<28>") and f"refused snapshot of pid {victim.pid}, not touched: " \
        in line, line
    assert line.endswith("; reason: INC-7") and "failed" not in line
    victim.assert_unharmed()


def test_no_dev_log_with_syslog_is_said_once(start_victim, out_dir):
    # A mount namespace of its own where /dev/log is absent (hidden under a
    # file that is no socket where the host has one): two snapshots, one warning.
    victims = [start_victim("sleep"), start_victim("sleep")]
    env = {k: v for k, v in os.environ.items() if k != "SNAPCORE_SYSLOG_SOCKET"}
    hide = "if [ -e /dev/log ]; then mount --bind /dev/null /dev/log; fi; exec \"$@\""
    proc = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", hide, "sh",
                           sys.executable, "-m", "snapcore", "--syslog", "-q", "-o",
                           str(out_dir), *(str(v.pid) for v in victims)],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    warnings = [line for line in proc.stderr.splitlines() if "warning" in line]
    assert warnings == ["snapcore: warning: --syslog: no syslog socket at /dev/log (is a "
                        "syslog daemon or journald running?)"], proc.stderr
    for victim in victims:
        victim.assert_unharmed()
