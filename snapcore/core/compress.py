"""Compress a stored core with zstandard, streaming, at idle priority."""

from __future__ import annotations

import os
from pathlib import Path

from snapcore.errors import OutputError, Stage


def compress(core: Path) -> Path:
    """Write CORE.zst next to CORE and remove CORE once the copy is complete."""
    try:
        import zstandard
    except ImportError:
        raise OutputError("compression needs the zstandard package",
                          "pip install 'snapcore[compress]'", stage=Stage.COMPRESS) from None
    dest = core.with_name(core.name + ".zst")
    partial = core.with_name("." + dest.name + ".part")
    policy, nice = os.sched_getscheduler(0), os.getpriority(os.PRIO_PROCESS, 0)
    try:
        # The machine's work comes first: compress only with what is left over.
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with open(core, "rb") as src, os.fdopen(fd, "wb") as dst:
            zstandard.ZstdCompressor(level=3).copy_stream(src, dst)
            dst.flush()
            os.fsync(dst.fileno())
        os.rename(partial, dest)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        raise OutputError(f"cannot compress {core}: {exc.strerror}",
                          "the uncompressed core is kept", stage=Stage.COMPRESS) from None
    finally:
        os.sched_setscheduler(0, policy, os.sched_param(0))
        os.setpriority(os.PRIO_PROCESS, 0, nice)
    core.unlink()
    return dest


def decompress_to(core: Path, dest: Path) -> None:
    import zstandard
    with open(core, "rb") as src, open(dest, "wb") as dst:
        zstandard.ZstdDecompressor().copy_stream(src, dst)
