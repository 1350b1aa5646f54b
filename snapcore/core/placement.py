"""Where snapcore writes: the output directory (and whether root may write
there at all), names in it, and the target's view of the files.  The staging
directory the kernel dumps into: core/staging.py.
"""

from __future__ import annotations

import grp
import os
import stat
from datetime import datetime, timezone
from pathlib import Path

from snapcore.core import safefs
from snapcore.errors import OutputError, Stage
from snapcore.linux import facts


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


def existing_ancestor(path: Path) -> Path:
    """The nearest directory on the way up that exists (os.path.exists, unlike
    Path.exists, answers False instead of raising where search is denied)."""
    while not os.path.exists(path) and path != path.parent:
        path = path.parent
    return path


def output_dir_problem(out: Path) -> tuple[str, str] | None:
    """Why snapcore must not write in output directory `out`, as (reason,
    fix), or None.  Another user must not be able to choose where snapcore's
    files go: no symlink of theirs on the way, every directory from / down
    owned by root or snapcore's euid, none writable by others unless sticky
    (there nobody else may move or replace an entry it does not own,
    fs/namei.c: `may_delete`).  A sticky directory is fine: snapcore never
    follows a name in it (core/safefs.py), and its own `.snapcore` must be
    its own."""
    out = Path(out).absolute()
    mine = {0, os.geteuid()}
    for i in range(2, len(out.parts) + 1):
        try:
            st = os.lstat(Path(*out.parts[:i]))
        except OSError:
            break  # missing (made later, 0700), or below a file: refused elsewhere
        if stat.S_ISLNK(st.st_mode) and st.st_uid not in mine:
            return (f"{Path(*out.parts[:i])} is a symlink owned by uid {st.st_uid}, who "
                    "decides where it points", "give the directory itself, not the link")
    existing = existing_ancestor(out)
    real = Path(os.path.realpath(existing))
    for d in [*reversed(real.parents), real]:
        st = os.stat(d)
        if st.st_uid not in mine:
            return (f"{d} belongs to uid {st.st_uid}, who could swap what snapcore writes "
                    "there", "use a directory of root's (or your own)")
        if st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX:
            return (f"{d} is writable by {_others(st)} without the sticky bit: anyone "
                    "could replace a core, or the directory", "chmod go-w it (or +t), or "
                    "choose another output directory")
    if existing == out:
        state = out / ".snapcore"
        why = safefs.dir_problem(safefs.lstat_or_none(state))
        if why:
            return (f"{state} is {why}: snapcore keeps its own state there",
                    f"remove it (rm -r {state}); snapcore makes its own")
    return None


def _others(st: os.stat_result) -> str:
    if st.st_mode & 0o002:
        return "everyone"
    try:
        return f"group {grp.getgrgid(st.st_gid).gr_name}"
    except KeyError:
        return f"group {st.st_gid}"


def target_root(pid: int) -> str:
    """"" when the target sees the same files as snapcore; else /proc/PID/root
    (linux/facts.target_root).  A snapshot's preflight reads it once:
    pre.facts.root."""
    return facts.target_root(pid)


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
