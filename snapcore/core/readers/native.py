"""Native stacks: gdb's `thread apply all bt` (core/gdb.py), its text kept as
gdb prints it and parsed into the model for --json and sampling."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from snapcore.core.gdb import backtraces
from snapcore.core.runtimes import Runtime
from snapcore.core.stackmodel import Frame, Stacks, Thread

THREAD = re.compile(r"^Thread \d+ \(.*?LWP (\d+)\)(?: \"(.*)\")?")
FRAME = re.compile(r"^#\d+\s+(?:0x[0-9a-f]+ in )?(\S+) \(.*?\)(?: at (\S+):(\d+))?"
                   r"(?: from (\S+))?$")


def read(runtime: Runtime, exe, core: Path, native: bool, timeout: float) -> Stacks:
    text = backtraces(exe, core, timeout)
    return Stacks("native", "gdb", gdb_version(), "", parse(text), text=text)


def parse(text: str) -> list[Thread]:
    threads: list[Thread] = []
    for line in text.splitlines():
        m = THREAD.match(line)
        if m:
            threads.append(Thread(int(m.group(1)), m.group(2)))
            continue
        m = FRAME.match(line)
        if m and threads:
            function, file, number, library = m.groups()
            threads[-1].frames.append(Frame(function, file or library,
                                            int(number) if number else None, True))
    return threads


def gdb_version() -> str:
    gdb = shutil.which("gdb")
    try:
        out = subprocess.run([gdb, "--version"], capture_output=True, text=True,
                             timeout=30).stdout if gdb else ""
    except (OSError, subprocess.TimeoutExpired):
        out = ""
    m = re.search(r"(\d+\.\d+(?:\.\d+)?)", out.splitlines()[0] if out else "")
    return m.group(1) if m else ""
