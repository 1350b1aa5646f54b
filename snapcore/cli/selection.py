"""Targets the way operators name them: pids, a name pattern, a pidfile, a unit."""

from __future__ import annotations

import os
import re
import subprocess

import psutil

from snapcore.errors import BadInput, NoSuchProcess, Stage
from snapcore.linux.proctext import readable


def by_name(pattern: str, take_all: bool) -> list[int]:
    """Processes whose name or command line matches the regular expression
    `pattern` (like pgrep), snapcore and its ancestors aside.  Several matches
    are refused, listing them, unless `take_all`."""
    try:
        regex = re.compile(pattern)
    except re.error as exc:
        raise BadInput(f"--name {pattern!r} is not a regular expression: {exc}",
                       "quote it, e.g. --name 'nginx: master'", stage=Stage.USAGE) from None
    me = psutil.Process()
    mine = {me.pid} | {p.pid for p in me.parents()}
    found = []
    for proc in psutil.process_iter(["pid", "name", "cmdline"]):
        info = proc.info
        if info["pid"] in mine or not info["cmdline"]:  # kernel threads have no cmdline
            continue
        if regex.search(info["name"] or "") or regex.search(" ".join(info["cmdline"])):
            found.append(info)
    if not found:
        raise NoSuchProcess(f"no process matches --name {pattern!r}",
                            "check with pgrep -a PATTERN", stage=Stage.USAGE)
    if len(found) > 1 and not take_all:
        listed = "; ".join(f"{p['pid']} {readable(' '.join(p['cmdline']))[:60]}"
                           for p in found[:10])
        raise BadInput(f"--name {pattern!r} matches {len(found)} processes: {listed}",
                       "make the pattern more specific, or add --all", stage=Stage.USAGE)
    return sorted(p["pid"] for p in found)


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
