#!/usr/bin/env python3
"""How long is the target paused?  Measured from inside the target.

    python3 bench/pause.py [--sizes 64,256] [--threads 1] [--runs 5]
                           [--tools snapcore-all,snapcore-main,gcore,fork]

For each heap size (MB) and thread count, starts bench/heartbeat.c, measures
the longest gap of its heartbeat loop over a quiet window (the baseline),
then for each tool and run: resets the gap, runs the tool, reads the gap.
The target-observed pause is the gap minus the baseline.  `fork` is the
target forking itself: the physical limit.  Prints a Markdown table.
Needs root, gcc, and gdb for gcore.  Timings are this machine's: noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).parent


class Heartbeat:
    def __init__(self, exe: Path, mb: int, threads: int):
        self.proc = subprocess.Popen([str(exe), str(mb), str(threads)],
                                     stdout=subprocess.PIPE, text=True)
        assert self._line(120) == "ready"

    def _line(self, timeout: float) -> str:
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        assert ready, "heartbeat target did not answer"
        return self.proc.stdout.readline().strip()

    def reset(self) -> None:
        os.kill(self.proc.pid, signal.SIGUSR1)
        time.sleep(0.05)

    def gap(self) -> float:
        os.kill(self.proc.pid, signal.SIGUSR2)
        kind, value = self._line(30).split()
        assert kind == "gap"
        return float(value)

    def fork_time(self) -> float:
        os.kill(self.proc.pid, signal.SIGWINCH)
        kind, value = self._line(30).split()
        assert kind == "fork"
        return float(value)

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


def run_tool(tool: str, pid: int, out: Path) -> dict:
    """Run one tool against pid; return its own reported pause and wall time."""
    start = time.monotonic()
    if tool.startswith("snapcore"):
        threads = tool.split("-")[1]
        proc = subprocess.run([sys.executable, "-m", "snapcore", "--json", "--threads",
                               threads, "-o", str(out), str(pid)],
                              capture_output=True, text=True, cwd=HERE.parent)
        doc = json.loads(proc.stdout)
        assert doc["ok"], doc
        reported = doc["pause_ms"]
    else:  # gcore
        subprocess.run(["gcore", "-o", str(out / "gcore"), str(pid)], check=True,
                       capture_output=True)
        reported = None
    total = time.monotonic() - start
    for f in out.iterdir():
        f.unlink()
    return {"reported_ms": reported, "total_s": total}


def measure(exe: Path, mb: int, threads: int, tools: list[str], runs: int) -> list[dict]:
    target = Heartbeat(exe, mb, threads)
    out = Path(tempfile.mkdtemp(prefix="snapcore-bench-"))
    rows = []
    try:
        baseline = []
        for _ in range(3):
            target.reset()
            time.sleep(0.5)
            baseline.append(target.gap())
        base = statistics.median(baseline)
        for tool in tools:
            observed, reported, totals = [], [], []
            for _ in range(runs):
                if tool == "fork":
                    target.reset()
                    observed.append(target.fork_time())
                    continue
                target.reset()
                result = run_tool(tool, target.proc.pid, out)
                time.sleep(0.1)
                observed.append(max(target.gap() - base, 0.0))
                reported.append(result["reported_ms"])
                totals.append(result["total_s"])
            rows.append({
                "size_mb": mb, "threads": threads, "tool": tool,
                "observed_ms": statistics.median(observed) * 1000,
                "observed_max_ms": max(observed) * 1000,
                "reported_ms": (statistics.median(reported)
                                if reported and reported[0] is not None else None),
                "total_s": statistics.median(totals) if totals else None,
                "baseline_ms": base * 1000,
            })
    finally:
        target.stop()
        shutil.rmtree(out, ignore_errors=True)
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| heap MB | threads | tool | pause seen by target, median ms (max) "
             "| pause reported by snapcore, ms | tool run until core on disk, s |",
             "| ---: | ---: | --- | ---: | ---: | ---: |"]
    for r in rows:
        reported = "" if r["reported_ms"] is None else f"{r['reported_ms']:.2f}"
        total = "" if r["total_s"] is None else f"{r['total_s']:.2f}"
        lines.append(f"| {r['size_mb']} | {r['threads']} | {r['tool']} | "
                     f"{r['observed_ms']:.2f} ({r['observed_max_ms']:.2f}) | "
                     f"{reported} | {total} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="64,256")
    parser.add_argument("--threads", default="1")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--tools", default="fork,snapcore-all,snapcore-main,gcore")
    args = parser.parse_args(argv)
    build = Path(tempfile.mkdtemp(prefix="snapcore-bench-build-"))
    exe = build / "heartbeat"
    subprocess.run(["gcc", "-O2", "-pthread", "-o", str(exe), str(HERE / "heartbeat.c")],
                   check=True)
    rows = []
    try:
        for mb in (int(x) for x in args.sizes.split(",")):
            for threads in (int(x) for x in args.threads.split(",")):
                rows += measure(exe, mb, threads, args.tools.split(","), args.runs)
    finally:
        shutil.rmtree(build, ignore_errors=True)
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
