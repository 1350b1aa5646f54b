"""Where the kernel puts the core, and what snapcore does with it afterwards.

core_pattern (Documentation/admin-guide/sysctl/kernel.rst):
- a relative file name ("core", "core.%p"): written in the dumping process's
  cwd; snapcore moves the child into a staging directory first;
- an absolute file name: written where the administrator said;
- "|program args": piped to a handler (systemd-coredump, apport), which keeps it.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import struct
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from . import arch, elf
from .errors import CoreNotWritten, OutputError

CORE_PATTERN = "/proc/sys/kernel/core_pattern"
CORE_USES_PID = "/proc/sys/kernel/core_uses_pid"


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
    staging = Path(tempfile.mkdtemp(prefix=".snapcore-staging-", dir=base))
    if not same_user:
        os.chown(staging, uid, gid)
    return staging


def as_seen_by_target(path: Path, root: str) -> str:
    """The target's name for one of its own files seen here through `root`."""
    return str(path)[len(root):] if root else str(path)


def core_name(comm: str, pid: int, when: datetime) -> str:
    """`ls` sorts these by time: UTC timestamp first, then what the target was."""
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in comm) or "process"
    stamp = when.astimezone(timezone.utc).strftime("%Y%m%dT%H%M%S.") + \
        f"{when.microsecond // 1000:03d}Z"
    return f"{stamp}_{safe}_{pid}.core"


def find_core(glob_pattern: str, directory: Path | None, since: float) -> Path | None:
    """The newest file matching the expanded core_pattern, written after `since`."""
    if directory is not None and not glob_pattern.startswith("/"):
        glob_pattern = os.path.join(glob.escape(str(directory)), glob_pattern)
    found = []
    for name in glob.glob(glob_pattern):
        try:
            st = os.stat(name)
        except OSError:
            continue
        if st.st_mtime >= since - 1:
            found.append((st.st_mtime, name))
    return Path(max(found)[1]) if found else None


def bytes_written(glob_pattern: str | None, directory: Path | None) -> int:
    """Bytes on disk of the files matching the expanded core_pattern: how far a
    dump has come (blocks, not the apparent size: cores are sparse)."""
    if glob_pattern is None:
        return 0
    if directory is not None and not glob_pattern.startswith("/"):
        glob_pattern = os.path.join(glob.escape(str(directory)), glob_pattern)
    total = 0
    for name in glob.glob(glob_pattern):
        try:
            total += os.stat(name).st_blocks * 512
        except OSError:
            pass
    return total


def store(core: Path, output_dir: Path, name: str) -> Path:
    """Move the core into the output directory, owned by the invoking user, mode 0600."""
    dest = output_dir / name
    try:
        os.chmod(core, 0o600)
        os.chown(core, os.geteuid(), os.getegid())
        try:
            os.rename(core, dest)
        except OSError:
            shutil.move(str(core), str(dest))  # another filesystem: copy, then remove
    except OSError as exc:
        raise OutputError(f"cannot move the core into {output_dir}: {exc.strerror}",
                          "check free space and permissions there", stage="core") from None
    return dest


@dataclass
class CoreNotes:
    prstatus_pids: list[int]  # one per thread, in note order
    prstatus_offsets: list[int]  # file offset of each of those pr_pid fields
    prpsinfo_pid: int | None
    prpsinfo_offset: int | None
    loads_end: int  # where the last PT_LOAD's file data ends


def read_notes(path: Path) -> CoreNotes:
    """Read an ELF core's thread pids from its notes; refuse anything else."""
    with open(path, "rb") as f:
        try:
            e_type, segs = elf.segments(f)
        except elf.NotElf:
            raise CoreNotWritten(f"{path} is not a 64-bit ELF file",
                                 "the kernel wrote no usable core", stage="core") from None
        if e_type != elf.ET_CORE:
            raise CoreNotWritten(f"{path} is not an ELF core (type {e_type})",
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


def rename_threads(path: Path, notes: CoreNotes, tids: dict[int, int], pid: int) -> None:
    """Write the target's own ids over the child's in the core's notes, in place.

    The kernel names the child's thread ids, while glibc's thread list in the
    core's memory holds the target's: without this, gdb shows every thread
    twice, once without registers.  Only a few bytes of the note segment change.
    """
    with open(path, "r+b") as f:
        for old, offset in zip(notes.prstatus_pids, notes.prstatus_offsets):
            if old in tids:
                f.seek(offset)
                f.write(struct.pack("<i", tids[old]))
        if notes.prpsinfo_offset is not None:
            f.seek(notes.prpsinfo_offset)
            f.write(struct.pack("<i", pid))


def check_core(path: Path, child_pid: int) -> CoreNotes:
    notes = read_notes(path)
    if child_pid not in notes.prstatus_pids:
        raise CoreNotWritten(f"{path} does not describe the snapshot (pids "
                             f"{notes.prstatus_pids}, expected {child_pid})",
                             "another core matched core_pattern; look for it by hand",
                             stage="core")
    size = os.path.getsize(path)
    if size < notes.loads_end:
        raise CoreNotWritten(f"core {path} is truncated ({size} of {notes.loads_end} bytes)",
                             "the disk may be full: free space or choose -o DIR",
                             stage="dump")
    return notes
