#!/usr/bin/env python3
"""How long is the target paused?  Measured from inside the target.

    python3 bench/pause.py [--sizes 64,256,1024,4096] [--threads 1] [--runs 5]
                           [--cow-pages K] [--tools fork,snapcore-all,snapcore-main,gcore]
                           [--plot pause.png]

For each heap size (MB) and thread count, starts bench/heartbeat.c, measures
its heartbeat loop over quiet windows (the baseline: longest gap, iteration
rate), then for each tool and run: resets the target's counters, runs the
tool until the core is on disk, and reads them again.

- pause seen by the target: the longest gap minus the baseline's;
- pause reported by snapcore (its own measurement of the stop window);
- until core on disk: the tool's wall time, start-up included;
- lost work: the share of heartbeat iterations the target did not do while
  the tool ran, against its baseline rate;
- extra memory: page tables copied by fork (the target's VmPTE) plus the pages
  the target rewrote while the child lived (K per iteration, at most the heap).

`fork` is the target forking itself and timing the fork() call: the physical
limit.  Prints a Markdown table.  Needs root, gcc, and gdb for gcore.
Timings are this machine's, and noisy: read the medians.
"""

from __future__ import annotations

import argparse
import json
import math
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
PAGE = 4096


class Heartbeat:
    def __init__(self, exe: Path, mb: int, threads: int, cow_pages: int):
        self.mb = mb
        self.proc = subprocess.Popen([str(exe), str(mb), str(threads), str(cow_pages)],
                                     stdout=subprocess.PIPE, text=True)
        assert self._line(600) == "ready"

    def _line(self, timeout: float) -> str:
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        assert ready, "heartbeat target did not answer"
        return self.proc.stdout.readline().strip()

    def reset(self) -> float:
        os.kill(self.proc.pid, signal.SIGUSR1)
        time.sleep(0.05)
        return time.monotonic()

    def read(self) -> tuple[float, int]:
        """(longest gap in seconds, iterations) since the last reset."""
        os.kill(self.proc.pid, signal.SIGUSR2)
        words = self._line(60).split()
        assert words[0] == "gap" and words[2] == "iters", words
        return float(words[1]), int(words[3])

    def fork_time(self) -> float:
        os.kill(self.proc.pid, signal.SIGWINCH)
        kind, value = self._line(60).split()
        assert kind == "fork"
        return float(value)

    def page_tables(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmPTE:"):
                return int(line.split()[1]) * 1024
        return 0

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


def run_tool(tool: str, pid: int, out: Path, min_free: str) -> tuple[float | None, float]:
    """Run one tool against pid until its core is on disk; return the pause it
    reports and how long its child lived (dumping)."""
    if tool.startswith("snapcore"):
        threads = tool.split("-")[1]
        # snapcore-all-own: snapcore's own writer (the window is the same)
        writer = ["--writer", "snapcore"] if tool.endswith("-own") else []
        proc = subprocess.run([sys.executable, "-m", "snapcore", "--json", "--threads",
                               threads, *writer, "--max-per-hour", "0", "--min-free", min_free,
                               "-o", str(out), str(pid)],
                              capture_output=True, text=True, cwd=HERE.parent)
        doc = json.loads(proc.stdout)
        assert doc["ok"], doc
        reported, dumping = doc["pause_ms"], doc["dump_seconds"]
    else:
        subprocess.run(["gcore", "-o", str(out / "gcore"), str(pid)], check=True,
                       capture_output=True)
        reported, dumping = None, 0.0
    for f in out.iterdir():
        if f.is_file():
            f.unlink()
    return reported, dumping


def measure(exe: Path, mb: int, threads: int, tools: list[str], runs: int,
            cow_pages: int, min_free: str = "1G") -> list[dict]:
    target = Heartbeat(exe, mb, threads, cow_pages)
    out = Path(tempfile.mkdtemp(prefix="snapcore-bench-"))
    rows = []
    try:
        gaps, rates = [], []
        for _ in range(3):
            started = target.reset()
            time.sleep(0.5)
            gap, iters = target.read()
            gaps.append(gap)
            rates.append(iters / (time.monotonic() - started))
        base_gap, base_rate = statistics.median(gaps), statistics.median(rates)
        page_tables = target.page_tables()
        for tool in tools:
            observed, reported, totals, lost, extra = [], [], [], [], []
            for _ in range(runs):
                if tool == "fork":
                    target.reset()
                    observed.append(target.fork_time())
                    extra.append(page_tables)
                    continue
                started = target.reset()
                t0 = time.monotonic()
                pause, dumping = run_tool(tool, target.proc.pid, out, min_free)
                reported.append(pause)
                totals.append(time.monotonic() - t0)
                gap, iters = target.read()
                elapsed = time.monotonic() - started
                observed.append(max(gap - base_gap, 0.0))
                lost.append(max(0.0, 1 - iters / (base_rate * elapsed)))
                if tool.startswith("snapcore"):
                    # distinct random pages hit while the child lived: each is copied once
                    pages = (mb << 20) // PAGE
                    writes = cow_pages * iters / elapsed * dumping
                    rewritten = pages * (1 - math.exp(-writes / pages)) * PAGE
                    extra.append(page_tables + rewritten)
                else:
                    extra.append(0)
            rows.append({
                "size_mb": mb, "threads": threads, "tool": tool,
                "observed_ms": statistics.median(observed) * 1000,
                "observed_max_ms": max(observed) * 1000,
                "reported_ms": (statistics.median(reported)
                                if reported and reported[0] is not None else None),
                "total_s": statistics.median(totals) if totals else None,
                "lost_work": statistics.median(lost) if lost else None,
                "extra_mb": statistics.median(extra) / (1 << 20),
            })
    finally:
        target.stop()
        shutil.rmtree(out, ignore_errors=True)
    return rows


HEADER = ("| heap MB | threads | tool | pause seen by target, median ms (max) "
          "| pause reported, ms | until core on disk, s | lost work | extra memory, MB |")


def table(rows: list[dict]) -> str:
    lines = [HEADER, "| ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        def num(value, fmt):
            return "" if value is None else format(value, fmt)
        lines.append(f"| {r['size_mb']} | {r['threads']} | {r['tool']} | "
                     f"{r['observed_ms']:.2f} ({r['observed_max_ms']:.2f}) | "
                     f"{num(r['reported_ms'], '.2f')} | {num(r['total_s'], '.2f')} | "
                     f"{num(r['lost_work'], '.0%')} | {r['extra_mb']:.1f} |")
    return "\n".join(lines)


def plot(rows: list[dict], path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for tool in dict.fromkeys(r["tool"] for r in rows):
        points = sorted((r["size_mb"], r["observed_ms"]) for r in rows if r["tool"] == tool)
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=tool)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("heap (MB)")
    ax.set_ylabel("pause seen by the target (ms, median)")
    ax.set_title("How long each tool stops the process")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n", 2)[2].split("Prints a Markdown")[0].strip(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Prints a Markdown table of the medians.  Needs root, gcc, and gdb for gcore.")
    parser.add_argument("--sizes", default="64,256", metavar="MB,...",
                        help="heap sizes of the target, in MB (default: %(default)s)")
    parser.add_argument("--threads", default="1", metavar="N,...",
                        help="thread counts of the target (default: %(default)s)")
    parser.add_argument("--runs", type=int, default=5, metavar="N",
                        help="runs per tool, size and thread count (default: %(default)s)")
    parser.add_argument("--cow-pages", type=int, default=0, metavar="K",
                        help="pages the target rewrites per heartbeat iteration, to "
                             "measure copy-on-write cost while the child lives "
                             "(default: %(default)s)")
    parser.add_argument("--tools", default="fork,snapcore-all,snapcore-main,gcore",
                        metavar="T,...",
                        help="what to measure: fork (the target forking itself: the "
                             "physical limit), snapcore-all, snapcore-main (--threads "
                             "main), gcore (default: %(default)s)")
    parser.add_argument("--min-free", default="1G", metavar="SIZE",
                        help="snapcore's --min-free for the snapshots' directory, a "
                             "temporary one (default: %(default)s)")
    parser.add_argument("--plot", metavar="PNG",
                        help="also write a PNG plot (needs matplotlib)")
    parser.add_argument("--json", metavar="FILE",
                        help="also write the rows as JSON to this file")
    args = parser.parse_args(argv)
    build = Path(tempfile.mkdtemp(prefix="snapcore-bench-build-"))
    exe = build / "heartbeat"
    subprocess.run(["gcc", "-O2", "-pthread", "-o", str(exe), str(HERE / "heartbeat.c")],
                   check=True)
    rows = []
    try:
        for mb in (int(x) for x in args.sizes.split(",")):
            for threads in (int(x) for x in args.threads.split(",")):
                rows += measure(exe, mb, threads, args.tools.split(","), args.runs,
                                args.cow_pages, args.min_free)
    finally:
        shutil.rmtree(build, ignore_errors=True)
    print(table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    if args.plot:
        plot(rows, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
