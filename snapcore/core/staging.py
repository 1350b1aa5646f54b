"""The staging directory the kernel dumps into for a target of another user or
with another root, and the clean-up of what a killed snapcore left there.

The target's view of the files is reached through /proc/PID/root, but the
kernel resolves every absolute symlink met under it from *snapcore's* root:
a chrooted target whose /var/tmp links to /root/x would have root make, and
give away, a directory in the host's /root/x.  So each place is resolved
inside the target's root (linux/resolve.py: RESOLVE_IN_ROOT), and all the
rest goes through descriptors: mkdirat in the place found, the new directory
opened O_NOFOLLOW and checked (snapcore's, private, empty), fchown to the
target's user, then read, emptied and removed through the same descriptors.
The child's chdir gets the place's own name in the target's root, with no
symlink on the way (resolve.path_in_root): should the target's user move
things meanwhile, the kernel writes the core elsewhere, with that user's
credentials, and snapcore finds none.
"""

from __future__ import annotations

import errno
import os
import secrets
import stat
import time
from dataclasses import dataclass
from pathlib import Path

from snapcore.core.placement import owner_running
from snapcore.core.safefs import DIR_FLAGS, remove_tree
from snapcore.errors import OutputError, Stage
from snapcore.linux import resolve

STAGING_PREFIX = ".snapcore-staging-"

# Where the kernel may write the core for a target of another user or with
# another root, best first: /var/tmp, then /tmp (a container with a read-only
# root filesystem often has a writable volume at /tmp alone).  Never
# /dev/shm: it is memory, and a file written there is charged to the memory
# cgroup of the task writing it (mm/shmem.c charges the page to the writer's
# memcg), here the snapshot child, in the target's cgroup: a core as big as
# the process would eat the room the copy-on-write copies need.
CANDIDATES = ("/var/tmp", "/tmp")


@dataclass
class _Staged:
    base_fd: int  # the place it was made in
    fd: int  # the directory itself
    name: str
    made: os.stat_result


_staged: dict[str, _Staged] = {}  # staging directory (its path here) -> descriptors


