#!/usr/bin/env python3
"""What reading a CPython process's stacks costs the process: snapcore
against py-spy and pystack, measured from inside the target.

    python3 bench/pystacks.py [--python /usr/bin/python3] [--runs 5] [--samples 20]
                              [--snapcore snapcore] [--py-spy py-spy] [--pystack pystack]

The target (bench/pyheartbeat.py) runs a heartbeat loop in its main thread
(the longest gap between two iterations, the iterations done) beside four
threads that sleep, wait on a lock and compute in C with the GIL released,
and answers SIGUSR1 with its counters, reset.  For each tool:

- one read (`snapcore stacks --discard`, `py-spy dump`, `pystack remote`):
  the target's worst pause (longest gap minus the quiet baseline's) and the
  tool's wall time until the stacks are printed;
- sampling (`snapcore stacks --samples N --interval 0.2`, `py-spy record
  --rate 5 --duration N/5`, both N samples): the worst pause over the run and
  the work lost per sample (iterations not done against the baseline rate,
  as milliseconds of the target's time).  On a machine with few CPUs the
  lost work includes the CPU the tool itself takes (snapcore's Python and
  its reader, the child's dump at idle priority) from the target.

Needs root and py-spy (pip install py-spy).  Prints a Markdown table; timings
are this machine's and noisy: read the medians.  Never asserted by the tests.
"""

from __future__ import annotations

import argparse
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


class Target:
    def __init__(self, python: str):
        self.proc = subprocess.Popen([python, str(HERE / "pyheartbeat.py")],
                                     stdout=subprocess.PIPE, text=True)
        assert self._line(60) == "ready"

    def _line(self, timeout: float) -> str:
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        assert ready, "the heartbeat target did not answer"
        return self.proc.stdout.readline().strip()

    def counters(self) -> tuple[float, int, float]:
        """(longest gap in seconds, iterations, seconds) since the last call."""
        os.kill(self.proc.pid, signal.SIGUSR1)
        gap, count, seconds = self._line(30).split()
        return float(gap), int(count), float(seconds)

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


def baseline(target: Target, seconds: float = 2.0) -> tuple[float, float]:
    """(the longest gap of a quiet window, iterations per second)."""
    gaps, rates = [], []
    for _ in range(3):
        target.counters()
        time.sleep(seconds / 3)
        gap, count, elapsed = target.counters()
        gaps.append(gap)
        rates.append(count / elapsed)
    return statistics.median(gaps), statistics.median(rates)


def measure(target: Target, command: list[str], base: tuple[float, float],
            samples: int) -> tuple[float, float, float]:
    """(worst pause ms, lost work ms per sample, wall time s) of one run."""
    target.counters()
    started = time.monotonic()
    subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    wall = time.monotonic() - started
    gap, count, elapsed = target.counters()
    quiet_gap, rate = base
    lost = max(0.0, elapsed - count / rate) * 1000 / samples
    return max(0.0, gap - quiet_gap) * 1000, lost, wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--python", default="/usr/bin/python3")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--samples", type=int, default=20)
    parser.add_argument("--snapcore", default=shutil.which("snapcore") or "snapcore")
    parser.add_argument("--py-spy", dest="pyspy", default=shutil.which("py-spy") or "py-spy")
    parser.add_argument("--pystack", default=shutil.which("pystack") or "pystack")
    args = parser.parse_args()
    out = tempfile.mkdtemp(prefix="pystacks-bench-")
    target = Target(args.python)
    pid = str(target.proc.pid)
    n = args.samples
    snap = [args.snapcore, "stacks", "--max-per-hour", "0", "-o", out]
    tools = {
        "snapcore stacks (one read)": (snap + ["--discard", pid], 1),
        "py-spy dump": ([args.pyspy, "dump", "--pid", pid], 1),
        "pystack remote": ([args.pystack, "remote", pid], 1),
        f"snapcore stacks --samples {n} --interval 0.2": (
            snap + ["--samples", str(n), "--interval", "0.2", "--format", "collapsed", pid], n),
        f"py-spy record --rate 5, {n} samples": (
            [args.pyspy, "record", "--rate", "5", "--duration", str(max(1, n // 5)),
             "--format", "raw", "-o", os.path.join(out, "pyspy.txt"), "--pid", pid], n),
    }
    try:
        base = baseline(target)
        print(f"target: {args.python}, quiet longest gap {base[0] * 1000:.2f} ms, "
              f"{base[1]:.0f} iterations/s; {args.runs} runs each, medians (worst)\n")
        print("| tool | target's worst pause, ms | lost work per sample, ms | wall time, s |")
        print("| --- | --- | --- | --- |")
        for name, (command, samples) in tools.items():
            runs = [measure(target, command, base, samples) for _ in range(args.runs)]
            pause, lost, wall = (list(col) for col in zip(*runs))
            print(f"| {name} | {statistics.median(pause):.1f} ({max(pause):.1f}) "
                  f"| {statistics.median(lost):.1f} ({max(lost):.1f}) "
                  f"| {statistics.median(wall):.2f} |")
    finally:
        target.stop()
        shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
