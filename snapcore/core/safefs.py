"""snapcore's own files in a directory someone else may write too.

In a sticky directory everyone may write (1777, like /var/tmp) another user
may have made any name before snapcore did: a symlink to a file only root may
write, a hard link to one, a FIFO (opening it would block), a file of their
own.  What the kernel does about it in sticky directories (fs/namei.c:
`may_create_in_sticky` for fs.protected_regular and protected_fifos,
`may_follow_link` for protected_symlinks, `may_linkat` for
protected_hardlinks) hangs on sysctls that may be off, and does not cover a
hard link at all once it exists.  So snapcore never follows a name there:
its files are created O_CREAT|O_EXCL|O_NOFOLLOW, an existing one is opened
O_NOFOLLOW|O_NONBLOCK and taken only when it is a regular file with one link
owned by snapcore's euid, and its own directory (`.snapcore`) must be a real
directory of its own that nobody else may write.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import stat
import sys
from pathlib import Path

from snapcore.errors import OutputError, Stage

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def not_own(st: os.stat_result) -> str:
    """Why a file is not one of snapcore's own ("" when it is)."""
    if stat.S_ISLNK(st.st_mode):
        return "a symlink"
    if stat.S_ISFIFO(st.st_mode):
        return "a FIFO"
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file"
    if st.st_uid != os.geteuid():
        return f"owned by uid {st.st_uid}"
    if st.st_nlink != 1:
        return f"a file with {st.st_nlink} links"
    return ""


def refusal(path: Path, why: str) -> OutputError:
    return OutputError(f"{path} is {why}, not snapcore's own file: nothing was written "
                       "through it", f"someone else writes in {path.parent}: remove it, and "
                       "keep the output directory writable by you alone (or sticky)",
                       stage=Stage.CORE, setting="output_dir")


def why_there(dir_fd: int, name: str) -> str:
    try:
        return not_own(os.stat(name, dir_fd=dir_fd, follow_symlinks=False)) or "already there"
    except OSError:
        return "already there"


def create(dir_fd: int, name: str, path: Path, flags: int = os.O_WRONLY,
           mode: int = 0o600) -> int:
    """A new file `name` in `dir_fd`, never one made before (`path`: its name
    for messages)."""
    try:
        return os.open(name, flags | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                       mode, dir_fd=dir_fd)
    except FileExistsError:
        raise refusal(path, why_there(dir_fd, name)) from None


def open_own(dir_fd: int, name: str, path: Path, flags: int = os.O_RDWR,
             create_it: bool = True) -> int:
    """`name` in `dir_fd`, made now or made by snapcore before: a regular file
    with one link owned by snapcore's euid.  FileNotFoundError when it is
    missing and not to be made."""
    if create_it:
        try:
            return create(dir_fd, name, path, flags)
        except OutputError:
            pass  # there already: snapcore's own, or refused below
    try:
        fd = os.open(name, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise refusal(path, "a symlink") from None
        if exc.errno in (errno.ENXIO, errno.EISDIR):
            raise refusal(path, why_there(dir_fd, name)) from None
        raise
    why = not_own(os.fstat(fd))
    if why:
        os.close(fd)
        raise refusal(path, why)
    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
    return fd


def dir_problem(st: os.stat_result | None) -> str:
    """Why a directory is not one snapcore may keep its own files in ("" when
    it may, or when it is missing: st None)."""
    if st is None:
        return ""
    if stat.S_ISLNK(st.st_mode):
        return "a symlink"
    if not stat.S_ISDIR(st.st_mode):
        return "not a directory"
    if st.st_uid != os.geteuid():
        return f"owned by uid {st.st_uid}"
    if st.st_mode & 0o022:
        return "writable by others"
    return ""


def dir_refusal(path: Path, why: str) -> OutputError:
    return OutputError(f"{path} is {why}: snapcore keeps its own state there and writes "
                       "nothing through it", f"remove it (rm -r {path}); snapcore makes its "
                       "own", stage=Stage.PREFLIGHT, setting="output_dir")


def own_dir(parent_fd: int, name: str, path: Path, create_it: bool = True) -> int:
    """Directory `name` in `parent_fd`, made 0700 now or earlier by snapcore,
    opened without following a link; FileNotFoundError when missing and not
    to be made."""
    if create_it:
        try:
            os.mkdir(name, 0o700, dir_fd=parent_fd)
        except FileExistsError:
            pass
    try:
        fd = os.open(name, DIR_FLAGS, dir_fd=parent_fd)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            st = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
            raise dir_refusal(path, dir_problem(st)) from None
        raise
    why = dir_problem(os.fstat(fd))
    if why:
        os.close(fd)
        raise dir_refusal(path, why)
    return fd


def lstat_or_none(path: Path) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None


def read_own(path: Path, owners: set[int]) -> bytes | None:
    """The content of a regular file owned by one of `owners`, never through a
    link, never waiting on a FIFO; None for anything else."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid not in owners:
            return None
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
        return b"".join(chunks)
    except OSError:
        return None
    finally:
        os.close(fd)


def remove_tree(name: str, dir_fd: int) -> None:
    """Remove directory `name` in `dir_fd` and all it holds, never following a
    symlink: shutil.rmtree(dir_fd=) where Python has it (3.11 and later),
    else the same walk by descriptor (os.fwalk, which does not follow links)."""
    if sys.version_info >= (3, 11):
        shutil.rmtree(name, dir_fd=dir_fd)
    else:
        remove_tree_walking(name, dir_fd)


def remove_tree_walking(name: str, dir_fd: int) -> None:
    for _, dirs, files, here in os.fwalk(name, topdown=False, dir_fd=dir_fd):
        for entry in files + dirs:
            try:
                os.rmdir(entry, dir_fd=here)
            except NotADirectoryError:  # a file, or a symlink listed among the dirs
                os.unlink(entry, dir_fd=here)
    os.rmdir(name, dir_fd=dir_fd)
