"""Render snapshots and errors: rich for people, one JSON document for scripts.

rich is imported only where something is drawn with it: `snapcore --help`,
shell completion and the start of a snapshot (until the target is released)
need none of it, and it takes tens of milliseconds to load.
"""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING

from snapcore.errors import SETTING, SnapcoreError
from snapcore.units import human

if TYPE_CHECKING:
    from rich.console import Console

    from snapcore.engine.result import Snapshot


def stdout_console() -> Console:
    """Rich on stdout; piped output gets wide lines rather than wrapped tables."""
    from rich.console import Console
    return Console(soft_wrap=True, width=None if sys.stdout.isatty() else 200)


def stderr_console() -> Console:
    from rich.console import Console
    return Console(stderr=True)


def say(text: str) -> None:
    """One plain line on stderr, exactly as given (no markup, no wrapping)."""
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


def _ms(seconds: float) -> float:
    return round(seconds * 1000.0, 3)


def snapshot_dict(snap: Snapshot) -> dict:
    t = snap.target
    pattern = snap.core_pattern
    doc: dict = {
        "ok": True,
        "target": {"pid": t.pid, "name": t.name, "exe": t.exe, "uid": t.uid,
                   "program": snap.program},
        "core": ({"path": str(snap.core_path), "size": snap.core_size,
                  "allocated": snap.core_allocated,
                  "record": str(snap.sidecar_path) if snap.sidecar_path else None}
                 if snap.core_path else {"path": "-", "size": snap.core_size, "record": None}
                 if snap.streamed else None),
        "pause_ms": _ms(snap.pause["pause"]),
        "pause_split_ms": {"capture": _ms(snap.pause["capture"]),
                           "fork": _ms(snap.pause["syscall"]),
                           "release": _ms(snap.pause["release"])},
        "reap_pause_ms": _ms(snap.reap_pause),
        "dump_seconds": round(snap.dump_seconds, 3),
        "priority_steps": snap.priority_steps,
        "threads": snap.threads,
        "thread_map": snap.thread_map,
        "child_pid": snap.child_pid,
        "core_pattern": {"kind": pattern.kind, "pattern": pattern.pattern},
        "taken_at": snap.taken_at.isoformat().replace("+00:00", "Z"),
        "core_estimate": snap.core_estimate,
        "core_estimate_apparent": snap.core_apparent,
        "writer": {"name": snap.writer, "reason": snap.writer_reason},
        "streamed": snap.streamed,
        "notes": snap.notes,
        "regions_missing": snap.regions_missing,
        "checks": [dict(c, forced=c["verdict"] == "refuse") for c in snap.checks],
    }
    if pattern.kind == "pipe":
        doc["core_pattern"]["handler"] = pattern.handler
        doc["core_pattern"]["lookup"] = pipe_lookup(snap)
    return doc


def pipe_lookup(snap: Snapshot) -> str:
    handler = snap.core_pattern.handler
    if "systemd-coredump" in handler:
        return f"coredumpctl info {snap.child_pid}"
    return f"look for pid {snap.child_pid} where {handler} stores cores"


def print_json(doc: dict, to_stderr: bool = False) -> None:
    print(json.dumps(doc, indent=2), file=sys.stderr if to_stderr else sys.stdout)


