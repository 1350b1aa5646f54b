#!/usr/bin/env python3
"""How long until the core is complete, and what it costs: the kernel's
writer, snapcore's writer and gcore.

    python3 bench/writer.py [--sizes 256,1024,4096] [--busy 0,2] [--runs 1]
                            [--tools kernel,snapcore,gcore] [--compress both|no|yes]

For each size (MB) a bench/hold.c process holds that much written memory and
sleeps; `--busy N` runs N spinning processes meanwhile (N = the CPUs: a busy
machine, where an idle-priority dump waits for the watchdog to raise it).
Per run:

- seconds: the tool's wall time, start-up included, until the core is on disk;
- CPU: the tool's own (user + system, its children included) plus the
  snapshot child's (the kernel's writer works in its context), polled from
  /proc every 50 ms while the tool runs;
- extra memory: the tool's peak resident size plus the page tables the fork
  copied (the target's VmPTE; gcore forks nothing).  The target is asleep,
  so copy-on-write costs nothing here;
- the core's size on disk.

Needs root, gcc, gdb.  Prints a Markdown table.  Timings are this machine's.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).parent


def build(tmp: Path) -> Path:
    exe = tmp / "hold"
    subprocess.run(["gcc", "-O2", "-o", str(exe), str(HERE / "hold.c")], check=True)
    return exe


def clock_ticks(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class ChildCpu:
    """The snapshot child's CPU, polled while the tool runs: the kernel writes
    the core in the child's context, and the child (an orphan, soon reaped)
    is not the tool's child, so no rusage counts it."""

    def __init__(self, name: str, target: int):
        self.name, self.target = name, target
        self.seen: dict[int, float] = {}
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._poll, daemon=True)
        self.thread.start()

    def _poll(self) -> None:
        while not self.done.is_set():
            for entry in os.listdir("/proc"):
                if entry.isdigit() and int(entry) != self.target:
                    try:
                        if Path(f"/proc/{entry}/comm").read_text().strip() == self.name:
                            self.seen[int(entry)] = max(self.seen.get(int(entry), 0.0),
                                                        clock_ticks(int(entry)))
                    except OSError:
                        pass
            time.sleep(0.05)

    def total(self) -> float:
        self.done.set()
        self.thread.join()
        return sum(self.seen.values())


def vm_pte(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmPTE:"):
            return int(line.split()[1]) * 1024
    return 0


class TooLong(Exception):
    pass


class Failed(Exception):
    pass


LIMIT = [600.0]  # seconds a run may take (--limit)


def run(cmd: list[str], stdout=subprocess.PIPE) -> tuple[float, float, int, str]:
    """Wall seconds, CPU seconds and peak RSS (bytes) of a command and its children.
    A run past LIMIT is stopped (SIGTERM: snapcore cleans up) and raises TooLong."""
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=stdout, stderr=subprocess.PIPE, text=True)
    timer = threading.Timer(LIMIT[0], proc.terminate)
    timer.start()
    out = proc.stdout.read() if proc.stdout else ""
    _, status, usage = os.wait4(proc.pid, 0)
    timer.cancel()
    wall = time.monotonic() - t0
    if wall >= LIMIT[0]:
        raise TooLong()
    if os.waitstatus_to_exitcode(status) not in (0,):
        try:
            raise Failed(json.loads(out)["error"]["message"])
        except (ValueError, KeyError, TypeError):
            raise Failed(proc.stderr.read()[-200:].strip()) from None
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss * 1024, out


def one(tool: str, compress: bool, pid: int, out: Path) -> dict:
    pte = vm_pte(pid)
    if tool == "gcore":
        core = out / "gcore"
        wall, cpu, rss, _ = run(["gcore", "-o", str(core), str(pid)])
        files = list(out.glob("gcore*"))
        if compress:
            w2, c2, r2, _ = run(["zstd", "-q", "--rm", "-3", str(files[0])])
            wall, cpu, rss = wall + w2, cpu + c2, max(rss, r2)
            files = list(out.glob("gcore*"))
        pte = 0
    else:
        cmd = [sys.executable, "-m", "snapcore", "--json", "--max-per-hour", "0",
               "--writer", tool, "-o", str(out), str(pid)] + (["--compress"] if compress else [])
        child = ChildCpu("hold", pid)
        wall, cpu, rss, text = run(cmd)
        cpu += child.total()
        doc = json.loads(text)
        files = [Path(doc["core"]["path"])]
    disk = sum(f.stat().st_blocks * 512 for f in files)
    for f in out.iterdir():
        if f.is_file():
            f.unlink()
    return {"seconds": wall, "cpu": cpu, "memory": rss + pte, "disk": disk}


def spinners(n: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="256,1024,4096")
    ap.add_argument("--busy", default="0,2")
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--tools", default="kernel,snapcore,gcore")
    ap.add_argument("--compress", default="both", choices=("both", "no", "yes"))
    ap.add_argument("--limit", type=float, default=600.0,
                    help="seconds a run may take before it is stopped and reported as such")
    args = ap.parse_args()
    LIMIT[0] = args.limit
    tmp = Path(tempfile.mkdtemp(prefix="snapcore-writer-bench-"))
    exe = build(tmp)
    out = tmp / "out"
    out.mkdir()
    modes = {"both": (False, True), "no": (False,), "yes": (True,)}[args.compress]
    print("| size | machine | writer | compress | until core complete | CPU | extra memory "
          "| core on disk |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    try:
        for mb in [int(s) for s in args.sizes.split(",")]:
            target = subprocess.Popen([str(exe), str(mb)], stdout=subprocess.PIPE, text=True)
            assert target.stdout.readline().strip() == "ready"
            try:
                for busy in [int(b) for b in args.busy.split(",")]:
                    load = spinners(busy)
                    try:
                        for compress in modes:
                            for tool in args.tools.split(","):
                                try:
                                    results = [one(tool, compress, target.pid, out)
                                               for _ in range(args.runs)]
                                except Failed as exc:
                                    print(f"| {mb} MB | {'busy' if busy else 'idle'} | {tool} "
                                          f"| {'zstd' if compress else 'no'} | failed: "
                                          f"{exc} | | | |", flush=True)
                                    continue
                                except TooLong:
                                    print(f"| {mb} MB | {'busy' if busy else 'idle'} | {tool} "
                                          f"| {'zstd' if compress else 'no'} | over "
                                          f"{LIMIT[0]:.0f} s (stopped) | | | |", flush=True)
                                    for f in out.iterdir():
                                        if f.is_file():
                                            f.unlink()
                                    continue
                                best = min(results, key=lambda r: r["seconds"])
                                print(f"| {mb} MB | {'busy' if busy else 'idle'} | {tool} | "
                                      f"{'zstd' if compress else 'no'} | "
                                      f"{best['seconds']:.2f} s | {best['cpu']:.2f} s | "
                                      f"{best['memory'] / 2**20:.0f} MiB | "
                                      f"{best['disk'] / 2**20:.0f} MiB |", flush=True)
                    finally:
                        for p in load:
                            p.kill()
                            p.wait()
            finally:
                target.kill()
                target.wait()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
