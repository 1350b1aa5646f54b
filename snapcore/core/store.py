"""Every core file snapcore makes in the output directory: the core the
kernel wrote, taken in through descriptors only (the directories involved
may be writable by the target's user, who could swap any name for a symlink
or a hard link), and the file snapcore's writer writes.
"""

from __future__ import annotations

import errno
import fnmatch
import glob
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from snapcore.core.notes import read_notes
from snapcore.core import safefs, staging
from snapcore.core.publish import partial_name
from snapcore.errors import CoreNotWritten, OutputError, Stage
from snapcore.linux import resolve



@dataclass
class OpenCore:
    """A core file the kernel wrote, held by descriptor: every later step works
    on this very inode, never on a name another user could swap."""

    fd: int
    dir_fd: int
    name: str
    path: Path  # for messages and the clean-up of a staging directory only

    def close(self) -> None:
        for fd in (self.fd, self.dir_fd):
            try:
                os.close(fd)
            except OSError:
                pass


def open_core(glob_pattern: str, directory: Path | None, since: float,
              owners: set[int], rejected: list[str] | None = None) -> OpenCore | None:
    """The newest file matching the expanded core_pattern, written after `since`.

    The directory may be writable by the target's user (staging, or a /tmp-like
    crash directory), who could swap the core for a symlink or a hard link to
    someone else's file.  So: the directory is opened once (a staging
    directory with O_NOFOLLOW), each candidate with O_NOFOLLOW relative to it,
    and only a regular file with one link, owned by the target's user (as the
    kernel writes it: fs/coredump.c refuses any other), is taken.  What was
    passed over, and why, is appended to `rejected`.
    """
    rejected = [] if rejected is None else rejected
    if directory is not None and not glob_pattern.startswith("/"):
        dirs, name_glob = [str(directory)], glob_pattern
        dir_flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
    else:
        head, name_glob = os.path.split(glob_pattern)
        dirs = glob.glob(head) if glob.has_magic(head) else [head]
        dir_flags = os.O_RDONLY | os.O_DIRECTORY
    best = None
    for path in dirs:
        try:
            dir_fd = _open_dir(path, dir_flags)
        except OSError:
            continue
        keep = False
        try:
            for name in fnmatch.filter(os.listdir(dir_fd), name_glob):
                fd = _open_regular(dir_fd, name, since, owners, rejected)
                if fd is None:
                    continue
                mtime = os.fstat(fd).st_mtime
                if best is None or mtime > best[0]:
                    if best is not None:
                        best[1].close()
                    best = (mtime, OpenCore(fd, dir_fd, name, Path(path) / name))
                    keep = True
                else:
                    os.close(fd)
        finally:
            if not keep:
                os.close(dir_fd)
    return best[1] if best else None


def _open_dir(path: str, flags: int) -> int:
    """A staging directory by the descriptor kept since it was made (its name
    is its user's to change); a directory under /proc/PID/root (an absolute
    core_pattern, as the target sees it) resolved inside that root."""
    made = staging.opened(Path(path))
    return made if made is not None else resolve.open_as_seen(path, flags)


