"""The options commands share, turned into what the engine takes: a pid and
one Request (engine/request.py) carrying every option.
"""

from __future__ import annotations

import functools
import re
import sys

import click

from snapcore import bounds, units
from snapcore.cli import complete
from snapcore.cli.exitcodes import (DEBUG_EXIT_CODES_HELP, EXIT_CODES_HELP,  # noqa: F401
                                    INFO_EXIT_CODES_HELP)
from snapcore.cli.paths import OUTPUT_DIR
from snapcore.core.placement import default_output_dir
from snapcore.core.runtimes import LANGS
from snapcore.engine import verdicts
from snapcore.engine.request import THREAD_MODES, WRITERS, Request
from snapcore.errors import BadInput, Stage

PID_MAX_LIMIT = 1 << 22  # PID_MAX_LIMIT on 64-bit kernels


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




class Bounded(click.ParamType):
    """A finite number in its setting's range (snapcore/bounds.py), parsed
    as `kind` says: "number", "size" (512M), "duration" (7d: a unit is
    needed) or "min_free" (a size or a percentage, kept as written for the
    engine).  nan, an infinity, a negative or a huge number is refused here,
    in one line naming the option, the value and the range, before anything
    is touched."""

    EXAMPLES = {"size": " (e.g. 512M or 2G)", "duration": " (e.g. 90s, 30m, 12h, 7d, 2w)"}

    def __init__(self, setting: str, kind: str = "number"):
        self.setting, self.kind = setting, kind
        self.name = ("integer" if bounds.integer(setting) else "number") \
            if kind == "number" else kind

    def convert(self, value, param, ctx):
        if not isinstance(value, str):  # a default, already a number
            return value
        text = value.strip()
        if self.kind == "duration" and text.replace(".", "", 1).isdigit():
            self.fail(f"{value}: a duration needs a unit: say {text}d, {text}h, {text}m or "
                      f"{text}s", param, ctx)  # 7 seconds or 7 days?
        try:
            if self.kind == "min_free":
                return bounds.min_free(value)
            return bounds.check(self.setting, self._parse(text))
        except (ValueError, BadInput):
            self.fail(f"{value} is not {self.valid()}", param, ctx)

    def _parse(self, text: str):
        if self.kind == "size":
            return units.parse_size(text)
        if self.kind == "duration":
            return units.parse_duration(text)
        return int(text) if bounds.integer(self.setting) else float(text)

    def valid(self) -> str:
        if self.kind == "min_free":
            return (f"a size from {bounds.span('min_free')} (2G) or a percentage of the "
                    f"filesystem from {bounds.span('min_free_percent')} (10%)")
        return bounds.describe(self.setting) + self.EXAMPLES.get(self.kind, "")


def common_options(command):
    """Options that `snap` and `check` share (they judge the same things)."""
    for option in reversed([
        click.option("-o", "--output-dir", type=OUTPUT_DIR,
                     help="Where the core goes (created 0700). Default: $SNAPCORE_DIR, "
                          "else /var/lib/snapcore for root, else "
                          "$XDG_STATE_HOME/snapcore. `-o -` (snap only): the core (or "
                          ".zst with --compress) to standard output, never a terminal; "
                          "the report goes to stderr."),
        click.option("--writer", type=click.Choice(WRITERS), default="auto",
                     show_default=True,
                     help="Who writes the core. kernel: the child takes SIGABRT and the "
                          "kernel writes it where core_pattern says (a pipe hands it to "
                          "the crash handler, e.g. coredumpctl). snapcore: snapcore reads "
                          "the stopped child and writes the core itself, at idle priority. "
                          "auto: the kernel where core_pattern writes a file and "
                          "RLIMIT_CORE lets it, snapcore everywhere else."),
        click.option("--json", "as_json", is_flag=True,
                     help="Print one JSON document (errors too) instead of text."),
        click.option("--timeout", type=Bounded("timeout"), default=2.0,
                     show_default=True, metavar="SECONDS",
                     help="How long to wait for the target to stop (a thread in "
                          "uninterruptible sleep may never); the target is left "
                          f"untouched. {bounds.span('timeout')}: the threads that did "
                          "stop wait, stopped, for the others meanwhile."),
        click.option("--min-free", type=Bounded("min_free", "min_free"), default="10%",
                     show_default=True, metavar="SIZE|PCT",
                     help="Free space to leave on the output filesystem after the core "
                          f"(e.g. 2G or 10%; a size {bounds.span('min_free')}, a "
                          f"percentage {bounds.span('min_free_percent')})."),
        click.option("--max-per-hour", type=Bounded("max_per_hour"), default=4,
                     show_default=True, metavar="N",
                     help="At most N snapshots of the same program per hour (0: no "
                          "limit); one at a time per program. "
                          f"{bounds.span('max_per_hour')}."),
    ]):
        command = option(command)
    return command