def print_snapshot(snap: Snapshot, verbose: bool, console: Console) -> None:
    """The summary, a `key  value` line each.  Never a table: a path is the
    line an operator copies, so it is printed whole and unbroken whatever the
    terminal's width, and no line ends in padding when piped."""
    t = snap.target
    rows = [("target", f"{t.name} (pid {t.pid}) {t.exe}")]
    pause = f"{snap.pause_ms:.2f} ms"
    if verbose:
        p = snap.pause
        pause += (f"  (capture {_ms(p['capture']):.3f}, fork {_ms(p['syscall']):.3f}, "
                  f"release {_ms(p['release']):.3f} ms; reap {_ms(snap.reap_pause):.3f} ms)")
    steps = snap.priority_steps
    by = "snapcore" if snap.writer == "snapcore" else "the kernel"
    dumped = f"{snap.dump_seconds:.2f} s at idle priority by {by}"
    if steps:
        dumped += f", stepped up to {steps[-1]['to']} on a busy machine"
    rows += [("paused", pause), ("dumped", dumped), ("threads", str(snap.threads))]
    if verbose:
        rows += [("priority", f"at {s['at_s']:.1f} s, {s['from']} -> {s['to']}: {s['why']}"
                  + (f" ({s['error']})" if "error" in s else "")) for s in steps]
    if snap.core_path:
        size = human(snap.core_size)
        if snap.core_allocated < snap.core_size * 0.9:  # sparse: say what it takes
            size += f" ({human(snap.core_allocated)} on disk)"
        rows += [("size", size), ("core", str(snap.core_path))]
    elif snap.streamed:
        rows += [("size", human(snap.core_size)), ("core", "standard output")]
    else:
        rows.append(("core", f"handed to {snap.core_pattern.handler} by core_pattern: "
                             f"{pipe_lookup(snap)}"))
    for region in snap.regions_missing:
        what = ("absent (MADV_DONTFORK)" if region["kind"] == "dontfork"
                else "zeros (MADV_WIPEONFORK)")
        rows.append(("not in core", f"{region['start']:#x}-{region['end']:#x} "
                     f"{region['path']}: {what}".rstrip()))
    # A refusal in a snapshot that was taken is one --force overrode.
    rows += [(f"check {c['name']}", f"{shown_verdict(c)}: {c['reason']}")
             for c in snap.checks if c["verdict"] != "ok" or verbose]
    if verbose:
        rows += [("writer", f"{snap.writer}: {snap.writer_reason}"),
                 ("child", f"pid {snap.child_pid}"),
                 ("core_pattern", f"{snap.core_pattern.pattern} ({snap.core_pattern.kind})")]
        rows += [("note", note) for note in snap.notes]
        rows += [("thread", f"{th['tid']} {th['name']}") for th in snap.thread_map]
    width = max(len(key) for key, _ in rows) + 2
    for key, value in rows:
        console.print(f"[bold]{_plain(key)}[/]{' ' * (width - len(key))}{_plain(value)}",
                      soft_wrap=True, highlight=False)


VERDICT_STYLE = {"ok": "green", "warn": "yellow", "refuse": "bold red"}


def shown_verdict(check: dict) -> str:
    return "forced" if check["verdict"] == "refuse" else check["verdict"]

# The engine names the setting a hint is about; this is the flag that sets it.
FLAGS = {
    "compress": "--compress",
    "exe": "--exe",
    "output_dir": "-o DIR",
    "timeout": "--timeout",
    "min_free": "--min-free",
    "max_per_hour": "--max-per-hour",
    "max_dump_time": "--max-dump-time",
    "dump_deadline": "--dump-deadline", "compress_ratio": "--compress-ratio",
    "threads": "--threads main",
    "writer": "--writer",
    "lang": "--lang native",
}


def with_flags(hint: str, setting: str = "", override: str = "") -> str:
    """A hint as the operator acts on it: the flag of its setting (where the
    hint names it, errors.SETTING, else after it), and the --force that
    overrides the refusal, when there is one."""
    if SETTING in hint:
        hint = hint.replace(SETTING, FLAGS.get(setting, setting))
    elif setting in FLAGS:
        hint = f"{hint} ({FLAGS[setting]})" if hint else FLAGS[setting]
    if override:
        hint = f"{hint} (or override: --force {override})" if hint else \
            f"override: --force {override}"
    return hint


def error_line(err: SnapcoreError) -> str:
    """The error's line (errors.one_line) with its hint as the command line acts on it."""
    return err.one_line(with_flags(err.hint, err.setting, err.check))


def error_dict(err: SnapcoreError) -> dict:
    doc = err.as_dict()
    doc["hint"] = with_flags(err.hint, err.setting, err.check)
    return doc


