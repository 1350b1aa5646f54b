"""A stored core's hidden name until its record is written, and its final
name after: a snapcore killed in between never leaves a core without a
record, and the next one finishes or removes what it left.
"""

from __future__ import annotations

import os
from pathlib import Path

from snapcore.core import safefs
from snapcore.core.placement import owner_running
from snapcore.errors import OutputError, Stage

# The hidden name carries snapcore's pid: a partial of a running snapcore is
# never touched.
PART_PREFIX = ".snapcore-part-"


def partial_name(name: str) -> str:
    return f"{PART_PREFIX}{os.getpid()}-{name}"


def final_name(partial: str) -> str:
    return partial[len(PART_PREFIX):].split("-", 1)[1]


def publish(partial: Path, final: Path) -> None:
    """The core's final name, once its record is written (rename: atomic)."""
    try:
        os.rename(partial, final)
    except FileNotFoundError:
        raise removed(partial) from None
    except OSError as exc:
        raise OutputError(f"cannot name the core {final}: {exc.strerror}",
                          "check permissions there", stage=Stage.CORE) from None


def removed(partial: Path) -> OutputError:
    """A core removed from the output directory before it had its name: not
    by snapcore (a clean-up job, a person), and nothing of it is left."""
    return OutputError(f"the core was removed from {partial.parent} before snapcore named "
                       f"it ({partial.name}, not by snapcore)", "no core was kept; the "
                       "target is unharmed: see what else cleans that directory, and "
                       "snapshot again", stage=Stage.CORE, setting="output_dir")


def finish_interrupted(output_dir: Path) -> list[str]:
    """What a killed snapcore left in the output directory: a hidden core whose
    record was written gets its name; anything else of it is removed.  Only
    snapcore's own files count (regular, one link, its euid's: core/safefs.py):
    in a sticky directory anyone may have planted a name like these."""
    done: list[str] = []
    try:
        dir_fd = os.open(output_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return done
    try:
        for name in os.listdir(dir_fd):
            if _finish_one(dir_fd, name):
                done.append(str(output_dir / name))
    except OSError:
        pass
    finally:
        os.close(dir_fd)
    return done


def _own(dir_fd: int, name: str) -> bool:
    try:
        return not safefs.not_own(os.stat(name, dir_fd=dir_fd, follow_symlinks=False))
    except OSError:
        return False


def _finish_one(dir_fd: int, name: str) -> bool:
    # compress.py's own partial file is "." + the name it compresses.
    own = name[1:] if name.startswith("." + PART_PREFIX) else name
    if not own.startswith(PART_PREFIX) or "-" not in own[len(PART_PREFIX):]:
        return False
    if owner_running(own[len(PART_PREFIX):]) or not _own(dir_fd, name):
        return False
    final = final_name(own)
    record = final.split(".core", 1)[0] + ".json"
    try:
        if own == name and final.endswith((".core", ".core.zst")) and _own(dir_fd, record):
            os.rename(name, final, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        else:
            os.unlink(name, dir_fd=dir_fd)
    except OSError:
        return False
    return True
