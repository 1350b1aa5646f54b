"""The benchmark harness runs end to end and produces a well-formed table.
Timings are never asserted: this machine is shared and noisy."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # the benchmark harness end to end: minutes

ROOT = Path(__file__).parent.parent


def test_bench_smoke_run_produces_a_table(tmp_path):
    rows_file = tmp_path / "rows.json"
    proc = subprocess.run([sys.executable, str(ROOT / "bench/pause.py"), "--sizes", "8",
                           "--runs", "1", "--cow-pages", "2", "--json", str(rows_file)],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines[0].startswith("| heap MB | threads | tool | pause seen by target")
    body = lines[2:]
    assert [line.split("|")[3].strip() for line in body] == \
        ["fork", "snapcore-all", "snapcore-main", "gcore"]
    number = r"\s*\d+(\.\d+)?\s*"
    for line in body:
        cells = line.strip("|").split("|")
        assert len(cells) == 8
        assert re.fullmatch(number + r"\(" + number + r"\)\s*", cells[3]), line
    assert rows_file.read_text().startswith("[")


@pytest.mark.parametrize("script, wanted", [
    ("pause.py", {"--sizes", "--threads", "--runs", "--cow-pages", "--tools", "--min-free",
                  "--plot", "--json"}),
    ("busy.py", {"--runs", "--mb", "--hogs", "--snapcore"}),
])
def test_bench_help_explains_every_option(script, wanted):
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / script), "--help"],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0
    options = re.findall(r"^  (--[a-z-]+)( \S+)?\s{2,}(\S.*)$", proc.stdout, re.M)
    assert {o[0] for o in options} == wanted, proc.stdout
