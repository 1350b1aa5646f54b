"""Shell completion: running processes for PID and --name, check names for
--force.  Read straight from /proc: each TAB runs snapcore afresh, so it loads
nothing it does not need (see app.py)."""

from __future__ import annotations

import os

from click.shell_completion import CompletionItem


def _processes():
    """(pid, name, command line) of each user-space process."""
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().rstrip(b"\0").replace(b"\0", b" ").decode(errors="replace")
            with open(f"/proc/{entry}/comm", errors="replace") as f:  # any bytes
                name = f.read().strip()
        except OSError:
            continue  # gone meanwhile, or not ours to read
        if argv:  # kernel threads have no command line: nothing to snapshot
            yield int(entry), name, argv


def pids(ctx, param, incomplete: str) -> list[CompletionItem]:
    return [CompletionItem(str(pid), help=argv[:60])
            for pid, _name, argv in sorted(_processes()) if str(pid).startswith(incomplete)]


def process_names(ctx, param, incomplete: str) -> list[CompletionItem]:
    names = sorted({name for _pid, name, _argv in _processes() if name.startswith(incomplete)})
    return [CompletionItem(name) for name in names]


def check_names(ctx, param, incomplete: str) -> list[CompletionItem]:
    from snapcore.engine.verdicts import FORCEABLE
    return [CompletionItem(name) for name in FORCEABLE if name.startswith(incomplete)]
