"""What a process was exec'd as, whatever title it gives itself since.

A program may rewrite its argv area to show a title (PostgreSQL, redis,
nginx: setproctitle), and a child forked without exec (a PostgreSQL
backend, an nginx worker) runs the image its parent exec'd.  So the command
line of a process is read from the process that made the exec it runs (its
"exec leader": parents are followed while they share the exec), and only
when that area is still as the kernel laid it out.  docs/kernel-notes.md,
"The command line a process was exec'd with", gives the kernel's facts.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass

from snapcore.linux.procstat import read_stat

AT_RANDOM = 25  # 16 random bytes the kernel writes on the new stack at each exec
WORD = 8
MAX_WALK = 64  # parents followed at most: a fork chain is short


@dataclass
class ExecImage:
    pid: int  # the process that made the exec (the exec leader)
    argv: list[bytes] | None  # the command line at exec; None: rewritten since
    title: bytes  # what /proc/PID/cmdline shows now


def _auxv(pid: int) -> dict[int, int]:
    with open(f"/proc/{pid}/auxv", "rb") as f:
        data = f.read()
    words = struct.unpack(f"<{len(data) // WORD}Q", data[:len(data) // WORD * WORD])
    return dict(zip(words[::2], words[1::2]))


def _peek(pid: int, address: int, size: int) -> bytes:
    """Bytes of the process's memory (no stop, no signal: /proc/PID/mem)."""
    fd = os.open(f"/proc/{pid}/mem", os.O_RDONLY | os.O_CLOEXEC)
    try:
        data = os.pread(fd, size, address)
    finally:
        os.close(fd)
    if len(data) != size:
        raise OSError(f"short read of process {pid}'s memory")
    return data


def exec_token(pid: int) -> bytes | None:
    """The 16 bytes at AT_RANDOM: new at every exec, copied by fork.  Two
    processes with the same token run one exec's image.  None when unreadable."""
    try:
        at = _auxv(pid).get(AT_RANDOM)
        return _peek(pid, at, 16) if at else None
    except (OSError, ValueError, struct.error):
        return None


def _argv_at_exec(pid: int, title: bytes) -> list[bytes] | None:
    """The arguments, when the argv area still holds what exec put there:
    exactly argc strings, each ended by its NUL.  argc is the word at the
    stack's start (stat field 28), which the kernel writes and no program
    has reason to change."""
    try:
        argc = struct.unpack("<Q", _peek(pid, read_stat(pid).startstack, WORD))[0]
    except (OSError, ValueError, IndexError, struct.error):
        return None
    if not title.endswith(b"\0"):
        return None  # the kernel's own sign of a title past the area (setproctitle)
    args = title[:-1].split(b"\0")
    return args if len(args) == argc else None


def leader(pid: int) -> ExecImage:
    """The process whose exec `pid` runs, with its command line then (argv)
    or, rewritten since, its title."""
    token = exec_token(pid)
    for _ in range(MAX_WALK):
        try:
            parent = read_stat(pid).ppid
        except (OSError, ValueError, IndexError):
            break
        if token is None or parent <= 1 or exec_token(parent) != token:
            break
        pid = parent
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            title = f.read()
    except OSError:
        title = b""
    return ExecImage(pid, _argv_at_exec(pid, title), title)
