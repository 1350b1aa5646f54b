"""JVM stacks: the Serviceability Agent of the JDK the target runs,
`jhsdb jstack --core CORE --exe JAVA`.  The SA reads HotSpot's own structures
and must match the VM build exactly, so the jhsdb is the one beside the
core's libjvm.so (core/runtimes.py), never the first on PATH.  Each Java
thread's name, its java.lang.Thread.State and its Java frames (method and
line); --native is not read (jhsdb's --mixed format is another one).
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

from snapcore.core.readers import exe_arg
from snapcore.core.runtimes import Runtime, java_home
from snapcore.core.stackmodel import Frame, Stacks, Thread
from snapcore.errors import Stage, ToolError

HEADER = re.compile(r'^"(.*)" #\d+.* nid=(0x[0-9a-f]+|\d+)')
STATE = re.compile(r"^\s+java\.lang\.Thread\.State: (\S+)")
FRAME = re.compile(r"^ - ([\w$.<>/+]+)\(.*?\) @bci=\d+(?:, line=(-?\d+))?")


def read(runtime: Runtime, exe, core: Path, native: bool, timeout: float) -> Stacks:
    home = runtime.home or java_home(os.path.realpath("/usr/bin/java")) or ""
    jhsdb = Path(home) / "bin" / "jhsdb"
    if not jhsdb.exists():
        raise ToolError(f"reading Java stacks needs jhsdb of the target's JDK "
                        f"({home or 'not found'}), which is not there",
                        "install that JDK's full package (Debian: apt-get install "
                        "openjdk-NN-jdk-headless for the target's NN); the core is kept",
                        stage=Stage.STACKS)
    exe_name, fds = exe_arg(exe)
    jstack = [str(jhsdb), "jstack", "--core", str(core), "--exe"]
    out = subprocess.run([*jstack, exe_name],
                         capture_output=True, text=True, errors="replace", timeout=timeout,
                         pass_fds=fds)
    threads = parse(out.stdout)
    if out.returncode != 0 or not threads:
        why = ((out.stderr + out.stdout).strip().splitlines()
               or [f"exit status {out.returncode}"])[-1]
        raise ToolError(f"jhsdb could not read the Java stacks of {core.name}: {why}",
                        f"by hand: {' '.join(jstack)} JAVA",
                        stage=Stage.STACKS)
    return Stacks("java", "jhsdb", runtime.version, runtime.version, threads, text=out.stdout)


def parse(text: str) -> list[Thread]:
    threads: list[Thread] = []
    for line in text.splitlines():
        m = HEADER.match(line)
        if m:
            threads.append(Thread(int(m.group(2), 0), m.group(1)))
            continue
        if not threads:
            continue
        m = STATE.match(line)
        if m:
            threads[-1].state = m.group(1)
            continue
        m = FRAME.match(line)
        if m:
            number = int(m.group(2)) if m.group(2) and int(m.group(2)) > 0 else None
            threads[-1].frames.append(Frame(m.group(1), None, number, False))
    return threads
