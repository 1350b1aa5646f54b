"""Go stacks: delve (Debian's `delve`), `dlv core EXE CORE` running
`goroutines -t` from an --init script: every goroutine, its wait reason
(chan receive, sleep, sync.Mutex.Lock...) and its frames.  Goroutines, not
threads, are what a Go engineer reads; a goroutine's id is its `id` here.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from snapcore.core.readers import exe_arg
from snapcore.core.runtimes import Runtime
from snapcore.core.stackmodel import Frame, Stacks, Thread
from snapcore.errors import Stage, ToolError

GOROUTINE = re.compile(r"^\s+Goroutine (\d+) - .*?(?: \[([^\]]*)\])?$")
FRAME = re.compile(r"^\s+\d+\s+0x[0-9a-f]+ in (\S+)")
AT = re.compile(r"^\s+at (.+):(\d+)$")


def read(runtime: Runtime, exe, core: Path, native: bool, timeout: float) -> Stacks:
    dlv = shutil.which("dlv")
    if dlv is None:
        raise ToolError("reading Go stacks needs delve (dlv), which is not installed",
                        "install it (apt-get install delve); the core is kept",
                        stage=Stage.STACKS)
    exe_name, fds = exe_arg(exe)
    with tempfile.NamedTemporaryFile("w", prefix="snapcore-dlv-", suffix=".init") as init:
        init.write("goroutines -t\nexit\n")
        init.flush()
        out = subprocess.run([dlv, "core", exe_name, str(core), "--init", init.name,
                              "--allow-non-terminal-interactive=true"],
                             stdin=subprocess.DEVNULL, capture_output=True, text=True,
                             errors="replace", timeout=timeout, pass_fds=fds)
    threads = parse(out.stdout)
    if not threads:
        why = ((out.stderr + out.stdout).strip().splitlines()
               or [f"exit status {out.returncode}"])[-1]
        raise ToolError(f"delve could not read the goroutines of {core.name}: {why}",
                        f"by hand: dlv core EXE {core}", stage=Stage.STACKS)
    return Stacks("go", "dlv", _version(dlv), runtime.version, threads, text=out.stdout)


def parse(text: str) -> list[Thread]:
    threads: list[Thread] = []
    for line in text.splitlines():
        m = GOROUTINE.match(line)
        if m:
            threads.append(Thread(int(m.group(1)), None, m.group(2) or None))
            continue
        m = FRAME.match(line)
        if m and threads:
            threads[-1].frames.append(Frame(m.group(1)))
            continue
        m = AT.match(line)
        if m and threads and threads[-1].frames:
            frame = threads[-1].frames[-1]
            frame.file, frame.line = m.group(1), int(m.group(2))
    return threads


def _version(dlv: str) -> str:
    out = subprocess.run([dlv, "version"], capture_output=True, text=True, timeout=30).stdout
    m = re.search(r"Version: (\S+)", out)
    return m.group(1) if m else ""
