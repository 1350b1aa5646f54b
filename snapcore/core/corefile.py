"""Where the kernel puts the core, and what snapcore does with it afterwards.

core_pattern (Documentation/admin-guide/sysctl/kernel.rst):
- a relative file name ("core", "core.%p"): written in the dumping process's
  cwd; snapcore moves the child into a staging directory first;
- an absolute file name: written where the administrator said;
- "|program args": piped to a handler (systemd-coredump, apport), which keeps it.
"""

from __future__ import annotations

import errno
import fnmatch
import glob
import os
import shutil
import socket
import stat
import struct
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from snapcore.linux import arch
from snapcore.core import elf
from snapcore.errors import CoreNotWritten, OutputError

CORE_PATTERN = "/proc/sys/kernel/core_pattern"
CORE_USES_PID = "/proc/sys/kernel/core_uses_pid"
STAGING_PREFIX = ".snapcore-staging-"
# A stored core waits under this hidden name (with snapcore's pid) until its
# record is written: a snapcore killed in between never leaves a core without
# a record, and the next one finishes or removes what it left.
PART_PREFIX = ".snapcore-part-"


@dataclass
class CorePattern:
    pattern: str
    uses_pid: bool

    @property
    def kind(self) -> str:
        if self.pattern.startswith("|"):
            return "pipe"
        return "absolute" if self.pattern.startswith("/") else "relative"

    @property
    def handler(self) -> str:
        return self.pattern[1:].split()[0] if self.kind == "pipe" else ""


def read_core_pattern() -> CorePattern:
    with open(CORE_PATTERN) as f:
        pattern = f.read().rstrip("\n")
    try:
        with open(CORE_USES_PID) as f:
            uses_pid = f.read().strip() != "0"
    except OSError:
        uses_pid = False
    return CorePattern(pattern or "core", uses_pid)


def expand(pattern: CorePattern, *, pid: int, uid: int, gid: int, comm: str, exe: str,
           soft_limit: int, ns_pid: int | None = None) -> str:
    """core_pattern with the specifiers snapcore can know filled in, the rest as `*`.

    The result is a glob: %t (the dump's time) and %d (dump mode) are known only
    to the kernel.  %p/%i are the dumping thread's ids in its own pid namespace
    (`ns_pid`), %P/%I in the initial one (`pid`).
    """
    local = str(pid if ns_pid is None else ns_pid)
    values = {
        "%": "%", "p": local, "P": str(pid), "i": local, "I": str(pid),
        "u": str(uid), "g": str(gid), "s": "6", "h": socket.gethostname(),
        "e": glob.escape(comm), "E": glob.escape(exe.replace("/", "!")),
        "f": glob.escape(os.path.basename(exe)),
        "c": str(soft_limit if soft_limit != (1 << 64) - 1 else -1),
    }
    out, text, i = [], pattern.pattern, 0
    has_pid = False
    while i < len(text):
        if text[i] == "%" and i + 1 < len(text):
            spec = text[i + 1]
            has_pid |= spec == "p"
            out.append(values.get(spec, "*"))
            i += 2
        else:
            out.append(glob.escape(text[i]))
            i += 1
    name = "".join(out)
    if pattern.uses_pid and not has_pid:
        name += f".{local}"  # core_uses_pid appends %p when the pattern has none
    return name


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
                          "choose another one with -o DIR", stage="preflight") from None
    if not path.is_dir():
        raise OutputError(f"output path {path} is not a directory",
                          "choose another one with -o DIR", stage="preflight")
    if not os.access(path, os.W_OK | os.X_OK):
        raise OutputError(f"output directory {path} is not writable",
                          "choose another one with -o DIR, or run as its owner",
                          stage="preflight")
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


def make_staging_dir(output_dir: Path, uid: int, gid: int, root: str = "") -> Path:
    """A private directory the target's user may write, for the kernel to dump into.

    The kernel writes the core with the target's credentials, so a root-owned
    0700 output directory would make a `postgres` target's dump fail silently.
    Same user: stage inside the output directory (the move is a rename).
    Another user: stage under /var/tmp (world-traversable), owned by that user.
    A target with another root (`root`, see target_root): stage in its own
    /var/tmp (or /tmp), the only places its child can reach.
    """
    same_user = uid == os.geteuid() and not root
    if root:
        bases = [d for d in (f"{root}/var/tmp", f"{root}/tmp") if os.path.isdir(d)]
        if not bases:
            raise OutputError("the target's filesystem has no /var/tmp or /tmp for the "
                              "kernel to write the core in", "snapshot it from inside its "
                              "container", stage="preflight")
        base = bases[0]
    else:
        base = str(output_dir) if same_user else "/var/tmp"
    staging = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{os.getpid()}-", dir=base))
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
    bases = [str(output_dir), "/var/tmp"]
    if root:
        bases += [f"{root}/var/tmp", f"{root}/tmp"]
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
            owner = entry.name[len(STAGING_PREFIX):].split("-", 1)[0]
            if owner.isdigit() and _is_snapcore(int(owner)):
                continue
            if not owner.isdigit() and _age(entry) < 3600:
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


