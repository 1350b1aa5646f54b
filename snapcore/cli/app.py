"""The snapcore command: parse, call the engine, render, map errors to exit codes.

Only click is loaded to parse: the engine, rich and psutil are imported by
the command that needs them, so `--help`, `--version` and each TAB of shell
completion stay quick, and a snapshot reaches its target sooner.
"""

from __future__ import annotations

import os
import re
import signal
import sys

import click

from snapcore import __version__
from snapcore.cli import render as report
from snapcore.cli.options import EXIT_CODES_HELP
from snapcore.engine import interrupts
from snapcore.errors import BadInput, ExitCode, InternalError, Interrupted, SnapcoreError, Stage

NEGATIVE_NUMBER = re.compile(r"-[0-9]+")


class DefaultToSnap(click.Group):
    """`snapcore PID` means `snapcore snap PID`."""

    def parse_args(self, ctx, args):
        if args and args[0] not in self.commands and args[0] not in ("-h", "--help",
                                                                       "--version"):
            args = ["snap", *args]
        # click would take `-5` for an unknown option; pass it on as the PID
        # so that `snap` says what is wrong with it.  Other commands take no
        # pids: there a negative number is an option's value (`--keep -1`),
        # as it is in snap after an option that takes one (`--timeout -1`).
        if args and args[0] == "snap" and "--" not in args and "snap" in self.commands:
            takes_value = {name for p in self.commands["snap"].params
                           if isinstance(p, click.Option) and not p.is_flag
                           for name in p.opts}
            negatives = [i for i, a in enumerate(args) if NEGATIVE_NUMBER.fullmatch(a)
                         and args[i - 1] not in takes_value]
            if negatives:
                args = [a for i, a in enumerate(args) if i not in negatives] + \
                    ["--", *(args[i] for i in negatives)]
        return super().parse_args(ctx, args)

    def shell_complete(self, ctx, incomplete):
        """`snapcore <TAB>` offers the commands and, as `snapcore PID` is a
        snapshot, the running processes."""
        from snapcore.cli import complete
        items = super().shell_complete(ctx, incomplete)
        if incomplete == "" or incomplete.isdigit():
            items += complete.pids(ctx, None, incomplete)
        return items

    def format_usage(self, ctx, formatter):
        formatter.write_usage("snapcore", "[OPTIONS] PID... | COMMAND [ARGS]...")

    def format_options(self, ctx, formatter):
        """The group's options, snap's (they are what `snapcore PID` takes), then
        every command with its whole first line."""
        super().format_options(ctx, formatter)
        snap = self.commands.get("snap")
        if snap is not None:
            rows = [p.get_help_record(ctx) for p in snap.get_params(ctx)
                    if isinstance(p, click.Option)]
            with formatter.section("Snapshot options (snapcore PID, snapcore snap PID)"):
                formatter.write_dl([r for r in rows if r and not r[0].startswith("-h")])

    def format_commands(self, ctx, formatter):
        rows = [(name, self.commands[name].get_short_help_str(limit=200))
                for name in self.list_commands(ctx)]
        with formatter.section("Commands (snapcore COMMAND --help for each)"):
            formatter.write_dl(rows)


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


@cli.command(name="help")
@click.argument("command", required=False)
@click.pass_context
def help_(ctx, command):
    """Show this help, or COMMAND's (snapcore help COMMAND), like git help."""
    group = ctx.parent
    if command is None:
        click.echo(cli.get_help(group))
        return
    found = cli.get_command(group, command)
    if found is None:
        raise click.UsageError(f"no command {command!r}; commands: "
                               + ", ".join(cli.list_commands(group)))
    click.echo(found.get_help(click.Context(found, info_name=command, parent=group)))


def fail(exc: SnapcoreError, as_json: bool, to_stderr: bool = False):
    """One line on stderr, or one JSON document (on stderr too when standard
    output is the core's: -o -); exit with the error's code."""
    report.print_failure(exc, as_json, to_stderr)
    sys.exit(int(exc.exit_code))


