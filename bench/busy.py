#!/usr/bin/env python3
"""snapcore's start-up, and its time to a complete core on an idle and on a
saturated machine.

    python3 bench/busy.py [--runs 5] [--mb 256] [--hogs 4]

- start-up: from the exec of `snapcore PID` to its first ptrace stop of the
  target (the moment the target's TracerPid turns non-zero, polled), on a
  sleeping target; and `snapcore --version` from exec to exit;
- time to core: a target with a heap of --mb MB, written; `snapcore --json`
  from exec to exit, the dump's own seconds, the pause (the fork window) and
  the reap stop, and the priority steps the dump took: on an idle machine
  (the target sleeps), a busy one (its two threads spin on the two CPUs),
  and a saturated one (--hogs more spinning processes), with the default
  controller and with `--dump-deadline 0` (the dump always idle: what
  snapcore did before).

Prints Markdown tables of the medians.  Needs root and gcc.  Timings are this
machine's, and noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).parent
TARGET = HERE.parent / "tests" / "targets" / "busyheap.c"


COMMAND: list[str] = []  # --snapcore, else snapcore on PATH, else python3 -m snapcore


def snapcore_command() -> list[str]:
    if COMMAND:
        return COMMAND
    found = shutil.which("snapcore")
    return [found] if found else [sys.executable, "-m", "snapcore"]


def tracer_of(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("TracerPid:"):
                return int(line.split()[1])
    return 0


def startup(runs: int, out: Path) -> tuple[float, float]:
    """Median seconds from exec to the first ptrace stop, and to --version's exit."""
    target = subprocess.Popen(["sleep", "600"])
    firsts, versions = [], []
    try:
        for _ in range(runs):
            start = time.monotonic()
            proc = subprocess.Popen([*snapcore_command(), "--max-per-hour", "0", "-o",
                                     str(out), str(target.pid)], stdout=subprocess.DEVNULL)
            while tracer_of(target.pid) == 0 and proc.poll() is None:
                pass  # polling /proc: microseconds per look
            firsts.append(time.monotonic() - start)
            proc.wait()
            start = time.monotonic()
            subprocess.run([*snapcore_command(), "--version"], stdout=subprocess.DEVNULL)
            versions.append(time.monotonic() - start)
    finally:
        target.kill()
        target.wait()
    return statistics.median(firsts), statistics.median(versions)


def one_core(exe: Path, mb: int, threads: int, hogs: int, extra: list[str], out: Path) -> dict:
    spinners = [subprocess.Popen(["sh", "-c", "while :; do :; done"]) for _ in range(hogs)]
    report = out / "report.txt"
    target = subprocess.Popen([str(exe), "spin", str(report), str(mb), str(threads)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert target.stdout.readline().strip() == "ready"
        start = time.monotonic()
        proc = subprocess.run([*snapcore_command(), "--json", "--max-per-hour", "0",
                               "-o", str(out), *extra, str(target.pid)],
                              capture_output=True, text=True)
        wall = time.monotonic() - start
        doc = json.loads(proc.stdout)
        if doc.get("ok"):
            os.unlink(doc["core"]["path"])
            os.unlink(doc["core"]["record"])
        steps = doc.get("priority_steps") or []
        return {"ok": doc.get("ok"), "wall": wall, "dump": doc.get("dump_seconds", 0.0),
                "pause_ms": doc.get("pause_ms", 0.0), "reap_ms": doc.get("reap_pause_ms", 0.0),
                "steps": len(steps), "top": steps[-1]["to"] if steps else "idle"}
    finally:
        target.kill()
        target.wait()
        for hog in spinners:
            hog.kill()
            hog.wait()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5, metavar="N",
                        help="runs per case (default: %(default)s)")
    parser.add_argument("--mb", type=int, default=256, metavar="MB",
                        help="the target's heap, in MB (default: %(default)s)")
    parser.add_argument("--hogs", type=int, default=4, metavar="N",
                        help="spinning processes that saturate the machine "
                             "(default: %(default)s)")
    parser.add_argument("--snapcore", metavar="PATH",
                        help="the snapcore command to time (default: snapcore on PATH); "
                             "time an installed one (install.sh): its bytecode is compiled")
    args = parser.parse_args(argv)
    COMMAND[:] = [args.snapcore] if args.snapcore else []
    build = Path(tempfile.mkdtemp(prefix="snapcore-bench-"))
    exe = build / "busyheap"
    subprocess.run(["gcc", "-O2", "-pthread", "-o", str(exe), str(TARGET)], check=True)
    try:
        first, version = startup(args.runs * 4, build)
        print("| start-up | median |\n| --- | --- |")
        print(f"| exec to the first ptrace stop | {first * 1000:.0f} ms |")
        print(f"| `snapcore --version` | {version * 1000:.0f} ms |\n")
        print("| machine | --dump-deadline | core complete after (s) | dump (s) | pause (ms) "
              "| reap stop (ms) | steps | top |\n| --- | --- | --- | --- | --- | --- | --- "
              "| --- |")
        always_idle = ["--dump-deadline", "0", "--max-dump-time", "180"]
        for name, threads, hogs, extra in [
                ("idle", 0, 0, []), ("busy", 2, 0, []), ("busy", 2, 0, always_idle),
                ("saturated", 2, args.hogs, []), ("saturated", 2, args.hogs, always_idle)]:
            rows = [one_core(exe, args.mb, threads, hogs, extra, build)
                    for _ in range(args.runs)]
            ok = [r for r in rows if r["ok"]]
            med = {k: statistics.median(r[k] for r in ok) if ok else float("nan")
                   for k in ("wall", "dump", "pause_ms", "reap_ms", "steps")}
            deadline = extra[1] if extra else "30 (default)"
            failed = f" ({len(rows) - len(ok)} of {len(rows)} failed)" if len(ok) < len(rows) \
                else ""
            print(f"| {name}, {args.mb} MB{failed} | {deadline} | {med['wall']:.1f} "
                  f"| {med['dump']:.1f} | {med['pause_ms']:.1f} | {med['reap_ms']:.1f} "
                  f"| {med['steps']:.0f} | {ok[-1]['top'] if ok else '-'} |")
    finally:
        shutil.rmtree(build, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
