"""At a terminal, as an operator in an incident runs it: a pseudo-terminal of
80 columns, where the progress bar and rich's console come into play."""

from __future__ import annotations

import os
import re
import statistics

import pytest

from conftest import snap_json
from helpers import on_terminal


@pytest.mark.slow
def test_twenty_terminal_runs_on_a_24_thread_target(start_victim, threads_exe, out_dir):
    """Each run succeeds and pauses the target no longer than runs without a
    terminal (a thread taking the tracee's SIGCHLD used to stall a run to
    --timeout, or fail it with exit 7)."""
    victim = start_victim("many", exe=threads_exe, args=("24",))
    assert len(os.listdir(f"/proc/{victim.pid}/task")) == 25
    plain = []
    for _ in range(5):
        code, doc = snap_json("--max-per-hour", "0", "-o", str(out_dir), str(victim.pid))
        assert code == 0, doc
        plain.append(doc["pause_ms"])
    terminal = []
    for run in range(20):
        code, text = on_terminal("--max-per-hour", "0", "-o", str(out_dir), str(victim.pid))
        assert code == 0, f"run {run}: exit {code}: {text}"
        terminal.append(float(re.search(r"^paused +([0-9.]+) ms", text, re.M).group(1)))
        assert re.search(r"^threads +25\s*$", text, re.M), text
    # Far from --timeout (2 s), and like the runs without a terminal.
    assert max(terminal) < 1000, terminal
    assert statistics.median(terminal) <= 3 * statistics.median(plain) + 20, (terminal, plain)
    victim.assert_unharmed()
