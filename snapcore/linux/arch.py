"""The running machine's architecture table (one module per architecture).

On a machine with no table nothing more is imported and SUPPORTED is False:
importing this never fails, so the commands that only read files (list,
info, prune, debug) work anywhere, and engine/machine.py refuses the ones
that would touch a process before anything is touched.  The names below
MACHINE, MACHINES and SUPPORTED exist only on a supported machine.
"""

import platform

MACHINE = platform.machine()  # as `uname -m` names it
MACHINES = ("x86_64", "aarch64")  # the machines with a table
SUPPORTED = MACHINE in MACHINES

if MACHINE == "x86_64":
    from snapcore.linux.arch_x86_64 import *  # noqa: F401,F403
elif MACHINE == "aarch64":
    from snapcore.linux.arch_aarch64 import *  # noqa: F401,F403
