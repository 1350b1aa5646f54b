"""The readers of a core's stacks, one per runtime: the runtime's own tool
or its ecosystem's best, never an unwinder of snapcore's.  Each runs as a
child process (a reader that crashes or hangs costs its own process and a
timeout, never snapcore's clean-up) and returns core/stackmodel.Stacks.

  native  gdb, `thread apply all bt`                      core/gdb.py, readers/native.py
  python  pystack (PyPI), `pystack core` through its API  readers/python.py
  java    the target JDK's jhsdb, `jhsdb jstack --core`   readers/java.py
  go      delve, `dlv core` and `goroutines -t`           readers/go.py

DEBUGINFOD_URLS passes through to each (gdb, pystack's elfutils and delve
fetch separate debug information from it for stripped distribution files).
"""

from __future__ import annotations

import time
from pathlib import Path

from snapcore.core.runtimes import Runtime
from snapcore.core.stackmodel import Stacks


def read(runtime: Runtime, exe: str | int, core: Path, native: bool = False,
         timeout: float = 300) -> Stacks:
    """CORE's stacks by RUNTIME's reader; EXE is the executable's path or a
    descriptor on it (handed to the reader as /proc/self/fd/N)."""
    import importlib
    name = runtime.lang if runtime.lang in ("python", "java", "go") else "native"
    reader = importlib.import_module(f"snapcore.core.readers.{name}")
    started = time.monotonic()
    stacks = reader.read(runtime, exe, core, native, timeout)
    stacks.seconds = time.monotonic() - started
    return stacks


def exe_arg(exe: str | int) -> tuple[str, tuple[int, ...]]:
    """EXE as the reader names it, and the descriptors it must inherit."""
    return (f"/proc/self/fd/{exe}", (exe,)) if isinstance(exe, int) else (exe, ())


def read_core(core: Path, exe: str | int, lang: str = "auto", native: bool = False,
              timeout: float = 300) -> Stacks:
    """CORE's stacks by the reader of the runtime it ran (recognised from its
    mapped files and executable: core/runtimes.py), or of LANG when not auto;
    `native` always means gdb."""
    from snapcore.core import corefile
    from snapcore.core.runtimes import recognise
    from snapcore.errors import OutputError
    try:
        facts = corefile.read_facts(core)
        runtime = recognise(facts.files, facts.exe, exe)
    except OutputError:
        # Notes snapcore cannot read: gdb is handed the file as before, and
        # says what it makes of it (a damaged core is gdb's error, exit 14).
        runtime = Runtime("native")
    if lang not in ("auto", runtime.lang):
        runtime = Runtime(lang)  # the operator's word: read as LANG, no version known
    return read(runtime, exe, core, native, timeout)
