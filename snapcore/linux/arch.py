"""The running machine's architecture table (one module per architecture)."""

import platform

if platform.machine() != "x86_64":
    raise ImportError(f"snapcore supports x86_64 only, not {platform.machine()}")

from snapcore.linux.arch_x86_64 import *  # noqa: E402,F401,F403
