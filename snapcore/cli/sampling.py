"""snapcore stacks --samples N: a sampling profiler whose samples are
snapshots.  Each sample costs the target one fork window (its pause is
reported per sample) and is read from the core afterwards, while the target
runs; the merged stacks are printed as the hottest innermost frames (text)
or as flamegraph.pl's collapsed lines.  How the rate limit and the other
checks apply per sample: cli/stacks.py.
"""

from __future__ import annotations

import sys
import time

import click

from snapcore.cli import render as report
from snapcore.cli.stacks import later_request, pace, private_dir, remove_dir, sample_once
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
                snap, stacks = sample_once(pid, this, lang, native, keep)
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