def _open_regular(dir_fd: int, name: str, since: float, owners: set[int],
                  rejected: list[str]) -> int | None:
    try:
        fd = os.open(name, os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                     dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            rejected.append(f"{name} is a symlink")
        return None
    st = os.fstat(fd)
    why = ("not a regular file" if not stat.S_ISREG(st.st_mode)
           else f"it has {st.st_nlink} links" if st.st_nlink != 1
           else f"it belongs to uid {st.st_uid}" if st.st_uid not in owners
           else "older than the snapshot" if st.st_mtime < since - 1 else "")
    if not why:
        return fd
    os.close(fd)
    rejected.append(f"{name}: {why}")
    return None


def remove_partial(glob_pattern: str | None, since: float, owners: set[int],
                   child_pid: int) -> None:
    """After a failed dump: remove the partial core the kernel left where an
    absolute core_pattern put it, if its notes name the snapshot child (no
    other file is touched).  Through its descriptor and directory, as above."""
    if glob_pattern is None:
        return
    core = open_core(glob_pattern, None, since, owners)
    if core is None:
        return
    try:
        if child_pid in read_notes(core).prstatus_pids:
            os.unlink(core.name, dir_fd=core.dir_fd)
    except (OSError, CoreNotWritten):
        pass
    finally:
        core.close()


def bytes_written(glob_pattern: str | None, directory: Path | None) -> int:
    """Bytes on disk of the files matching the expanded core_pattern: how far a
    dump has come (blocks, not the apparent size: cores are sparse).  lstat:
    a symlink planted there is not followed."""
    if glob_pattern is None:
        return 0
    if directory is not None and not glob_pattern.startswith("/"):
        glob_pattern = os.path.join(glob.escape(staging.seen_here(directory)), glob_pattern)
    total = 0
    for name in glob.glob(glob_pattern):
        try:
            total += os.lstat(name).st_blocks * 512
        except OSError:
            pass
    return total


def store(core: OpenCore, output_dir: Path, name: str) -> Path:
    """Give the core to the invoking user, mode 0600, and put it in the output
    directory, through its descriptor, under a hidden name for `name`
    (partial_name: `publish` gives it its name once its record exists).

    Same filesystem: a hard link to the very inode (linkat through
    /proc/self/fd, as open(2) documents for O_TMPFILE), then the staged name
    is removed.  Another filesystem: a copy that keeps the holes (SEEK_DATA /
    SEEK_HOLE), as the kernel's sparse core has them; a copy that fails
    leaves nothing behind.
    """
    name = partial_name(name)
    dest = output_dir / name
    try:
        os.fchmod(core.fd, 0o600)
        os.fchown(core.fd, os.geteuid(), os.getegid())
        out_fd = os.open(output_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise OutputError(f"cannot take the core into {output_dir}: {exc.strerror}",
                          "check permissions there", stage=Stage.CORE) from None
    try:
        try:
            os.link(f"/proc/self/fd/{core.fd}", name, dst_dir_fd=out_fd,
                    follow_symlinks=True)
        except FileExistsError:
            raise safefs.refusal(dest, safefs.why_there(out_fd, name)) from None
        except OSError as exc:
            # EXDEV: another filesystem.  ENOENT with no link left: the staged
            # core was removed meanwhile (a clean-up of /var/tmp), and only
            # snapcore's descriptor still holds it: a copy from that.
            if exc.errno != errno.EXDEV and not (exc.errno == errno.ENOENT
                                                 and os.fstat(core.fd).st_nlink == 0):
                raise
            _copy_sparse(core.fd, out_fd, name, dest)
        try:
            os.unlink(core.name, dir_fd=core.dir_fd)  # whatever that name is now
        except OSError:
            pass
    except OSError as exc:
        # A disk that fills up now is exit 8, as during the dump: no core.
        kind = CoreNotWritten if exc.errno in (errno.ENOSPC, errno.EDQUOT) else OutputError
        raise kind(f"cannot move the core into {output_dir}: {exc.strerror}",
                   _fix(exc, output_dir), stage=Stage.CORE) from None
    finally:
        os.close(out_fd)
    return dest


def create_partial(output_dir: Path, name: str) -> tuple[int, Path]:
    """A new file for snapcore's writer under the hidden name for `name`
    (publish gives it its own once its record exists): made new, O_EXCL and
    never following a link, so never a name made before, by anyone."""
    name = partial_name(name)
    try:
        dir_fd = os.open(output_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            return safefs.create(dir_fd, name, output_dir / name), output_dir / name
        finally:
            os.close(dir_fd)
    except OSError as exc:
        raise OutputError(f"cannot create the core in {output_dir}: {exc.strerror}",
                          "check permissions there", stage=Stage.CORE,
                          setting="output_dir") from None


def _fix(exc: OSError, output_dir: Path) -> str:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return "free space there, or choose another output directory"
    if exc.errno == errno.ENOENT:
        return f"{output_dir} was removed meanwhile: snapshot again"
    return "check permissions there"


def _copy_sparse(src: int, dir_fd: int, name: str, dest: Path) -> None:
    size = os.fstat(src).st_size
    dst = safefs.create(dir_fd, name, dest)
    try:
        at = 0
        while at < size:
            try:
                data = os.lseek(src, at, os.SEEK_DATA)
            except OSError as exc:
                if exc.errno == errno.ENXIO:
                    break  # only a hole is left
                raise
            hole = os.lseek(src, data, os.SEEK_HOLE)
            while data < hole:
                chunk = os.pread(src, min(8 << 20, hole - data), data)
                if not chunk:
                    break
                os.pwrite(dst, chunk, data)
                data += len(chunk)
            at = hole
        os.ftruncate(dst, size)
        os.fsync(dst)
    except BaseException:
        os.close(dst)
        try:
            os.unlink(name, dir_fd=dir_fd)
        except OSError:
            pass
        raise
    os.close(dst)
