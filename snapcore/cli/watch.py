"""snapcore watch: sample a process and snapshot it when a condition holds,
like ProcDump's triggers."""

from __future__ import annotations

import json
import sys
import time
from dataclasses import replace
from datetime import datetime, timezone

import click

from snapcore import bounds
from snapcore.cli import render as report
from snapcore.cli.app import cli, fail
from snapcore.cli.options import (EXIT_CODES_HELP, Bounded, common_options, make_request,
                                  one_target, pid_argument, snap_options, target_options)
from snapcore.errors import BadInput, ExitCode, Interrupted, SnapcoreError, Stage


@cli.command(epilog=EXIT_CODES_HELP)
@pid_argument()
@target_options
@click.option("--wait", "wait_for", is_flag=True,
              help="With --name: wait for a matching process to start, then watch it.")
@click.option("--interval", type=Bounded("interval"), default=1.0, show_default=True,
              metavar="SECONDS",
              help=f"How often to sample the process ({bounds.span('interval')}).")
@click.option("--for", "hold", type=Bounded("hold"), default=5.0, show_default=True,
              metavar="SECONDS", help="How long a condition must hold before it fires "
                                      f"({bounds.span('hold')}).")
@click.option("--cpu", type=Bounded("cpu"), metavar="PCT",
              help="Fire when the process uses at least PCT percent of a CPU (100 a CPU; "
                   f"{bounds.span('cpu')}).")
@click.option("--cpu-below", type=Bounded("cpu_below"), metavar="PCT",
              help="Fire when it uses less than PCT percent of a CPU (stalled; "
                   f"{bounds.span('cpu_below')}).")
@click.option("--rss", type=Bounded("rss", "size"), metavar="SIZE",
              help=f"Fire when its resident memory reaches SIZE ({bounds.span('rss')}).")
@click.option("--rss-below", type=Bounded("rss_below", "size"), metavar="SIZE",
              help="Fire when its resident memory is less than SIZE "
                   f"({bounds.span('rss_below')}).")
@click.option("--threads-over", "threads_over", type=Bounded("threads"), metavar="N",
              help=f"Fire when it has at least N threads ({bounds.span('threads')}).")
@click.option("--fds", type=Bounded("fds"), metavar="N",
              help="Fire when it has at least N open file descriptors "
                   f"({bounds.span('fds')}).")
@click.option("--count", type=Bounded("count"), default=1, show_default=True,
              metavar="N", help=f"Stop after N snapshots ({bounds.span('count')}).")
@click.option("--cooldown", type=Bounded("cooldown"), default=300.0, show_default=True,
              metavar="SECONDS", help="At least this long between two snapshots "
                                      f"({bounds.span('cooldown')}).")
@common_options
@snap_options
def watch(pid, name_pattern, take_all, pidfile, unit, wait_for, interval, hold, cpu,
          cpu_below, rss, rss_below, threads_over, fds, count, cooldown, output_dir, writer,
          as_json, timeout, min_free, max_per_hour, asked: dict):
    """Watch PID and snapshot it when a condition holds for --for seconds.

    Conditions: --cpu, --cpu-below, --rss, --rss-below, --threads-over,
    --fds (any one fires). Takes at most --count snapshots, --cooldown apart,
    within the rate limit (spent: it says when the next is possible and
    fires then if the condition holds). Logs each sample (UTC) and the
    trigger; the record keeps --reason and the trigger. With --json, one
    JSON document a line per sample, firing, snapshot, limit and end.
    Exits when the process exits: 15 if nothing fired.
    """
    from snapcore.engine import watch as watchmod
    try:
        conditions = watchmod.Conditions(cpu, rss, threads_over, fds, cpu_below, rss_below)
        if not conditions.any():
            raise BadInput("no condition to watch for", "give --cpu, --cpu-below, --rss, "
                           "--rss-below, --threads-over or --fds", stage=Stage.USAGE)
        if wait_for and not name_pattern:
            raise BadInput("--wait needs --name", "say which process to wait for",
                           stage=Stage.USAGE)
        request = make_request(output_dir, timeout, min_free, max_per_hour, writer, **asked)
        if wait_for:
            target_pid = _wait_for(name_pattern, interval, as_json)
        else:
            target_pid = one_target(pid, name_pattern, take_all, pidfile, unit)
        ended, taken = _run(watchmod.events(
            target_pid, conditions, _snapshotter(target_pid, request),
            interval=interval, hold=hold, count=count, cooldown=cooldown,
            next_allowed=_budget(target_pid, request)), as_json, request.reason)
    except SnapcoreError as exc:
        fail(exc, as_json)
    except KeyboardInterrupt:
        fail(Interrupted("interrupted", "the process keeps running", stage=Stage.INTERRUPT),
             as_json)
    from snapcore.cli.snap import exit_code_of
    sys.exit(exit_code_of(taken) if taken else
             0 if ended[2] else int(ExitCode.WATCH_ENDED))


