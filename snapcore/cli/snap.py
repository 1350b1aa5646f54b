"""snapcore snap (and snapcore PID): take each snapshot, render each result.
"""

from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import replace

import click

from snapcore.cli import render as report
from snapcore.cli import syslog
from snapcore.cli.app import cli, fail
from snapcore.cli.options import (EXIT_CODES_HELP, common_options, lang_option, make_request,
                                  native_option, pid_argument, resolve_targets, snap_options,
                                  target_options)
from snapcore.errors import BadInput, ExitCode, Interrupted, SnapcoreError, Stage


@contextlib.contextmanager
def dump_progress(enabled: bool):
    """A progress bar on stderr while the kernel writes the core: bytes against
    the estimate, and the time.  Only for a person at a terminal."""
    if not enabled or not sys.stderr.isatty():
        yield None
        return
    with contextlib.ExitStack() as drawn:
        shown: list = []

        def show(written: int, expected: int) -> None:
            # Drawn from the first report of the dump on: rich loads after
            # the target is released, not before it is stopped.
            if not shown:
                shown.append(drawn.enter_context(_bar()))
            bar, task = shown[0]
            # GiB like the summary; past the estimate the kernel is still
            # writing (notes, the last mappings): "finishing", not 100%.
            bar.update(task, completed=written, total=max(expected, written) or None,
                       phase="finishing" if expected and written >= expected else "dumping")
        yield show


@contextlib.contextmanager
def _bar():
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn
    columns = (TextColumn("{task.fields[phase]}"), BarColumn(),
               DownloadColumn(binary_units=True), TimeElapsedColumn())
    with Progress(*columns, console=report.stderr_console(), transient=True) as bar:
        yield bar, bar.add_task("dump", total=None, phase="dumping")


def take_each(pids, request, show_progress: bool = False, to_syslog: bool = False):
    """Snapshot each target in turn; a result per target (Snapshot or error).
    With request.keep_exe each Snapshot keeps a descriptor on its executable,
    for gdb (closed by the caller: close_exe)."""
    from snapcore.engine.snapshot import take
    results: list = []  # a Snapshot or a SnapcoreError per target
    for target_pid in pids:
        if request.to_stdout:
            sys.stdout.flush()  # nothing of snapcore's own may mix with the core
        try:
            with dump_progress(show_progress) as progress:
                results.append(take(target_pid, replace(request, progress=progress)))
        except SnapcoreError as exc:
            exc.pid = exc.pid if exc.pid is not None else target_pid
            results.append(exc)
        except KeyboardInterrupt:
            results.append(Interrupted("interrupted", "the target was released and keeps "
                                       "running", pid=target_pid, stage=Stage.INTERRUPT))
            break
        syslog.log_result(results[-1], to_syslog, reason=request.reason,
                          trigger=request.trigger)
    return results


def executable(result) -> str | int:
    """What gdb is handed for a snapshot: the descriptor on the very file the
    target ran (its own name for it may name nothing, or another file, in
    snapcore's mount namespace), else that name."""
    return result.exe_fd if result.exe_fd is not None else result.target.exe


def close_exe(result) -> None:
    if getattr(result, "exe_fd", None) is not None:
        os.close(result.exe_fd)
        result.exe_fd = None


def exit_code_of(results) -> int:
    for r in results:
        if isinstance(r, SnapcoreError):
            return int(r.exit_code)
    return int(ExitCode.CORE_PIPED) if any(r.core_path is None and not r.streamed
                                           for r in results) else 0


@cli.command(epilog=EXIT_CODES_HELP)
@pid_argument(many=True)
@target_options
@common_options
@click.option("-q", "--quiet", is_flag=True,
              help="Print only the cores' paths (with --stacks, the stacks go to stderr).")
@click.option("-v", "--verbose", is_flag=True,
              help="Also show the pause split, the child, core_pattern, the threads and "
                   "every check.")
@snap_options
@click.option("--stacks", "with_stacks", is_flag=True,
              help="Also print every thread's stacks from the core, read as for snapcore "
                   "stacks (--lang; gdb for native code: without the reader the snapshot "
                   "is kept and reported, and snapcore exits 14).")
