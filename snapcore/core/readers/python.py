"""CPython stacks: pystack (PyPI, Bloomberg's), which reads a core with the
executable and the libraries the core names, and finds the interpreter's
threads and frames in its memory.  It runs in a child process, this module
as its main (`python -m snapcore.core.readers.python CORE EXE [--native]`),
which prints the model as JSON.

Why pystack and not py-spy (both read cores; measured on the same 104 MiB
core of /usr/bin/python3.11 with five threads, a 2-CPU machine shared with
other work: pystack core 0.22 s, py-spy dump --core 0.21 s, the mean of five):
the same speed, the same Python frames and lines; py-spy names Python's
threads (threading.Thread.name), but cannot unwind native frames in a core
("Native unwinding isn't yet supported with coredumps", py-spy 0.4.3),
while pystack merges the C frames of the interpreter and of extensions with
the Python ones (--native), says which thread holds the GIL and whether one
is collecting garbage, and has a Python API (no text to parse).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from snapcore.core.readers import exe_arg
from snapcore.core.runtimes import Runtime
from snapcore.core.stackmodel import Frame, Stacks, Thread
from snapcore.errors import SETTING, Stage, ToolError

MISSING = 3  # the child's exit status when pystack is not installed
NATIVE = "native"  # the child's third argument: the native frames too
INSTALL = ("install it into snapcore's environment: "
           f"{sys.executable} -m pip install pystack (install.sh does)")


def read(runtime: Runtime, exe, core: Path, native: bool, timeout: float) -> Stacks:
    exe_name, fds = exe_arg(exe)
    # -I: the reader's Python ignores the working directory (`-m` would put it
    # first on sys.path: a `snapcore/` there, planted or a checkout, would be
    # imported in its place, as root) and PYTHON* from the environment.
    argv = [sys.executable, "-I", "-m", "snapcore.core.readers.python", str(core), exe_name]
    out = subprocess.run(argv + ([NATIVE] if native else []), capture_output=True,
                         text=True, errors="replace", timeout=timeout, pass_fds=fds)
    if out.returncode == MISSING:
        raise ToolError("reading Python stacks needs pystack, which is not installed",
                        f"{INSTALL}; the core is kept", stage=Stage.STACKS)
    if out.returncode != 0:
        why = (out.stderr.strip().splitlines() or [f"exit status {out.returncode}"])[-1]
        raise ToolError(f"pystack could not read the Python stacks of {core.name}: {why}",
                        f"try the native stacks ({SETTING}), or by hand: pystack core "
                        f"{core} EXE", stage=Stage.STACKS, setting="lang")
    doc = json.loads(out.stdout)
    threads = [Thread(t["id"], t["name"], t["state"], [Frame(**f) for f in t["frames"]])
               for t in doc["threads"]]
    return Stacks("python", "pystack", doc["version"], runtime.version, threads)


def _frames(thread, native: bool) -> list[dict]:
    """Innermost first.  With native frames, pystack's own merge: each eval
    frame of the C stack stands for the Python frames it ran (formatter's
    _format_merged_stacks), other C frames kept, ignorable ones dropped."""
    from pystack.types import NativeFrame, frame_type
    python = [f for f in thread.all_frames]
    out: list[dict] = []

    def add(frame) -> None:
        if not frame.is_shim:
            out.append({"function": frame.code.scope, "file": frame.code.filename,
                        "line": frame.code.location.lineno, "native": False})
    if not native or not thread.native_frames:
        for frame in python:
            add(frame)
        return out[::-1]
    current = thread.frame
    for c in thread.native_frames:
        kind = frame_type(c, thread.python_version)
        if kind == NativeFrame.FrameType.EVAL and current is not None:
            add(current)
            current = current.next
            while current is not None and not current.is_entry:
                add(current)
                current = current.next
        elif kind == NativeFrame.FrameType.OTHER:
            out.append({"function": c.symbol, "file": c.path or c.library,
                        "line": c.linenumber or None, "native": True})
    return out[::-1]


def main(argv: list[str]) -> int:
    try:
        from importlib.metadata import version

        from pystack.engine import NativeReportingMode, get_process_threads_for_core
    except ImportError:
        print("pystack is not installed", file=sys.stderr)
        return MISSING
    core, exe = argv[0], argv[1]
    native = NATIVE in argv
    mode = NativeReportingMode.PYTHON if native else NativeReportingMode.OFF
    threads = get_process_threads_for_core(core, exe, native_mode=mode)
    state = {t.tid: ", ".join(filter(None, (t.gil_status, t.gc_status))) or None
             for t in threads}
    doc = {"version": version("pystack"),
           "threads": [{"id": t.tid, "name": t.name, "state": state[t.tid],
                        "frames": _frames(t, native)} for t in threads]}
    json.dump(doc, sys.stdout)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main(sys.argv[1:]))