def check_dict(result) -> dict:
    refusals = result.refusals()
    t = result.plan.target
    return {
        "ok": not refusals,
        "target": {"pid": t.pid, "name": t.name, "exe": t.exe, "uid": t.uid,
                   "threads": len(t.threads)},
        "would_snapshot": not refusals,
        "exit_code": int(refusals[0].exit_code) if refusals else 0,
        "core_estimate": result.plan.core_estimate,
        "core_estimate_apparent": result.plan.core_apparent,
        "writer": {"name": result.plan.writer, "reason": result.plan.writer_reason},
        "checks": [dict(c, fix=with_flags(c["fix"], c["setting"],
                                          c["name"] if c["verdict"] == "refuse"
                                          and c["forceable"] else ""))
                   for c in result.as_dicts()],
    }


def print_checks(result, console: Console) -> None:
    from rich.table import Table
    t = result.plan.target
    table = Table(title=f"snapcore check {t.pid} ({t.name})", title_justify="left")
    fixes = [with_flags(c.fix, c.setting, c.name if c.verdict == "refuse" and c.forceable
                        else "") for c in result.checks]
    columns = ("check", "verdict", "reason") + (("fix",) if any(fixes) else ())
    for column in columns:  # no empty fix column when nothing needs fixing
        table.add_column(column, overflow="fold")
    for check, fix in zip(result.checks, fixes):
        verdict = f"[{VERDICT_STYLE[check.verdict]}]{check.verdict}[/]"
        row = (check.name, verdict, _plain(check.reason), _plain(fix or "-"))
        table.add_row(*row[:len(columns)])
    console.print(table)
    refusals = result.refusals()
    if refusals:
        console.print(f"a snapshot would be refused: {_plain(refusals[0].reason)}",
                      highlight=False)
    else:
        console.print("a snapshot would go ahead", highlight=False)


def _plain(text: str) -> str:
    return text.replace("[", "\\[")


def record_dict(record) -> dict:
    """A line of `list --json`: a record (records.Record) in brief."""
    d, t = record.data, record.data.target
    return {
        "taken_at": d.taken_at, "name": t.name, "pid": t.pid,
        "exe": t.exe, "core": str(record.core) if record.core else None,
        "record": str(record.sidecar), "size": record.size,
        "threads": len(d.threads), "compressed": d.core.compressed,
        "reason": d.reason, "pause_ms": d.pause_ms,
    }


def print_info(record, console: Console) -> None:
    """A snapshot's record, a `key  value` line each, and its threads by name."""
    d, t, core = record.data, record.data.target, record.data.core
    names: dict[str, int] = {}
    for thread in d.threads:
        names[thread.name or "?"] = names.get(thread.name or "?", 0) + 1
    shown = ", ".join(f"{n} x{c}" if c > 1 else n for n, c in list(names.items())[:12])
    rows = [
        ("core", str(record.core) if record.core else f"(missing: {core.file})"),
        ("record", str(record.sidecar)),
        ("taken", d.taken_at),
        ("reason", d.reason or "-"),
        ("target", f"{t.name} (pid {t.pid}) {t.exe}"),
        ("command", " ".join(t.cmdline or [])),
        ("program", t.program or "-"),
        ("build-id", t.build_id or "-"),
        ("user", f"{t.user} (uid {t.uid})"),
        ("size", human(core.size or 0) + (" (zstd)" if core.compressed else "")),
        ("paused", f"{d.pause_ms} ms; dump took {d.dump_seconds} s"),
        ("threads", f"{len(d.threads)}: {shown}" + (", ..." if len(names) > 12 else "")),
        ("host", f"{d.hostname}, kernel {d.kernel}"),
    ] + [("note", note) for note in d.notes]
    for key, value in rows:
        console.print(f"{key:<9} {value}", markup=False, highlight=False)


def print_failure(err: SnapcoreError, as_json: bool, to_stderr: bool = False) -> None:
    """A command's failure: one JSON document (on stderr when `to_stderr`:
    standard output is the core's), else one line on stderr."""
    if as_json:
        print_json({"ok": False, "error": error_dict(err)}, to_stderr=to_stderr)
    else:
        print_error(err)


def print_error(err: SnapcoreError, console: Console | None = None) -> None:
    """One line, whole: the reason and its fix (not wrapped, so grep finds it)."""
    if console is None:
        say(f"snapcore: error: {error_line(err)}")
    else:
        console.print(f"snapcore: error: {error_line(err)}", markup=False, highlight=False,
                      soft_wrap=True)