@lang_option
@native_option
@click.option("--syslog", "to_syslog", is_flag=True,
              help="Log one line per snapshot or refusal to syslog even on a terminal "
                   "(always done when stderr is not a terminal).")
def snap(pids, name_pattern, take_all, pidfile, unit, output_dir, writer, as_json, timeout,
         min_free, max_per_hour, quiet, verbose, with_stacks, lang, native, to_syslog,
         asked: dict):
    """Snapshot each process into a core file; the processes keep running.

    Every check of `snapcore check` runs first. The core is named
    TIMESTAMP_NAME_PID.core (UTC), owned by you, mode 0600, with its record
    TIMESTAMP_NAME_PID.json beside it, so `ls` lists snapshots by time and
    `gdb EXE "$(snapcore -q PID)"` works.
    """
    try:
        wanted = resolve_targets(pids, name_pattern, take_all, pidfile, unit)
        request = make_request(output_dir, timeout, min_free, max_per_hour, writer,
                               stdout_ok=True, keep_exe=with_stacks, **asked)
        if request.to_stdout:
            check_stream(wanted, with_stacks)
    except SnapcoreError as exc:
        fail(exc, as_json, to_stderr=output_dir is not None and str(output_dir) == "-")
    results = take_each(wanted, request, show_progress=not (as_json or quiet),
                        to_syslog=to_syslog)
    from snapcore.core import keptstacks
    from snapcore.core.readers import read_core
    out, err = report.stdout_console(), report.stderr_console()
    if request.to_stdout:
        out = err  # the core has standard output to itself: the report goes to stderr
    docs = []
    for result in results:
        if isinstance(result, SnapcoreError):
            docs.append({"ok": False, "error": report.error_dict(result)})
            if not as_json:
                report.print_error(result, err)
            continue
        doc = report.snapshot_dict(result)
        if with_stacks and result.core_path is not None:
            try:
                read = read_core(result.core_path, executable(result), lang, native)
                doc["stacks"], doc["stacks_model"] = read.render(), read.to_dict()
                problem = keptstacks.keep(result.core_path, read)
                if problem:
                    report.say(f"snapcore: warning: {problem}")
            except SnapcoreError as exc:
                doc["stacks_error"] = report.error_line(exc)
            finally:
                close_exe(result)
        docs.append(doc)
        if as_json:
            continue
        if quiet:
            if result.streamed:
                pass  # the core itself is standard output
            elif result.core_path is not None:
                click.echo(str(result.core_path))
            else:
                err.print(f"snapcore: core of {result.target.pid} handed to "
                          f"{result.core_pattern.handler}: {report.pipe_lookup(result)}",
                          markup=False, highlight=False)
        else:
            report.print_snapshot(result, verbose, out)
        if "stacks" in doc:
            # With -q standard output is the core's path alone, for
            # gdb EXE "$(snapcore -q --stacks PID)": the stacks go to stderr.
            click.echo(doc["stacks"], err=quiet)
        elif "stacks_error" in doc:
            report.say(f"snapcore: error: {doc['stacks_error']}")  # one line, never wrapped
    if as_json:
        report.print_json(docs[0] if len(docs) == 1 else
                          {"ok": all(d["ok"] for d in docs), "snapshots": docs},
                          to_stderr=request.to_stdout)
    # A snapshot whose stacks failed is kept and reported as any other; the
    # exit code (14) tells a script that what it asked for is not all there.
    stacks_failed = any("stacks_error" in d for d in docs)
    sys.exit(exit_code_of(results) or (int(ExitCode.TOOL) if stacks_failed else 0))


def check_stream(wanted: list[int], with_stacks: bool) -> None:
    """-o -: refused before anything is touched when it cannot work."""
    if sys.stdout.isatty():
        raise BadInput("refusing to write a core to a terminal (-o -)",
                       "redirect standard output to a file or a pipe", stage=Stage.USAGE)
    if len(wanted) > 1:
        raise BadInput(f"-o - takes one process ({len(wanted)} given)",
                       "snapshot them one at a time", stage=Stage.USAGE)
    if with_stacks:
        raise BadInput("--stacks needs a core file, not -o -", "give an output directory",
                       stage=Stage.USAGE)