def make_request(output_dir, timeout, min_free, max_per_hour, writer: str = "auto",
                 stdout_ok: bool = False, **asked) -> Request:
    """The engine's Request from the options every command shares and, for
    the commands that take snapshots, `asked`: snap_options' values."""
    from snapcore.engine import machine  # every command that touches a process comes here
    machine.require()  # first: a machine with no architecture table is refused (exit 6)
    check_force(asked.get("force", ()))
    to_stdout = output_dir is not None and str(output_dir) == "-"
    if to_stdout and not stdout_ok:
        raise BadInput("-o - (standard output) is for snap only",
                       "give an output directory", stage=Stage.USAGE)
    if to_stdout and writer == "kernel":
        raise BadInput("--writer kernel cannot write to standard output (-o -)",
                       "the kernel writes cores only into files or a core_pattern pipe",
                       stage=Stage.USAGE)
    return Request(output_dir=default_output_dir() if to_stdout or not output_dir
                   else output_dir, min_free=min_free, max_per_hour=max_per_hour,
                   timeout=timeout, writer=writer,
                   stream=sys.stdout.fileno() if to_stdout else None, **asked)


def check_force(names: tuple[str, ...]) -> None:
    for name in names:
        if name not in verdicts.CHECKS:
            raise BadInput(f"--force {name}: no such check",
                           f"checks: {', '.join(verdicts.CHECKS)}", stage=Stage.USAGE)
        if name not in verdicts.FORCEABLE:
            raise BadInput(f"--force {name}: this check cannot be overridden",
                           f"only these can: {', '.join(verdicts.FORCEABLE)}",
                           stage=Stage.USAGE)


def pid_argument(many: bool = False):
    """PID (or PID... for snap), completed with the running processes."""
    if many:
        return click.argument("pids", metavar="[PID]...", nargs=-1,
                              shell_complete=complete.pids)
    return click.argument("pid", metavar="[PID]", required=False, shell_complete=complete.pids)


class NamePattern(str):
    """--name's pattern, and whether -f/--full was given with it: carried
    together so that every command that takes --name (watch --wait too)
    matches the same way."""

    full = False

    @classmethod
    def of(cls, pattern: str | None, full: bool) -> str | None:
        if pattern is None:
            return None
        named = cls(pattern)
        named.full = full
        return named


