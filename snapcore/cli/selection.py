"""Targets the way operators name them: pids, a name pattern, a pidfile, a unit."""

from __future__ import annotations

import os
import re
import subprocess

import psutil

from snapcore.errors import BadInput, NoSuchProcess, Stage
from snapcore.linux.proctext import proc_text, readable


def _names(pid: int) -> tuple[str, str, str] | None:
    """(comm, title, command line) of a process; None for a kernel thread
    (no command line) or one gone meanwhile.  The title is argv[0] as the
    process left it: a server that sets its title (nginx, PostgreSQL, redis)
    writes the whole title there, so `ps -o args` shows it; an interpreter
    running a script has its own name there, never the script's words."""
    try:
        comm = proc_text(f"/proc/{pid}/comm").rstrip("\n")
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            raw = f.read()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    if not raw:
        return None
    args = [a.decode("utf-8", "surrogateescape") for a in raw.rstrip(b"\0").split(b"\0")]
    return comm, args[0].strip(), " ".join(args).strip()


def by_name(pattern: str, take_all: bool, full: bool | None = None) -> list[int]:
    """Processes matching the regular expression `pattern`, snapcore and its
    ancestors (its shell, sudo, cron) aside.  Like pgrep, the process's name
    by default; unlike pgrep, which matches only the comm, also its title
    (argv[0], see _names), so that `--name 'postgres: checkpointer'` works;
    with `full` (pgrep -f) the whole command line.  Several matches are
    refused, listing them, unless `take_all`."""
    full = getattr(pattern, "full", False) if full is None else full
    try:
        regex = re.compile(pattern)
    except re.error as exc:
        raise BadInput(f"--name {pattern!r} is not a regular expression: {exc}",
                       "quote it, e.g. --name 'nginx: master'", stage=Stage.USAGE) from None
    me = psutil.Process()
    mine = {me.pid} | {p.pid for p in me.parents()}
    found = []
    for pid in psutil.pids():
        names = None if pid in mine else _names(pid)
        if names is None:
            continue
        comm, title, cmdline = names
        if regex.search(cmdline) if full else (regex.search(comm) or regex.search(title)):
            found.append((pid, cmdline))
    if not found:
        raise NoSuchProcess(f"no process matches --name {pattern!r}"
                            + ("" if full else " (by name; -f matches the whole command line)"),
                            f"check with pgrep -a{'f' if full else ''} PATTERN",
                            stage=Stage.USAGE)
    if len(found) > 1 and not take_all:
        listed = "; ".join(f"{pid} {readable(line)[:60]}" for pid, line in found[:10])
        raise BadInput(f"--name {pattern!r} matches {len(found)} processes: {listed}",
                       "make the pattern more specific, or add --all", stage=Stage.USAGE)
    return sorted(pid for pid, _ in found)


def by_pidfile(path: str) -> int:
    try:
        with open(path) as f:
            text = f.read().strip()
    except OSError as exc:
        raise BadInput(f"cannot read pidfile {path}: {exc.strerror}",
                       "check the path", stage=Stage.USAGE) from None
    if not text.isdigit() or int(text) <= 0:
        raise BadInput(f"pidfile {path} holds {text[:20]!r}, not a pid",
                       "check what wrote it", stage=Stage.USAGE)
    pid = int(text)
    if not os.path.exists(f"/proc/{pid}"):
        raise NoSuchProcess(f"pidfile {path} names pid {pid}, which is not running",
                            "the pidfile is stale: is the service down?", pid=pid,
                            stage=Stage.USAGE)
    return pid


def by_unit(unit: str) -> int:
    """A systemd service's main process (systemctl show -p MainPID)."""
    try:
        out = subprocess.run(["systemctl", "show", "--property=MainPID", "--value", unit],
                             capture_output=True, text=True, timeout=10)
    except FileNotFoundError:
        raise BadInput("--unit needs systemctl, which is not installed",
                       "give the pid instead", stage=Stage.USAGE) from None
    text = out.stdout.strip()
    if "not been booted with systemd" in out.stderr or "Failed to connect to bus" in out.stderr:
        raise BadInput("--unit needs systemd, and this host does not run it",
                       "give the pid, --name or --pidfile instead", stage=Stage.USAGE)
    if out.returncode != 0 or not text.isdigit():
        why = ([line for line in out.stderr.splitlines() if line.strip()] or ["no MainPID"])[-1]
        raise BadInput(f"systemctl knows no unit {unit!r} ({why.strip()})",
                       "check systemctl status UNIT", stage=Stage.USAGE)
    if text == "0":
        raise NoSuchProcess(f"unit {unit} has no running main process",
                            f"start it, or check systemctl status {unit}", stage=Stage.USAGE)
    return int(text)