def _stop_requested(signum, frame):
    # SIGINT, SIGTERM and SIGHUP end snapcore through the engine's cleanup:
    # while the target is stopped they are blocked; while snapcore puts things
    # back after a failure or a first interruption, they wait for it.
    if interrupts.in_cleanup():
        # A first request that lands in the normal end (the fork thread
        # reaping the child) is simply acted on after it, as anywhere else;
        # a request after the first one is told what it waits for.
        again = interrupts.pending() or _stopping[0]
        interrupts.remember()
        _stopping[0] = True
        if again:
            report.say("snapcore: still putting the target back and removing the child; "
                       "waiting for that first")
        return
    if _stopping[0] and not interrupts.engaged():
        return  # the first request is being acted on: snapcore is saying so and ending
    _stopping[0] = True
    raise KeyboardInterrupt


_stopping = [False]  # a stop request was raised once already


def _swallowed(info):
    """sys.unraisablehook: a stop request raised where Python could not raise
    it (a weakref callback inside an import, a __del__) would only print
    "Exception ignored in ..." and be lost.  Outside the engine nothing was
    touched: end here; inside, the engine acts on it at its next safe point."""
    if not (info.exc_type and issubclass(info.exc_type, KeyboardInterrupt)):
        sys.__unraisablehook__(info)
        return
    if interrupts.engaged():
        interrupts.request()
        return
    error = Interrupted("interrupted", "the target was not touched", stage=Stage.INTERRUPT)
    report.print_failure(error, _as_json[0])
    sys.stdout.flush()  # os._exit flushes nothing
    os._exit(int(error.exit_code))


_as_json = [False]  # for _swallowed: how the command reports


def _streams_core(args: list[str]) -> bool:
    """-o - (standard output is the core's): errors go to stderr, JSON too."""
    pairs = zip(args, args[1:] + [""])
    return any(a in ("-o", "--output-dir") and b == "-" for a, b in pairs) or \
        any(a in ("-o-", "--output-dir=-") for a in args)


def main(argv=None):
    sys.unraisablehook = _swallowed
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _stop_requested)
    # Before any thread exists (a progress bar, compression): the engine's
    # waits take the kernel's SIGCHLD for each tracee stop with sigtimedwait,
    # and a thread with SIGCHLD unblocked would take it instead.
    signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGCHLD])
    args = sys.argv[1:] if argv is None else list(argv)
    if os.environ.get("_SNAPCORE_COMPLETE"):  # shell completion: click answers and exits
        cli.main(args=args, prog_name="snapcore", complete_var="_SNAPCORE_COMPLETE")
    if not args:
        click.echo(cli.get_help(click.Context(cli, info_name="snapcore")), err=True)
        sys.exit(ExitCode.USAGE)
    as_json = _as_json[0] = "--json" in args
    try:
        # Not cli.main(): it would answer a Ctrl-C with an empty line first.
        with cli.make_context("snapcore", args) as ctx:
            cli.invoke(ctx)
    except click.UsageError as exc:
        fail(BadInput(exc.format_message().rstrip("."), "see snapcore --help",
                      stage=Stage.USAGE), as_json, to_stderr=_streams_core(args))
    except (KeyboardInterrupt, click.exceptions.Abort):  # outside the engine: untouched
        fail(Interrupted("interrupted", "the target was not touched",
                         stage=Stage.INTERRUPT), as_json)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except Exception as exc:  # a bug: one line for the operator, the traceback on request
        if os.environ.get("SNAPCORE_DEBUG"):
            raise
        fail(InternalError(f"internal error: {type(exc).__name__}: {exc}",
                            "the target was released; rerun with SNAPCORE_DEBUG=1 and "
                            "report the traceback", stage=Stage.INTERNAL), as_json)
    sys.exit(0)


