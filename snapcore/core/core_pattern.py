"""Where the kernel puts a core: core_pattern (Documentation/admin-guide/sysctl/kernel.rst).

- a relative file name ("core", "core.%p"): written in the dumping process's
  cwd; snapcore moves the child into a staging directory first;
- an absolute file name: written where the administrator said;
- "|program args": piped to a handler (systemd-coredump, apport), which keeps it.
"""

from __future__ import annotations

import glob
import os
import signal
import socket
from dataclasses import dataclass

from snapcore.linux.proctext import proc_open

CORE_PATTERN = "/proc/sys/kernel/core_pattern"


CORE_USES_PID = "/proc/sys/kernel/core_uses_pid"


@dataclass
class CorePattern:
    pattern: str
    uses_pid: bool

    @property
    def kind(self) -> str:
        if self.pattern.startswith("|"):
            return "pipe"
        return "absolute" if self.pattern.startswith("/") else "relative"

    @property
    def handler(self) -> str:
        return self.pattern[1:].split()[0] if self.kind == "pipe" else ""


def read_core_pattern() -> CorePattern:
    with proc_open(CORE_PATTERN) as f:  # a path: its bytes kept, as os.* keeps them
        pattern = f.read().rstrip("\n")
    try:
        with open(CORE_USES_PID) as f:
            uses_pid = f.read().strip() != "0"
    except OSError:
        uses_pid = False
    return CorePattern(pattern or "core", uses_pid)


def expand(pattern: CorePattern, *, pid: int, uid: int, gid: int, comm: str, exe: str,
           soft_limit: int, ns_pid: int | None = None) -> str:
    """core_pattern with the specifiers snapcore can know filled in, the rest as `*`.

    The result is a glob: %t (the dump's time) and %d (dump mode) are known only
    to the kernel.  %p/%i are the dumping thread's ids in its own pid namespace
    (`ns_pid`), %P/%I in the initial one (`pid`).
    """
    local = str(pid if ns_pid is None else ns_pid)
    values = {
        "%": "%", "p": local, "P": str(pid), "i": local, "I": str(pid),
        "u": str(uid), "g": str(gid), "s": str(int(signal.SIGABRT)), "h": socket.gethostname(),
        "e": glob.escape(comm), "E": glob.escape(exe.replace("/", "!")),
        "f": glob.escape(os.path.basename(exe)),
        "c": str(soft_limit if soft_limit != (1 << 64) - 1 else -1),
    }
    out, text, i = [], pattern.pattern, 0
    has_pid = False
    while i < len(text):
        if text[i] == "%" and i + 1 < len(text):
            spec = text[i + 1]
            has_pid |= spec == "p"
            out.append(values.get(spec, "*"))
            i += 2
        else:
            out.append(glob.escape(text[i]))
            i += 1
    name = "".join(out)
    if pattern.uses_pid and not has_pid:
        name += f".{local}"  # core_uses_pid appends %p when the pattern has none
    return name
