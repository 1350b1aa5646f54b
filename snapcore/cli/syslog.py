"""One line per snapshot or refusal to syslog (journald reads /dev/log too).

Done when stderr is not a terminal (cron, timers, runbooks), or always with
--syslog.  SNAPCORE_SYSLOG_SOCKET names another socket than /dev/log.
"""

from __future__ import annotations

import os
import socket
import sys

from snapcore.cli.render import error_line
from snapcore.errors import SnapcoreError
from snapcore.units import human

FACILITY_DAEMON = 3
INFO, WARNING = 6, 4


def log_result(result, always: bool = False) -> None:
    """One line per result when stderr is not a terminal, or always (--syslog);
    asked for with --syslog and impossible, it says so on stderr."""
    if not (always or not sys.stderr.isatty()):
        return
    sent = _log(result)
    if always and not sent:
        sys.stderr.write("snapcore: warning: --syslog: no syslog socket at "
                         f"{_socket_path()} (is a syslog daemon or journald running?)\n")


def _log(result) -> bool:
    if isinstance(result, SnapcoreError):
        line = (f"refused snapshot of pid {result.pid}: {error_line(result)} "
                f"(exit {int(result.exit_code)})")
        return send(line, WARNING)
    t = result.target
    where = (f"core {result.core_path} ({human(result.core_size)})" if result.core_path
             else f"core handed to {result.core_pattern.handler}")
    line = (f"snapshot of {t.name} (pid {t.pid}): {where}, paused "
            f"{result.pause_ms:.2f} ms, {result.threads} thread(s)")
    return send(line, INFO)


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
