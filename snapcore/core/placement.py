"""Where snapcore writes: the output directory, the staging directory the
kernel dumps into for another user or another root, and the clean-up of
what a killed snapcore left there.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from snapcore.errors import OutputError, Stage

STAGING_PREFIX = ".snapcore-staging-"


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


def staging_candidates(root: str = "") -> list[str]:
    """Where the kernel may write the core for a target of another user or
    with another root, best first: /var/tmp, then /tmp (a container with a
    read-only root filesystem often has a writable volume at /tmp alone).
    Never /dev/shm: it is memory, and a file written there is charged to the
    memory cgroup of the task writing it (mm/shmem.c charges the page to the
    writer's memcg), here the snapshot child, in the target's cgroup: a core
    as big as the process would eat the room the copy-on-write copies need."""
    return [f"{root}/var/tmp", f"{root}/tmp"]


def _unwritable(base: str) -> str | None:
    """Why `base` cannot take a staging directory, or None.  A read-only mount
    is read through its own flags (statvfs ST_RDONLY: a bind mount may be
    read-only on a writable filesystem, and /proc/PID/root walks the target's
    mounts); access(2) also answers EROFS for it, even to root."""
    if not os.path.isdir(base):
        return "is missing"
    try:
        if os.statvfs(base).f_flag & os.ST_RDONLY:
            return "is read-only"
    except OSError as exc:
        return f"cannot be looked at ({exc.strerror})"
    return None if os.access(base, os.W_OK | os.X_OK) else "is not writable for you"


def staging_base(output_dir: Path, uid: int, root: str = "") -> str:
    """The directory make_staging_dir will stage in (see there); OutputError
    when the target's view of the files has no writable one."""
    if uid == os.geteuid() and not root:
        return str(output_dir)
    problems = []
    for base in staging_candidates(root):
        why = _unwritable(base)
        if why is None:
            return base
        problems.append(f"{as_seen_by_target(Path(base), root)} {why}")
    if root:
        raise OutputError("the kernel writes the core in the target's view of the files, "
                          f"where nothing is writable ({', '.join(problems)})",
                          "give the target a writable /tmp (in Kubernetes an emptyDir "
                          "volume mounted at /tmp)", stage=Stage.PREFLIGHT)
    raise OutputError("the kernel writes another user's core with that user's "
                      f"credentials, and nothing is writable for it ({', '.join(problems)})",
                      "make /tmp writable, or run snapcore as the target's user",
                      stage=Stage.PREFLIGHT)


def make_staging_dir(output_dir: Path, uid: int, gid: int, root: str = "") -> Path:
    """A private directory the target's user may write, for the kernel to dump into.

    The kernel writes the core with the target's credentials, so a root-owned
    0700 output directory would make a `postgres` target's dump fail silently.
    Same user: stage inside the output directory (the move is a rename).
    Another user: stage under /var/tmp (else /tmp; world-writable, sticky),
    owned by that user.  A target with another root (`root`, see
    target_root): stage in its own /var/tmp or /tmp, the only places its
    child can reach (staging_base).  Failing here is before the target is
    touched.
    """
    same_user = uid == os.geteuid() and not root
    base = staging_base(output_dir, uid, root)
    try:
        staging = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{os.getpid()}-", dir=base))
    except OSError as exc:
        raise OutputError(f"cannot make a staging directory in {base}: {exc.strerror}",
                          "make it writable, or give the target a writable /tmp",
                          stage=Stage.PREFLIGHT) from None
    st = os.lstat(staging)
    _staged[str(staging)] = (st.st_dev, st.st_ino)
    if not same_user:
        os.chown(staging, uid, gid)
    return staging


_staged: dict[str, tuple[int, int]] = {}  # staging directory -> (device, inode)


def remove_staging(staging: Path) -> None:
    """Remove a staging directory this snapcore made, with what is in it.

    Its owner (the target's user) may still be writing into it, or may have
    swapped it for something else.  So it is opened with O_NOFOLLOW and must
    be the very directory made (device and inode); it is taken back (root's,
    0700: nothing more can be added), emptied through its descriptor, and
    removed by name only if the name still names it.
    """
    made = _staged.pop(str(staging), None)
    try:
        parent = os.open(staging.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        fd = os.open(staging.name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
                     | os.O_CLOEXEC, dir_fd=parent)
    except OSError:
        os.close(parent)
        return
    try:
        st = os.fstat(fd)
        if made is not None and (st.st_dev, st.st_ino) != made:
            return  # not the directory snapcore made: not snapcore's to touch
        os.fchown(fd, os.geteuid(), os.getegid())
        os.fchmod(fd, 0o700)
        for name in os.listdir(fd):
            try:
                os.unlink(name, dir_fd=fd)
            except IsADirectoryError:
                shutil.rmtree(name, dir_fd=fd, ignore_errors=True)
            except OSError:
                pass
        now = os.stat(staging.name, dir_fd=parent, follow_symlinks=False)
        if (now.st_dev, now.st_ino) == (st.st_dev, st.st_ino):
            os.rmdir(staging.name, dir_fd=parent)
    except OSError:
        pass
    finally:
        os.close(fd)
        os.close(parent)


def as_seen_by_target(path: Path, root: str) -> str:
    """The target's name for one of its own files seen here through `root`."""
    return str(path)[len(root):] if root else str(path)


def core_name(comm: str, pid: int, when: datetime) -> str:
    """`ls` sorts these by time: UTC timestamp first, then what the target was."""
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in comm) or "process"
    stamp = when.astimezone(timezone.utc).strftime("%Y%m%dT%H%M%S.") + \
        f"{when.microsecond // 1000:03d}Z"
    return f"{stamp}_{safe}_{pid}.core"


def staging_bases(output_dir: Path, root: str = "") -> list[str]:
    """Every directory make_staging_dir may use, for the stale clean-up."""
    bases = [str(output_dir), *staging_candidates()]
    if root:
        bases += staging_candidates(root)
    return bases


def remove_stale_staging(bases: list[str]) -> list[str]:
    """Remove staging directories whose snapcore is gone (killed mid-dump, even
    with SIGKILL): the partial core in them is of no use to anyone.  Their pid
    is in their name; one that is still a running snapcore is left alone.
    shutil.rmtree works through directory descriptors and never follows a
    symlink, so a directory its user has filled with links is safe to remove."""
    removed = []
    for base in bases:
        try:
            entries = list(os.scandir(base))
        except OSError:
            continue
        for entry in entries:
            if not entry.name.startswith(STAGING_PREFIX):
                continue
            rest = entry.name[len(STAGING_PREFIX):]
            if owner_running(rest):
                continue
            if not rest.split("-", 1)[0].isdigit() and _age(entry) < 3600:
                continue  # a name without a pid (snapcore 0.1): only once surely stale
            try:
                shutil.rmtree(entry.path)
                removed.append(entry.path)
            except OSError:
                pass
    return removed


def _age(entry: os.DirEntry) -> float:
    try:
        return time.time() - entry.stat(follow_symlinks=False).st_mtime
    except OSError:
        return 0.0


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
