"""snapcore stacks --samples N: a sampling profiler whose samples are
snapshots.  Each sample costs the target one fork window (its pause is
reported per sample) and is read from the core afterwards, while the target
runs; the merged stacks are printed as the hottest innermost frames (text)
or as flamegraph.pl's collapsed lines.  How the rate limit and the other
checks apply per sample: cli/stacks.py.  A sample is a snapshot taken to be
read (cli/stacksnap.py), removed once read.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import click

from snapcore.cli import render as report
from snapcore.cli import stacksnap
from snapcore.core.stackmodel import collapsed_stacks, hottest
from snapcore.errors import SnapcoreError


def run_samples(pid: int, request, count: int, interval: float, lang: str, native: bool,
                fmt: str, keep: bool, as_json: bool) -> None:
    taken, rows, stopped = [], [], None
    request.output_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    directory = None
    try:
        for i in range(count):
            started = time.monotonic()
            if i == 1:
                directory = private_dir(request.output_dir)
            this = request if directory is None else later_request(request, directory)
            try:
                snap = stacksnap.take(pid, this)
                stacks, _ = stacksnap.read(snap, lang, native, discard=not keep)
            except SnapcoreError as exc:
                stopped = exc
                break
            taken.append(stacks)
            rows.append({"sample": i + 1, "pause_ms": round(snap.pause_ms, 3),
                         "read_s": round(stacks.seconds, 3),
                         "core": str(snap.core_path) if keep else None})
            if not as_json:
                report.say(f"snapcore: sample {i + 1}/{count}: paused {snap.pause_ms:.2f} ms, "
                           f"read by {stacks.reader} in {stacks.seconds:.2f} s")
            if i + 1 < count:
                pace(started, interval)
    finally:
        if directory is not None:
            remove_dir(directory, keep)
    _print(taken, rows, stopped, fmt, as_json, count)
    if stopped is not None:
        sys.exit(int(stopped.exit_code))


def _print(taken, rows, stopped, fmt: str, as_json: bool, count: int) -> None:
    collapsed = collapsed_stacks(taken)
    if as_json:
        report.print_json({"ok": stopped is None, "samples": rows, "asked": count,
                           "reader": taken[0].reader if taken else None,
                           "lang": taken[0].lang if taken else None,
                           "stopped": report.error_dict(stopped) if stopped else None,
                           "stacks": [{"stack": k, "count": n}
                                      for k, n in collapsed.most_common()]})
        return
    if stopped is not None:
        report.print_error(stopped, report.stderr_console())
    if fmt == "collapsed":
        for stack, n in collapsed.most_common():
            click.echo(f"{stack} {n}")
        return
    if taken:
        worst = max(r["pause_ms"] for r in rows)
        click.echo(f"# {len(taken)} samples of {taken[0].lang} stacks read by "
                   f"{taken[0].reader} {taken[0].reader_version}; the target's worst pause "
                   f"{worst:.2f} ms")
        click.echo("# innermost frame: samples (of thread-samples)")
        for label, n, total in hottest(taken):
            click.echo(f"{n:6d} {100.0 * n / total:5.1f}%  {label}")
        click.echo("# hottest stacks: samples")
        for stack, n in collapsed.most_common(5):
            click.echo(f"{n:6d}  {stack}")


def private_dir(output_dir: Path) -> Path:
    """Where samples after the first go: new, 0700, inside the output
    directory (the same filesystem, so the disk check means the same)."""
    return Path(tempfile.mkdtemp(prefix=".snapcore-samples-", dir=output_dir))


def later_request(request, directory: Path):
    return replace(request, output_dir=directory, max_per_hour=0)


def remove_dir(directory: Path, keep: bool) -> None:
    if not keep:
        shutil.rmtree(directory, ignore_errors=True)


def pace(started: float, interval: float) -> None:
    """Until the next sample, give or take 10 % at random: samples at a fixed
    period alias with periodic work (a 100 ms loop sampled every 300 ms is
    seen in one phase of it only)."""
    import random
    time.sleep(max(0.0, interval * random.uniform(0.9, 1.1) - (time.monotonic() - started)))
