"""Whether snapcore can touch a process on this machine at all.

linux/arch.py holds one table per architecture and says whether this
machine has one (arch.SUPPORTED).  Without one, every command that would
touch a process is refused here, before the target is even looked at (the
Request is made: cli/options.make_request), with exit code 6 as any target
snapcore will not touch; those that read files only need no table.
"""

from __future__ import annotations

from snapcore.errors import Stage, Unsupported
from snapcore.linux import arch


def require() -> None:
    """Raise Unsupported on a machine with no architecture table."""
    if not arch.SUPPORTED:
        raise Unsupported(f"this machine is {arch.MACHINE or 'unknown'}, and snapcore "
                          f"supports {' and '.join(arch.MACHINES)} only",
                          "nothing was touched; gcore (gdb) takes a core here, with the "
                          "process stopped while it writes", stage=Stage.PREFLIGHT)
