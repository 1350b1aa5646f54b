"""One line per snapshot, refusal or failure to syslog (journald reads
/dev/log too).

Done when stderr is not a terminal (cron, timers, runbooks), or always with
--syslog.  SNAPCORE_SYSLOG_SOCKET names another socket than /dev/log.  A
refusal (a check said no: the process was not touched) and a failure (the
snapshot went wrong after the process was held) are told apart, as an
operator reading the log in an incident must.
"""

from __future__ import annotations

import os
import socket
import sys

from snapcore.cli.render import error_line
from snapcore.errors import SnapcoreError, Stage
from snapcore.units import human

FACILITY_DAEMON = 3
ERR, WARNING, INFO = 3, 4, 6
BEFORE_TOUCHING = (Stage.USAGE, Stage.PREFLIGHT)

_warned = False  # the missing socket is said once a run, not once a target


def log_result(result, always: bool = False, reason: str = "", trigger: str = "") -> None:
    """One line per result when stderr is not a terminal, or always (--syslog);
    asked for with --syslog and impossible, it says so on stderr, once."""
    global _warned
    if not (always or not sys.stderr.isatty()):
        return
    sent = send(line_for(result) + _why(reason, trigger), severity(result))
    if always and not sent and not _warned:
        _warned = True
        sys.stderr.write("snapcore: warning: --syslog: no syslog socket at "
                         f"{_socket_path()} (is a syslog daemon or journald running?)\n")


def line_for(result) -> str:
    if isinstance(result, SnapcoreError):
        if result.stage in BEFORE_TOUCHING:
            return (f"refused snapshot of pid {result.pid}, not touched: "
                    f"{error_line(result)} (exit {int(result.exit_code)})")
        stage = getattr(result.stage, "value", result.stage) or "?"
        return (f"failed snapshot of pid {result.pid} at the {stage} stage, after it was "
                f"held: {error_line(result)} (exit {int(result.exit_code)})")
    t = result.target
    where = (f"core {result.core_path} ({human(result.core_size)})" if result.core_path
             else f"core handed to {result.core_pattern.handler}")
    return (f"snapshot of {t.name} (pid {t.pid}): {where}, paused "
            f"{result.pause_ms:.2f} ms, {result.threads} thread(s)")


def severity(result) -> int:
    if not isinstance(result, SnapcoreError):
        return INFO
    return WARNING if result.stage in BEFORE_TOUCHING else ERR


def _why(reason: str, trigger: str) -> str:
    """The operator's reason and watch's trigger, on the one line."""
    return "".join(f"; {name}: {' '.join(text.split())}"
                   for name, text in (("reason", reason), ("trigger", trigger)) if text)


def _socket_path() -> str:
    return os.environ.get("SNAPCORE_SYSLOG_SOCKET", "/dev/log")


def send(message: str, severity: int) -> bool:
    """Whether the line reached the syslog socket."""
    path = _socket_path()
    data = f"<{FACILITY_DAEMON * 8 + severity}>snapcore[{os.getpid()}]: {message}"
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(path)
            sock.send(data.encode(errors="replace")[:8192])
    except OSError:
        return False  # no syslog daemon: nothing to log to
    return True