def target_options(command):
    """Ways to name the processes to snapshot, besides pids.  The command gets
    --name with -f folded in (NamePattern)."""
    inner = command

    @functools.wraps(inner)
    def with_pattern(*args, full: bool, name_pattern, **kwargs):
        if full and name_pattern is None:
            raise click.UsageError("-f/--full goes with --name: give --name PATTERN")
        return inner(*args, name_pattern=NamePattern.of(name_pattern, full), **kwargs)

    command = with_pattern
    for option in reversed([
        click.option("--name", "name_pattern", metavar="PATTERN",
                     shell_complete=complete.process_names,
                     help="Processes whose name matches this regular expression, like "
                          "pgrep: the name (comm) or the title a server sets (argv[0], "
                          "e.g. 'postgres: checkpointer'); several matches are refused "
                          "unless --all. snapcore and its ancestors never match."),
        click.option("-f", "--full", is_flag=True,
                     help="With --name: match the whole command line, like pgrep -f."),
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
    if name_pattern or pidfile or unit:
        from snapcore.cli import selection as targets  # psutil: not for a plain PID
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


def one_target(pid, name_pattern, take_all, pidfile, unit) -> int:
    """The one process a command that takes one (check, stacks, watch) is
    about, named any way `snap` accepts."""
    found = resolve_targets([pid] if pid else [], name_pattern, take_all, pidfile, unit)
    if len(found) > 1:
        raise BadInput(f"{len(found)} processes given ({', '.join(map(str, found))})",
                       "this command takes one: give one PID or a narrower --name",
                       stage=Stage.USAGE)
    return found[0]


SNAP_OPTIONS = ("threads", "dump_deadline", "max_dump_time", "force", "reason", "compress",
                "compress_ratio")


def snap_options(command):
    """The options of taking a snapshot, each named as the Request field it
    sets; the command gets them together as `asked` (for make_request)."""
    inner = command

    @functools.wraps(inner)
    def with_request(*args, **kwargs):
        asked = {name: kwargs.pop(name) for name in SNAP_OPTIONS}
        asked["force"] = tuple(asked["force"])
        return inner(*args, asked=asked, **kwargs)

    command = with_request
    for option in reversed([
        click.option("--threads", type=click.Choice(THREAD_MODES), default="all",
                     show_default=True,
                     help="all: every thread is held for the fork and appears in the core "
                          "with its registers (the pause grows by some tens of "
                          "microseconds per thread). main: only the main thread is held "
                          "and dumped (the shortest pause; other threads show without "
                          "registers)."),
        click.option("--dump-deadline", type=Bounded("dump_deadline"), default=30.0,
                     show_default=True, metavar="SECONDS",
                     help="Have the core by then: the dump runs at idle priority, and "
                          "when it would end later on a busy machine (the target pays "
                          "for copy-on-write meanwhile) it is stepped up, never above "
                          "the target's own priority. 0: always idle. "
                          f"{bounds.span('dump_deadline')}."),
        click.option("--max-dump-time", type=Bounded("max_dump_time"), default=0.0,
                     show_default=True, metavar="SECONDS",
                     help="Kill the dump and fail if it lasts longer than this. 0: no "
                          f"limit. {bounds.span('max_dump_time')}."),
        click.option("--force", "force", multiple=True, metavar="CHECK",
                     shell_complete=complete.check_names,
                     help="Go ahead although this check refuses (repeatable; see "
                          "`snapcore check`). Only " + ", ".join(verdicts.FORCEABLE)
                          + " can be forced."),
        click.option("--reason", default="", metavar="TEXT",
                     help="Why the snapshot is taken (an incident id), kept in its record."),
        click.option("--compress", "compress", is_flag=True,
                     help="Store the core as CORE.zst (zstandard, at idle priority). "
                          "snapcore's writer compresses while writing: the raw core is "
                          "never on disk."),
        click.option("--compress-ratio", type=Bounded("compress_ratio"), default=1.0,
                     show_default=True, metavar="N",
                     help="With --compress and snapcore's writer, let the disk check "
                          "assume the core shrinks N times (1: room for the whole core). "
                          f"{bounds.span('compress_ratio')}."),
    ]):
        command = option(command)
    return command


lang_option = click.option(
    "--lang", type=click.Choice(LANGS), default="auto", show_default=True,
    help="Whose stacks: auto recognises the runtime (libpython: pystack; libjvm.so: that "
         "JDK's jhsdb; a Go binary: delve); native is gdb's backtraces.")
native_option = click.option("--native", is_flag=True, help="With a runtime's stacks, the "
                             "native (C) frames too, where the reader can.")