def _open_root(root: str) -> int:
    return os.open(root or "/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)


def _why_not(root_fd: int, place: str, exc: OSError) -> str:
    if exc.errno == errno.ENOENT:
        try:
            link = resolve.open_in_root(root_fd, place, os.O_PATH | os.O_NOFOLLOW)
        except OSError:
            return "is missing"
        try:
            if stat.S_ISLNK(os.fstat(link).st_mode):
                return f"is a symlink to {os.readlink('', dir_fd=link)}, which is missing there"
        finally:
            os.close(link)
        return "is missing"
    if exc.errno == errno.ELOOP:
        return "is a symlink loop"
    if exc.errno == errno.ENOTDIR:
        return "is not a directory"
    return f"cannot be looked at ({exc.strerror})"


def _open_place(root_fd: int, place: str) -> tuple[int, str]:
    """`place` resolved in the root `root_fd`: a descriptor, and its name there
    without symlinks; ValueError saying why it cannot take a staging directory.
    A read-only mount is read through its own flags (statvfs ST_RDONLY: a bind
    mount may be read-only on a writable filesystem); access(2) also answers
    EROFS for it, even to root."""
    try:
        fd = resolve.open_in_root(root_fd, place, os.O_PATH | os.O_DIRECTORY)
    except OSError as exc:
        raise ValueError(_why_not(root_fd, place, exc)) from None
    name = resolve.path_in_root(root_fd, fd)
    why = ("has no name without a symlink there" if name is None
           else "is read-only" if os.fstatvfs(fd).f_flag & os.ST_RDONLY
           else "" if os.access(".", os.W_OK | os.X_OK, dir_fd=fd) else "is not writable for you")
    if why or name is None:
        os.close(fd)
        raise ValueError(why)
    return fd, name


def _first_place(root: str) -> tuple[int, str]:
    """The first usable place in the target's view (`root`: /proc/PID/root, or
    "" for snapcore's own); OutputError naming what is wrong with each."""
    root_fd = _open_root(root)
    problems = []
    try:
        for place in CANDIDATES:
            try:
                return _open_place(root_fd, place)
            except ValueError as why:
                problems.append(f"{place} {why}")
    finally:
        os.close(root_fd)
    if root:
        raise OutputError("the kernel writes the core in the target's view of the files, "
                          f"where nothing is writable ({', '.join(problems)})",
                          "give the target a writable /tmp (in Kubernetes an emptyDir "
                          "volume mounted at /tmp)", stage=Stage.PREFLIGHT)
    raise OutputError("the kernel writes another user's core with that user's "
                      f"credentials, and nothing is writable for it ({', '.join(problems)})",
                      "make /tmp writable, or run snapcore as the target's user",
                      stage=Stage.PREFLIGHT)


def _here(root: str, name: str) -> str:
    return (root + name).rstrip("/") or "/"


def staging_base(output_dir: Path, uid: int, root: str = "") -> str:
    """The directory make_staging_dir will stage in (see there), as a path
    here; OutputError when the target's view of the files has no usable one."""
    if uid == os.geteuid() and not root:
        return str(output_dir)
    fd, name = _first_place(root)
    os.close(fd)
    return _here(root, name)


def make_staging_dir(output_dir: Path, uid: int, gid: int, root: str = "") -> Path:
    """A private directory the target's user may write, for the kernel to dump into.

    The kernel writes the core with the target's credentials, so a root-owned
    0700 output directory would make a `postgres` target's dump fail silently.
    Same user: stage inside the output directory (the move is a rename).
    Another user: stage under /var/tmp (else /tmp; world-writable, sticky),
    owned by that user.  A target with another root (`root`: placement.
    target_root): stage in its own /var/tmp or /tmp, the only places its
    child can reach.  Failing here is before the target is touched.
    """
    same_user = uid == os.geteuid() and not root
    if same_user:
        base_fd = os.open(output_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        where = str(output_dir)
    else:
        base_fd, name = _first_place(root)
        where = _here(root, name)
    try:
        name, fd = _make(base_fd, where)
        made = os.fstat(fd)
        if not same_user:
            os.fchown(fd, uid, gid)
    except BaseException:
        os.close(base_fd)
        raise
    staging = Path(where) / name
    _staged[str(staging)] = _Staged(base_fd, fd, name, made)
    return staging


def _make(base_fd: int, where: str) -> tuple[str, int]:
    """mkdirat a new name in `base_fd`, then open it without following a link
    and check it is that directory: snapcore's, private, empty."""
    for _ in range(100):
        name = f"{STAGING_PREFIX}{os.getpid()}-{secrets.token_hex(4)}"
        try:
            os.mkdir(name, 0o700, dir_fd=base_fd)
            break
        except FileExistsError:
            continue
        except OSError as exc:
            raise OutputError(f"cannot make a staging directory in {where}: {exc.strerror}",
                              "make it writable, or give the target a writable /tmp",
                              stage=Stage.PREFLIGHT) from None
    replaced = OutputError(f"the staging directory {where}/{name} was replaced as soon as it "
                           "was made; nothing was given away",
                           "someone is tampering with that directory", stage=Stage.PREFLIGHT)
    try:
        fd = os.open(name, DIR_FLAGS, dir_fd=base_fd)
    except OSError:
        raise replaced from None
    st = os.fstat(fd)
    if st.st_uid != os.geteuid() or st.st_mode & 0o077 or os.listdir(fd):
        os.close(fd)
        raise replaced
    return name, fd


def opened(staging: Path) -> int | None:
    """A new descriptor on a staging directory this snapcore made (None for
    another path): the directory itself, whatever its name names now."""
    made = _staged.get(str(staging))
    return None if made is None else os.dup(made.fd)


def seen_here(staging: Path) -> str:
    """A path that reaches the staging directory made, whatever its name names
    now (through this process's descriptor on it)."""
    made = _staged.get(str(staging))
    return str(staging) if made is None else f"/proc/self/fd/{made.fd}"


def remove_staging(staging: Path) -> None:
    """Remove a staging directory this snapcore made, with what is in it.

    Its owner (the target's user) may still be writing into it, or may have
    renamed it and put something else in its place.  Through the descriptors
    kept since it was made: it is taken back (snapcore's, 0700: nothing more
    can be added), emptied, and removed by name only if the name in the
    place it was made still names it.
    """
    made = _staged.pop(str(staging), None)
    if made is None:
        return
    try:
        os.fchown(made.fd, os.geteuid(), os.getegid())
        os.fchmod(made.fd, 0o700)
        for name in os.listdir(made.fd):
            try:
                os.unlink(name, dir_fd=made.fd)
            except IsADirectoryError:
                try:
                    remove_tree(name, made.fd)
                except OSError:
                    pass
            except OSError:
                pass
        now = os.stat(made.name, dir_fd=made.base_fd, follow_symlinks=False)
        if os.path.samestat(now, made.made):
            os.rmdir(made.name, dir_fd=made.base_fd)
    except OSError:
        pass
    finally:
        os.close(made.fd)
        os.close(made.base_fd)


def remove_stale_staging(output_dir: Path, root: str = "") -> list[str]:
    """Remove staging directories whose snapcore is gone (killed mid-dump, even
    with SIGKILL) from every place make_staging_dir may use: the output
    directory, /var/tmp and /tmp here and in the target's root.  Their pid is
    in their name; one that is still a running snapcore is left alone.  Each
    place is resolved as the target sees it, and only a real directory is
    removed, through descriptors (safefs.remove_tree never follows a symlink)."""
    removed: list[str] = []
    places: list[tuple[str, str | None, str]] = [(str(output_dir), None, str(output_dir))]
    places += [(r, place, _here(r, place)) for r in dict.fromkeys(["", root])
               for place in CANDIDATES]
    for where_root, place, where in places:
        try:
            if place is None:
                fd = os.open(where, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            else:
                root_fd = _open_root(where_root)
                try:
                    fd = resolve.open_in_root(root_fd, place)
                finally:
                    os.close(root_fd)
        except OSError:
            continue
        try:
            removed += _remove_stale_in(fd, where)
        finally:
            os.close(fd)
    return removed


def _remove_stale_in(dir_fd: int, where: str) -> list[str]:
    removed: list[str] = []
    try:
        entries = list(os.scandir(dir_fd))
    except OSError:
        return removed
    for entry in entries:
        if not entry.name.startswith(STAGING_PREFIX):
            continue
        rest = entry.name[len(STAGING_PREFIX):]
        if owner_running(rest):
            continue
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if not stat.S_ISDIR(st.st_mode):
            continue  # never made by snapcore: not its to touch
        if not rest.split("-", 1)[0].isdigit() and time.time() - st.st_mtime < 3600:
            continue  # a name without a pid (snapcore 0.1): only once surely stale
        try:
            remove_tree(entry.name, dir_fd)
            removed.append(f"{where}/{entry.name}")
        except OSError:
            pass
    return removed
