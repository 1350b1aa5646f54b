"""A snapshot taken to be read (`stacks`, each sample of `stacks --samples`):
taken as `snap` takes it, refused when its core is handed to a pipe (no
file to read), its executable's descriptor closed after the read, its core
kept or removed, and its stacks kept beside it for `info`."""

from __future__ import annotations

from snapcore.cli import render as report
from snapcore.cli.snap import close_exe, executable, take_each
from snapcore.errors import OutputError, SnapcoreError, Stage


def take(pid: int, request):
    """One snapshot of PID, with a core file here to read."""
    result = take_each([pid], request)[0]
    if isinstance(result, SnapcoreError):
        raise result
    if result.core_path is None:
        close_exe(result)
        raise OutputError(f"core_pattern hands cores to "
                          f"{result.core_pattern.handler}: no core here to read",
                          report.pipe_lookup(result), stage=Stage.STACKS)
    return result


def keep_or_discard(result, discard: bool) -> str | None:
    """The kept core's path and size, or None once it is removed."""
    from snapcore.units import human
    if discard:
        result.core_path.unlink(missing_ok=True)
        if result.sidecar_path is not None:
            result.sidecar_path.unlink(missing_ok=True)
        return None
    return f"{result.core_path} ({human(result.core_size)})"


def read(result, lang: str, native: bool, discard: bool):
    """RESULT's stacks, then its core kept (with the stacks beside it) or
    removed: (Stacks, the kept core's path and size or None)."""
    from snapcore.core import keptstacks
    from snapcore.core.readers import read_core
    try:
        stacks = read_core(result.core_path, executable(result), lang, native)
    finally:
        close_exe(result)
        kept = keep_or_discard(result, discard)
    problem = kept and keptstacks.keep(result.core_path, stacks)
    if problem:
        report.say(f"snapcore: warning: {problem}")
    return stacks, kept
