"""Every thread's backtrace from a core, read by gdb."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from snapcore.core.compress import decompress_to
from snapcore.errors import Stage, ToolError


def backtraces(exe: str | int, core: Path, timeout: float = 300) -> str:
    """gdb's `thread apply all bt` for CORE of EXE (a .zst core is unpacked first).
    EXE may be a descriptor on the executable (Snapshot.exe_fd): gdb is handed
    it and reads it as /proc/self/fd/N, whatever file its name names here."""
    gdb = shutil.which("gdb")
    if gdb is None:
        raise ToolError("reading stacks needs gdb, which is not installed",
                          "install it (apt-get install gdb); the core is kept",
                          stage=Stage.STACKS)
    with tempfile.TemporaryDirectory(prefix="snapcore-stacks-") as tmp:
        if core.name.endswith(".zst"):
            plain = Path(tmp) / core.name[:-4]
            decompress_to(core, plain)
            core = plain
        fds = (exe,) if isinstance(exe, int) else ()
        # gdb asks before using debuginfod, and in batch mode "ask" is no:
        # an operator who set DEBUGINFOD_URLS meant it used.
        fetch = (["-ex", "set debuginfod enabled on"]
                 if os.environ.get("DEBUGINFOD_URLS", "").strip() else [])
        out = subprocess.run([gdb, "-batch", "-nx", "-ex", "set pagination off", *fetch,
                              "-ex", "thread apply all bt",
                              f"/proc/self/fd/{exe}" if fds else str(exe), str(core)],
                             capture_output=True, text=True, errors="replace",
                             timeout=timeout, pass_fds=fds)  # a name need not be UTF-8
    lines = [line for line in out.stdout.splitlines()
             if not line.startswith(("[New LWP", "warning: Section", "[Thread debugging",
                                     "Using host libthread_db"))]
    if out.returncode != 0 or not any(line.startswith("Thread ") or line.startswith("#")
                                      for line in lines):
        why = (out.stderr.strip().splitlines() or [f"exit status {out.returncode}"])[-1]
        raise ToolError(f"gdb could not read the stacks of {core.name}: {why}",
                        "open the core by hand: gdb EXE CORE", stage=Stage.STACKS)
    return "\n".join(lines).strip()
