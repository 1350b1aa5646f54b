"""The snapcore command: parse, call the engine, render, map errors to exit codes."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import sys
from pathlib import Path

import click
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn

from snapcore import __version__
from snapcore.engine import interrupts
from snapcore.engine import preflight
from snapcore.cli import render as report
from snapcore.cli import syslog
from snapcore.cli import selection as targets
from snapcore.core.placement import default_output_dir
from snapcore.errors import (Stage, BadInput, ExitCode, InternalError, Interrupted, SnapcoreError)
from snapcore.units import parse_size
from snapcore.linux.stops import signals_held
from snapcore.engine.result import THREAD_MODES, DumpLimits
from snapcore.engine.snapshot import take
from snapcore.core.gdb import backtraces

PID_MAX_LIMIT = 1 << 22  # PID_MAX_LIMIT on 64-bit kernels

EXIT_CODES_HELP = """\b
Exit codes:
  0  snapshot taken (check: would go ahead)
  1  internal error          7  target did not stop in time
  2  bad command line        8  kernel wrote no core
  3  no such process         9  core handed to a core_pattern pipe
  4  permission denied      10  output directory unusable or full
  5  already traced         11  not enough memory headroom
  6  target not supported   12  rate limit reached
                           130  interrupted (target released)"""


def stdout_console() -> Console:
    """Rich on stdout; piped output gets wide lines rather than wrapped tables."""
    return Console(soft_wrap=True, width=None if sys.stdout.isatty() else 200)


def ptrace_session():
    """SIGCHLD blocked, as the ptrace waits need (see snapcore.ptrace)."""
    return signals_held([signal.SIGCHLD])


def parse_pid(text: str) -> int:
    if not re.fullmatch(r"[0-9]+", text.strip()):
        raise BadInput(f"invalid pid {text!r}",
                       "give the numeric id of a running process (see pgrep NAME)",
                       stage=Stage.USAGE)
    pid = int(text)
    if pid <= 0 or pid >= PID_MAX_LIMIT:
        raise BadInput(f"invalid pid {pid}", "a pid is a number from 1 up (see pgrep NAME)",
                       stage=Stage.USAGE)
    return pid


NEGATIVE_NUMBER = re.compile(r"-[0-9]+")


class DefaultToSnap(click.Group):
    """`snapcore PID` means `snapcore snap PID`."""

    def parse_args(self, ctx, args):
        if args and args[0] not in self.commands and args[0] not in ("-h", "--help",
                                                                       "--version"):
            args = ["snap", *args]
        # click would take `-5` for an unknown option; pass it on as the PID
        # so that `snap` says what is wrong with it.
        negatives = [a for a in args if NEGATIVE_NUMBER.fullmatch(a)]
        if negatives and "--" not in args:
            args = [a for a in args if a not in negatives] + ["--", *negatives]
        return super().parse_args(ctx, args)


@click.group(cls=DefaultToSnap, epilog=EXIT_CODES_HELP,
             context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="snapcore")
def cli():
    """Take a core dump of a running process without stopping it.

    snapcore PID pauses the process only for as long as a fork takes
    (milliseconds), then lets a copy-on-write child of it dump core at idle
    priority while the process runs on.  `snapcore PID` is short for
    `snapcore snap PID`.
    """


def common_options(command):
    """Options that `snap` and `check` share (they judge the same things)."""
    for option in reversed([
        click.option("-o", "--output-dir", type=click.Path(file_okay=False, path_type=Path),
                     help="Where the core goes (created 0700). Default: $SNAPCORE_DIR, "
                          "else /var/lib/snapcore for root, else "
                          "$XDG_STATE_HOME/snapcore."),
        click.option("--json", "as_json", is_flag=True,
                     help="Print one JSON document (errors too) instead of text."),
        click.option("--timeout", type=click.FloatRange(min=0.01), default=2.0,
                     show_default=True, metavar="SECONDS",
                     help="How long to wait for the target to stop (a thread in "
                          "uninterruptible sleep may never); the target is left "
                          "untouched."),
        click.option("--min-free", default="10%", show_default=True, metavar="SIZE|PCT",
                     help="Free space to leave on the output filesystem after the core "
                          "(e.g. 2G or 10%)."),
        click.option("--max-per-hour", type=click.IntRange(min=0), default=4,
                     show_default=True, metavar="N",
                     help="At most N snapshots of the same program per hour (0: no "
                          "limit); one at a time per program."),
    ]):
        command = option(command)
    return command


def make_options(output_dir, timeout, min_free, max_per_hour) -> preflight.Options:
    if not (min_free.strip().endswith("%") or is_size(min_free)):
        raise BadInput(f"invalid --min-free {min_free!r}", "give a size (2G) or a "
                       "percentage of the filesystem (10%)", stage=Stage.USAGE)
    return preflight.Options(output_dir=output_dir or default_output_dir(),
                             min_free=min_free, max_per_hour=max_per_hour, timeout=timeout)


def is_size(text: str) -> bool:
    try:
        parse_size(text)
        return True
    except ValueError:
        return False


def check_force(names: tuple[str, ...]) -> None:
    for name in names:
        if name not in preflight.CHECKS:
            raise BadInput(f"--force {name}: no such check",
                           f"checks: {', '.join(preflight.CHECKS)}", stage=Stage.USAGE)
        if name not in preflight.FORCEABLE:
            raise BadInput(f"--force {name}: this check cannot be overridden",
                           f"only these can: {', '.join(preflight.FORCEABLE)}",
                           stage=Stage.USAGE)


def target_options(command):
    """Ways to name the processes to snapshot, besides pids."""
    for option in reversed([
        click.option("--name", "name_pattern", metavar="PATTERN",
                     help="Processes whose name or command line matches this regular "
                          "expression (like pgrep); several matches are refused unless "
                          "--all."),
        click.option("--all", "take_all", is_flag=True,
                     help="With --name: every matching process."),
        click.option("--pidfile", type=click.Path(dir_okay=False), metavar="FILE",
                     help="The process whose pid this file holds."),
        click.option("--unit", metavar="UNIT",
                     help="A systemd service's main process (systemctl show MainPID)."),
    ]):
        command = option(command)
    return command


def resolve_targets(pids, name_pattern, take_all, pidfile, unit) -> list[int]:
    found = [parse_pid(p) for p in pids]
    if name_pattern:
        found += targets.by_name(name_pattern, take_all)
    if pidfile:
        found.append(targets.by_pidfile(pidfile))
    if unit:
        found.append(targets.by_unit(unit))
    if not found:
        raise BadInput("no target given", "give a PID, or --name, --pidfile or --unit",
                       stage=Stage.USAGE)
    return list(dict.fromkeys(found))


def snap_options(command):
    """What `snap` and `stacks` share: how to take the snapshot."""
    for option in reversed([
        click.option("--threads", type=click.Choice(THREAD_MODES), default="all",
                     show_default=True,
                     help="all: every thread is held for the fork and appears in the core "
                          "with its registers (the pause grows by some tens of "
                          "microseconds per thread). main: only the main thread is held "
                          "and dumped (the shortest pause; other threads show without "
                          "registers)."),
        click.option("--stall-timeout", type=click.FloatRange(min=0), default=10.0,
                     show_default=True, metavar="SECONDS",
                     help="If the core has not grown by 1 MiB for this long (an "
                          "idle-priority dump "
                          "starved by busy CPUs, while the target pays for copy-on-write), "
                          "raise the dump to normal priority at nice 19. 0: never."),
        click.option("--max-dump-time", type=click.FloatRange(min=0), default=0.0,
                     show_default=True, metavar="SECONDS",
                     help="Kill the dump and fail if it lasts longer than this. 0: no "
                          "limit."),
        click.option("--force", "force", multiple=True, metavar="CHECK",
                     help="Go ahead although this check refuses (repeatable; see "
                          "`snapcore check`). Only " + ", ".join(preflight.FORCEABLE)
                          + " can be forced."),
        click.option("--reason", default="", metavar="TEXT",
                     help="Why the snapshot is taken (an incident id), kept in its record."),
        click.option("--compress", "compressed", is_flag=True,
                     help="Store the core as CORE.zst (zstandard, at idle priority)."),
    ]):
        command = option(command)
    return command


@contextlib.contextmanager
def dump_progress(enabled: bool):
    """A progress bar on stderr while the kernel writes the core: bytes against
    the estimate, and the time.  Only for a person at a terminal."""
    if not enabled or not sys.stderr.isatty():
        yield None
        return
    columns = (TextColumn("dumping"), BarColumn(), DownloadColumn(), TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("dump", total=None)
        yield lambda written, expected: bar.update(task, completed=written,
                                                   total=max(expected, written) or None)


def take_each(pids, opts, params, show_progress: bool = False, reason: str | None = None):
    """Snapshot each target in turn; a result per target (Snapshot or error)."""
    results = []
    for target_pid in pids:
        try:
            with dump_progress(show_progress) as progress:
                results.append(take(target_pid, opts, threads=params["threads"],
                                    force=params["force"],
                                    limits=DumpLimits(params["stall_timeout"],
                                                      params["max_dump_time"], progress),
                                    reason=params["reason"] if reason is None else reason,
                                    compressed=params["compressed"]))
        except SnapcoreError as exc:
            exc.pid = exc.pid if exc.pid is not None else target_pid
            results.append(exc)
        except KeyboardInterrupt:
            results.append(Interrupted("interrupted", "the target was released and keeps "
                                       "running", pid=target_pid, stage=Stage.INTERRUPT))
            break
        syslog.log_result(results[-1], params.get("to_syslog", False))
    return results


def exit_code_of(results) -> int:
    for r in results:
        if isinstance(r, SnapcoreError):
            return int(r.exit_code)
    return int(ExitCode.CORE_PIPED) if any(r.core_path is None for r in results) else 0


@cli.command(epilog=EXIT_CODES_HELP)
@click.argument("pids", metavar="[PID]...", nargs=-1)
@target_options
@common_options
@click.option("-q", "--quiet", is_flag=True, help="Print only the cores' paths.")
@click.option("-v", "--verbose", is_flag=True,
              help="Also show the pause split, the child, core_pattern, the threads and "
                   "every check.")
@snap_options
@click.option("--stacks", "with_stacks", is_flag=True,
              help="Also print every thread's backtrace from the core (needs gdb).")
@click.option("--syslog", "to_syslog", is_flag=True,
              help="Log one line per snapshot or refusal to syslog even on a terminal "
                   "(always done when stderr is not a terminal).")
def snap(pids, name_pattern, take_all, pidfile, unit, output_dir, as_json, timeout, min_free,
         max_per_hour, quiet, verbose, with_stacks, to_syslog, **params):
    """Snapshot each process into a core file; the processes keep running.

    Every check of `snapcore check` runs first. The core is named
    TIMESTAMP_NAME_PID.core (UTC), owned by you, mode 0600, with its record
    TIMESTAMP_NAME_PID.json beside it, so `ls` lists snapshots by time and
    `gdb EXE "$(snapcore -q PID)"` works.
    """
    out = stdout_console()
    err = Console(stderr=True)
    try:
        wanted = resolve_targets(pids, name_pattern, take_all, pidfile, unit)
        check_force(params["force"])
        opts = make_options(output_dir, timeout, min_free, max_per_hour)
    except SnapcoreError as exc:
        fail(exc, as_json, err)
    params["to_syslog"] = to_syslog
    results = take_each(wanted, opts, params, show_progress=not (as_json or quiet))
    docs = []
    for result in results:
        if isinstance(result, SnapcoreError):
            docs.append({"ok": False, "error": result.as_dict()})
            if not as_json:
                report.print_error(result, err)
            continue
        doc = report.snapshot_dict(result)
        if with_stacks and result.core_path is not None:
            try:
                doc["stacks"] = backtraces(result.target.exe, result.core_path)
            except SnapcoreError as exc:
                doc["stacks_error"] = exc.one_line()
        docs.append(doc)
        if as_json:
            continue
        if quiet:
            if result.core_path is not None:
                click.echo(str(result.core_path))
            else:
                err.print(f"snapcore: core of {result.target.pid} handed to "
                          f"{result.core_pattern.handler}: {report.pipe_lookup(result)}",
                          markup=False, highlight=False)
        else:
            report.print_snapshot(result, verbose, out)
        if "stacks" in doc:
            click.echo(doc["stacks"])
        elif "stacks_error" in doc:
            err.print(f"snapcore: {doc['stacks_error']}", markup=False, highlight=False)
    if as_json:
        report.print_json(docs[0] if len(docs) == 1 else
                          {"ok": all(d["ok"] for d in docs), "snapshots": docs})
    sys.exit(exit_code_of(results))


@cli.command(epilog=EXIT_CODES_HELP)
@click.argument("pid", metavar="PID")
@common_options
def check(pid, output_dir, as_json, timeout, min_free, max_per_hour):
    """Say whether a snapshot of PID would go ahead, and why not.

    Runs every check `snapcore PID` runs, without taking a snapshot: the
    process is stopped only for a moment, to read its seccomp filters when it
    has some. Exits 0 when a snapshot would go ahead, else with the exit code
    the first refusal would give.
    """
    err = Console(stderr=True)
    try:
        opts = make_options(output_dir, timeout, min_free, max_per_hour)
        with ptrace_session():
            result = preflight.run(parse_pid(pid), opts)
    except SnapcoreError as exc:
        fail(exc, as_json, err)
    except KeyboardInterrupt:
        fail(Interrupted("interrupted", "the target keeps running", stage=Stage.INTERRUPT),
              as_json, err)
    refusals = result.refusals()
    if as_json:
        report.print_json(report.check_dict(result))
    else:
        report.print_checks(result, stdout_console())
    sys.exit(int(refusals[0].exit_code) if refusals else 0)


def fail(exc: SnapcoreError, as_json: bool, err: Console):
    if as_json:
        report.print_json({"ok": False, "error": exc.as_dict()})
    else:
        report.print_error(exc, err)
    sys.exit(int(exc.exit_code))


def _stop_requested(signum, frame):
    # SIGINT, SIGTERM and SIGHUP end snapcore through the engine's cleanup:
    # while the target is stopped they are blocked; while snapcore puts things
    # back after a failure or a first interruption, they wait for it.
    if interrupts.in_cleanup():
        interrupts.remember()
        Console(stderr=True).print("snapcore: still putting the target back and removing "
                                   "the child; waiting for that first", markup=False,
                                   highlight=False)
        return
    raise KeyboardInterrupt


def main(argv=None):
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _stop_requested)
    args = sys.argv[1:] if argv is None else list(argv)
    if os.environ.get("_SNAPCORE_COMPLETE"):  # shell completion: click answers and exits
        cli.main(args=args, prog_name="snapcore", complete_var="_SNAPCORE_COMPLETE")
    if not args:
        click.echo(cli.get_help(click.Context(cli, info_name="snapcore")), err=True)
        sys.exit(ExitCode.USAGE)
    err = Console(stderr=True)
    as_json = "--json" in args
    try:
        cli.main(args=args, prog_name="snapcore", standalone_mode=False)
    except click.UsageError as exc:
        fail(BadInput(exc.format_message(), "see snapcore --help", stage=Stage.USAGE), as_json,
              err)
    except click.exceptions.Abort:  # Ctrl-C outside the engine: nothing was touched
        fail(Interrupted("interrupted", "the target was not touched", stage=Stage.INTERRUPT),
              as_json, err)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except Exception as exc:  # a bug: one line for the operator, the traceback on request
        if os.environ.get("SNAPCORE_DEBUG"):
            raise
        fail(InternalError(f"internal error: {type(exc).__name__}: {exc}",
                            "the target was released; rerun with SNAPCORE_DEBUG=1 and "
                            "report the traceback", stage=Stage.INTERNAL), as_json, err)
    sys.exit(0)


