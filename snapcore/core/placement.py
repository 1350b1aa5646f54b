"""Where snapcore writes: the output directory, names in it, and the
target's view of the files.  The staging
directory the kernel dumps into: core/staging.py.
"""

from __future__ import annotations

import os
from datetime import datetime, timezone
from pathlib import Path

from snapcore.errors import OutputError, Stage


def default_output_dir() -> Path:
    """SNAPCORE_DIR, else /var/lib/snapcore for root, else the user's state directory."""
    if os.environ.get("SNAPCORE_DIR"):
        return Path(os.environ["SNAPCORE_DIR"])
    if os.geteuid() == 0:
        return Path("/var/lib/snapcore")
    state = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return Path(state) / "snapcore"


def prepare_output_dir(path: Path) -> Path:
    path = Path(path).absolute()
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create output directory {path}: {exc.strerror}",
                          "choose another output directory", stage=Stage.PREFLIGHT,
                          setting="output_dir") from None
    if not path.is_dir():
        raise OutputError(f"output path {path} is not a directory",
                          "choose another output directory", stage=Stage.PREFLIGHT,
                          setting="output_dir")
    if not os.access(path, os.W_OK | os.X_OK):
        raise OutputError(f"output directory {path} is not writable",
                          "choose another output directory, or run as its owner",
                          setting="output_dir",
                          stage=Stage.PREFLIGHT)
    return path


def target_root(pid: int) -> str:
    """"" when the target sees the same files as snapcore; else where its root
    is seen from here, /proc/PID/root (a container's mount namespace, a chroot).
    The kernel writes the core in the target's view of the filesystem."""
    try:
        same_ns = os.readlink("/proc/self/ns/mnt") == os.readlink(f"/proc/{pid}/ns/mnt")
        same_root = os.path.samestat(os.stat("/"), os.stat(f"/proc/{pid}/root"))
    except OSError:
        return ""
    return "" if same_ns and same_root else f"/proc/{pid}/root"


def as_seen_by_target(path: Path, root: str) -> str:
    """The target's name for one of its own files seen here through `root`."""
    return str(path)[len(root):] if root else str(path)


def core_name(comm: str, pid: int, when: datetime) -> str:
    """`ls` sorts these by time: UTC timestamp first, then what the target was."""
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in comm) or "process"
    stamp = when.astimezone(timezone.utc).strftime("%Y%m%dT%H%M%S.") + \
        f"{when.microsecond // 1000:03d}Z"
    return f"{stamp}_{safe}_{pid}.core"


def owner_running(rest: str) -> bool:
    """Whether a name snapcore gave as PREFIX + "PID-..." (`rest`: what follows
    the prefix) belongs to a snapcore that is still running."""
    owner = rest.split("-", 1)[0]
    if not owner.isdigit():
        return False
    try:
        with open(f"/proc/{owner}/cmdline", "rb") as f:
            return b"snapcore" in f.read()
    except OSError:
        return False
