"""watch in an incident: the operator's --reason and the trigger both kept,
and a spent rate limit said at the start and waited for, not fired into."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest

from conftest import snap_json

ROOT = Path(__file__).parent.parent


def watch(*args: str, env=None, timeout: float = 60):
    return subprocess.run([sys.executable, "-m", "snapcore", "watch", *args],
                          capture_output=True, text=True, cwd=ROOT, timeout=timeout,
                          env=env or os.environ)


def test_watch_keeps_reason_and_trigger_in_record_json_and_syslog(start_victim, out_dir,
                                                                  tmp_path):
    path = str(tmp_path / "log.sock")
    sink = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sink.bind(path)
    sink.settimeout(10)
    victim = start_victim("sleep")
    try:
        proc = watch("--json", "--reason", "INC-42", "--cpu-below", "50", "--for", "0",
                     "--interval", "0.1", "-o", str(out_dir), str(victim.pid),
                     env=dict(os.environ, SNAPCORE_SYSLOG_SOCKET=path))
        assert proc.returncode == 0, proc.stderr
        events = [json.loads(line) for line in proc.stdout.splitlines()]
        fire = next(e for e in events if e["event"] == "fire")
        assert fire["reason"] == "INC-42" and fire["trigger"].startswith("cpu ")
        shot = next(e for e in events if e["event"] == "snapshot")
        assert shot["ok"] and shot["reason"] == "INC-42" and shot["trigger"] == fire["trigger"]
        record = json.loads(Path(shot["core"]["record"]).read_text())
        assert record["reason"] == "INC-42" and record["trigger"] == fire["trigger"]
        line = sink.recv(8192).decode()
        assert f"(pid {victim.pid})" in line and "; reason: INC-42; trigger: cpu " in line
    finally:
        sink.close()
    victim.assert_unharmed()


def spend_the_budget_until(out_dir: Path, pid: int, seconds: float) -> None:
    """One real snapshot spends a budget of one an hour; its time is then
    moved back so that the hour ends `seconds` from now."""
    code, doc = snap_json("--max-per-hour", "1", "-o", str(out_dir), str(pid))
    assert code == 0, doc
    state_file = out_dir / ".snapcore" / "state.json"
    state = json.loads(state_file.read_text())
    assert list(state) == [doc["target"]["program"]]
    state[doc["target"]["program"]] = [time.time() - 3600 + seconds]
    state_file.write_text(json.dumps(state))


@pytest.mark.parametrize("as_json", [True, False])
def test_watch_says_the_budget_is_used_and_fires_when_it_allows(start_victim, out_dir,
                                                                as_json):
    victim = start_victim("sleep")
    spend_the_budget_until(out_dir, victim.pid, 4)
    started = time.time()
    proc = watch(*(["--json"] if as_json else []), "--max-per-hour", "1", "--cpu-below",
                 "50", "--for", "0", "--interval", "0.2", "-o", str(out_dir), str(victim.pid))
    assert proc.returncode == 0, proc.stderr
    assert time.time() - started >= 3  # it waited for the hour to end ...
    if as_json:
        events = [json.loads(line) for line in proc.stdout.splitlines()]
        kinds = [e["event"] for e in events if e["event"] != "sample"]
        assert kinds == ["limited", "fire", "snapshot", "end"], kinds  # ... and never fired
        # into a refusal
        next_at = datetime.strptime(events[0]["next_at"], "%Y%m%dT%H%M%S.%fZ")
        shot = next(e for e in events if e["event"] == "snapshot")
        assert shot["ok"] and shot["taken_at"][:19].replace("-", "").replace(":", "") >= \
            next_at.strftime("%Y%m%dT%H%M%S")
    else:
        said = [line for line in proc.stderr.splitlines() if "budget" in line]
        assert len(said) == 1 and "the next snapshot is possible at" in said[0], proc.stderr
        assert "refused" not in proc.stderr and "firing" in proc.stderr
    victim.assert_unharmed()