def _snapshotter(pid: int, request):
    """Take one snapshot for a trigger: the record keeps both the operator's
    --reason (else "watch: TRIGGER", for list's reason column) and the trigger."""
    from snapcore.cli.snap import take_each

    def snapshot(trigger):
        result = take_each([pid], replace(request, reason=request.reason or
                                          f"watch: {trigger}", trigger=trigger))[0]
        if isinstance(result, SnapcoreError):
            raise result
        return result
    return snapshot


def _budget(pid: int, request):
    """When the rate limit next allows a snapshot (None: now), for watch to
    wait for rather than fire into a refusal."""
    from snapcore.engine import ratelimit
    if "rate-limit" in request.force or request.max_per_hour <= 0:
        return lambda: None
    return lambda: ratelimit.next_snapshot(pid, request.output_dir, request.max_per_hour)


def _run(events, as_json: bool, reason: str = ""):
    """Report each event as it comes: a line for people, a JSON line for scripts."""
    taken, ended = [], None
    for event in events:
        kind = event[0]
        if kind == "snapshot":
            taken.append(event[1])
        elif kind == "end":
            ended = event
        if as_json:
            _json_line(event, reason)
        elif kind == "limited":
            report.say(f"{stamp()} snapcore: the rate limit's budget is used: the next "
                       f"snapshot is possible at {stamp(event[1])} (in {_until(event[1])}); "
                       "watch fires then if the condition still holds")
        elif kind == "sample":
            met = f"  <- {'; '.join(event[2])}" if event[2] else ""
            report.say(f"{stamp(event[1].at)} {event[1].text()}{met}")
        elif kind == "fire":
            report.say(f"{stamp()} snapcore: firing: {event[1]}")
        elif kind == "snapshot" and isinstance(event[1], SnapcoreError):
            report.print_error(event[1])
        elif kind == "snapshot":
            click.echo(str(event[1].core_path or "(handed to core_pattern pipe)"))
        elif kind == "end":
            report.say(f"{stamp()} snapcore: watch ended: {event[1]}"
                       + ("" if event[2] else " (no condition fired)"))
    return ended, taken


def _until(when: float) -> str:
    left = max(0, round(when - time.time()))
    return f"{left // 60} min {left % 60} s" if left >= 60 else f"{left} s"


def _json_line(event, reason: str = "") -> None:
    kind, doc = event[0], {"event": event[0], "time": stamp()}
    if kind == "sample":
        s = event[1]
        doc.update(time=stamp(s.at), cpu=round(s.cpu, 1), rss=s.rss, threads=s.threads,
                   fds=s.fds, met=event[2])
    elif kind == "fire":
        doc.update(trigger=event[1], reason=reason)
    elif kind == "snapshot":
        doc.update({"ok": False, "error": report.error_dict(event[1])}
                   if isinstance(event[1], SnapcoreError) else report.snapshot_dict(event[1]))
        doc.update(reason=reason or f"watch: {event[2]}", trigger=event[2])  # as recorded
    elif kind == "limited":
        doc["next_at"] = stamp(event[1])
    elif kind == "end":
        doc.update(reason=event[1], fired=event[2])
    elif kind == "waiting":
        doc["name"] = event[1]
    click.echo(json.dumps(doc))


def _wait_for(pattern: str, interval: float, as_json: bool) -> int:
    """The pid of the first process matching --name, polling until one starts."""
    from snapcore.cli import selection
    from snapcore.errors import NoSuchProcess
    said = False
    while True:
        try:
            return selection.by_name(pattern, take_all=False)[0]
        except NoSuchProcess:
            if not said:
                if as_json:
                    _json_line(("waiting", pattern))
                else:
                    report.say(f"{stamp()} snapcore: waiting for a process matching "
                               f"{pattern!r}")
                said = True
            time.sleep(interval)


def stamp(when: float | None = None) -> str:
    """UTC, as in the cores' names: 20261127T103555.797Z."""
    at = datetime.fromtimestamp(time.time() if when is None else when, timezone.utc)
    return at.strftime("%Y%m%dT%H%M%S.") + f"{at.microsecond // 1000:03d}Z"

