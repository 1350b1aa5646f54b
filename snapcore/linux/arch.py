"""The running machine's architecture table (one module per architecture)."""

import platform

MACHINE = platform.machine()  # as `uname -m` names it
MACHINES = ("x86_64", "aarch64")  # the machines with a table

if MACHINE == "x86_64":
    from snapcore.linux.arch_x86_64 import *  # noqa: F401,F403
elif MACHINE == "aarch64":
    from snapcore.linux.arch_aarch64 import *  # noqa: F401,F403
else:
    raise ImportError(f"snapcore supports {' and '.join(MACHINES)} only, not {MACHINE}")