def _is_snapcore(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"snapcore" in f.read()
    except OSError:
        return False


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
            dir_fd = os.open(path, dir_flags | os.O_CLOEXEC)
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
        glob_pattern = os.path.join(glob.escape(str(directory)), glob_pattern)
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
                          "check permissions there", stage="core") from None
    try:
        try:
            os.link(f"/proc/self/fd/{core.fd}", name, dst_dir_fd=out_fd,
                    follow_symlinks=True)
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            _copy_sparse(core.fd, out_fd, name)
        try:
            os.unlink(core.name, dir_fd=core.dir_fd)  # whatever that name is now
        except OSError:
            pass
    except OSError as exc:
        raise OutputError(f"cannot move the core into {output_dir}: {exc.strerror}",
                          "check free space and permissions there", stage="core") from None
    finally:
        os.close(out_fd)
    return dest


def partial_name(name: str) -> str:
    return f"{PART_PREFIX}{os.getpid()}-{name}"


def final_name(partial: str) -> str:
    return partial[len(PART_PREFIX):].split("-", 1)[1]


def publish(partial: Path, final: Path) -> None:
    """The core's final name, once its record is written (rename: atomic)."""
    try:
        os.rename(partial, final)
    except OSError as exc:
        raise OutputError(f"cannot name the core {final}: {exc.strerror}",
                          "check permissions there", stage="core") from None


def finish_interrupted(output_dir: Path) -> list[str]:
    """What a killed snapcore left in the output directory: a hidden core whose
    record was written gets its name; anything else of it is removed."""
    done = []
    try:
        entries = list(os.scandir(output_dir))
    except OSError:
        return done
    for entry in entries:
        # compress.py's own partial file is "." + the name it compresses.
        own = entry.name[1:] if entry.name.startswith("." + PART_PREFIX) else entry.name
        if not own.startswith(PART_PREFIX) or "-" not in own[len(PART_PREFIX):]:
            continue
        owner = own[len(PART_PREFIX):].split("-", 1)[0]
        if owner.isdigit() and _is_snapcore(int(owner)):
            continue
        final = final_name(own)
        record = output_dir / (final.split(".core", 1)[0] + ".json")
        try:
            if own == entry.name and final.endswith((".core", ".core.zst")) \
                    and record.exists() and not entry.is_symlink():
                os.rename(entry.path, output_dir / final)
            else:
                os.unlink(entry.path)
            done.append(entry.path)
        except OSError:
            pass
    return done


def _copy_sparse(src: int, dir_fd: int, name: str) -> None:
    size = os.fstat(src).st_size
    dst = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                  0o600, dir_fd=dir_fd)
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


@dataclass
class CoreNotes:
    prstatus_pids: list[int]  # one per thread, in note order
    prstatus_offsets: list[int]  # file offset of each of those pr_pid fields
    prpsinfo_pid: int | None
    prpsinfo_offset: int | None
    loads_end: int  # where the last PT_LOAD's file data ends


def read_notes(core: OpenCore) -> CoreNotes:
    """Read an ELF core's thread pids from its notes; refuse anything else."""
    with os.fdopen(os.dup(core.fd), "rb") as f:
        try:
            e_type, segs = elf.segments(f)
        except elf.NotElf:
            raise CoreNotWritten(f"{core.path} is not a 64-bit ELF file",
                                 "the kernel wrote no usable core", stage="core") from None
        if e_type != elf.ET_CORE:
            raise CoreNotWritten(f"{core.path} is not an ELF core (type {e_type})",
                                 "the kernel wrote no usable core", stage="core")
        notes = CoreNotes([], [], None, None, 0)
        for seg in segs:
            if seg.type == elf.PT_LOAD:
                notes.loads_end = max(notes.loads_end, seg.offset + seg.filesz)
            elif seg.type == elf.PT_NOTE:
                f.seek(seg.offset)
                data = f.read(seg.filesz)
                for n_type, _name, desc_at, _size in elf.notes(data):
                    if n_type == arch.NT_PRSTATUS:
                        at = desc_at + arch.PRSTATUS_PID_OFFSET
                        notes.prstatus_pids.append(_int32(data, at))
                        notes.prstatus_offsets.append(seg.offset + at)
                    elif n_type == arch.NT_PRPSINFO:
                        at = desc_at + arch.PRPSINFO_PID_OFFSET
                        notes.prpsinfo_pid = _int32(data, at)
                        notes.prpsinfo_offset = seg.offset + at
    return notes


def _int32(data: bytes, at: int) -> int:
    return struct.unpack_from("<i", data, at)[0]


def rename_threads(core: OpenCore, notes: CoreNotes, tids: dict[int, int],
                   pid: int) -> None:
    """Write the target's own ids over the child's in the core's notes, in place.

    The kernel names the child's thread ids, while glibc's thread list in the
    core's memory holds the target's: without this, gdb shows every thread
    twice, once without registers.  Only a few bytes of the note segment change.
    """
    for old, offset in zip(notes.prstatus_pids, notes.prstatus_offsets):
        if old in tids:
            os.pwrite(core.fd, struct.pack("<i", tids[old]), offset)
    if notes.prpsinfo_offset is not None:
        os.pwrite(core.fd, struct.pack("<i", pid), notes.prpsinfo_offset)


def check_core(core: OpenCore, child_pid: int) -> CoreNotes:
    notes = read_notes(core)
    if child_pid not in notes.prstatus_pids:
        raise CoreNotWritten(f"{core.path} does not describe the snapshot (pids "
                             f"{notes.prstatus_pids}, expected {child_pid})",
                             "another core matched core_pattern; look for it by hand",
                             stage="core")
    size = os.fstat(core.fd).st_size
    if size < notes.loads_end:
        raise CoreNotWritten(f"core {core.path} is truncated ({size} of {notes.loads_end} "
                             "bytes)", "the disk may be full: free space or choose -o DIR",
                             stage="dump")
    return notes
