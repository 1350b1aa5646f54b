"""Compress a stored core with zstandard, streaming, at idle priority; unpack
one, refusing a frame cut short."""

from __future__ import annotations

import os
import secrets
import sys
import sysconfig
from pathlib import Path

from snapcore.core import safefs
from snapcore.errors import OutputError, Stage


def zstandard_hint() -> str:
    """The command that puts zstandard where this snapcore runs: pip of
    snapcore's own virtualenv (install.sh's /opt/snapcore, or the user's);
    apt for a distribution's Python, where PEP 668 refuses pip."""
    managed = os.path.exists(os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED"))
    if sys.prefix == sys.base_prefix and managed:
        return "install it: apt-get install python3-zstandard"
    return f"install it: {sys.executable} -m pip install zstandard"


def _zstandard():
    try:
        import zstandard
    except ImportError:
        raise OutputError("snapcore's environment lacks zstandard, a dependency",
                          zstandard_hint(), stage=Stage.COMPRESS) from None
    return zstandard


def compress(core: Path) -> Path:
    """Write CORE.zst next to CORE and remove CORE once the copy is complete.

    The output directory may be a sticky one others write too: CORE is opened
    without following a name and must be snapcore's own, the partial file is
    new (O_EXCL, a name nobody can guess), and names are only ever changed
    relative to the directory's descriptor (core/safefs.py)."""
    zstandard = _zstandard()
    dest = core.with_name(core.name + ".zst")
    partial = f".{dest.name}.{secrets.token_hex(4)}.part"
    dir_fd = os.open(core.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    policy, nice = os.sched_getscheduler(0), os.getpriority(os.PRIO_PROCESS, 0)
    made = False
    try:
        src = os.fdopen(safefs.open_own(dir_fd, core.name, core, os.O_RDONLY,
                                        create_it=False), "rb")
        with src, os.fdopen(safefs.create(dir_fd, partial, core.with_name(partial)),
                            "wb") as dst:
            made = True
            # The machine's work comes first: compress only with what is left over.
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
            zstandard.ZstdCompressor(level=3).copy_stream(src, dst)
            dst.flush()
            os.fsync(dst.fileno())
        os.rename(partial, dest.name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        os.unlink(core.name, dir_fd=dir_fd)
    except OSError as exc:
        if made:
            _unlink(partial, dir_fd)
        raise OutputError(f"cannot compress {core}: {exc.strerror}",
                          "the uncompressed core is kept", stage=Stage.COMPRESS) from None
    finally:
        os.close(dir_fd)
        os.sched_setscheduler(0, policy, os.sched_param(0))
        os.setpriority(os.PRIO_PROCESS, 0, nice)
    return dest


def _unlink(name: str, dir_fd: int) -> None:
    try:
        os.unlink(name, dir_fd=dir_fd)
    except OSError:
        pass


def decompress_to(core: Path, dest: Path) -> None:
    """Unpack CORE into DEST, a new file (never through a name made before).
    A core whose zstandard frame ends early (a truncated copy) is an
    OutputError, and DEST is removed."""
    zstandard = _zstandard()
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o600)
    try:
        with open(core, "rb") as src, os.fdopen(fd, "wb") as dst:
            complete = _unpack(zstandard, src, dst)
    except (OSError, zstandard.ZstdError) as exc:
        dest.unlink(missing_ok=True)
        why = exc.strerror if isinstance(exc, OSError) else str(exc)
        raise OutputError(f"cannot unpack {core.name}: {why}", "the core is damaged: take "
                          "another snapshot", stage=Stage.COMPRESS) from None
    if not complete:
        dest.unlink(missing_ok=True)
        raise OutputError(f"{core.name} is truncated: its zstandard frame ends early",
                          "the core is incomplete (cut short when copied?): take another "
                          "snapshot", stage=Stage.COMPRESS)


def _unpack(zstandard, src, dst) -> bool:
    """Copy every frame of src, unpacked, to dst; whether the last one ended."""
    dobj, ended = zstandard.ZstdDecompressor().decompressobj(), False
    while chunk := src.read(1 << 20):
        while chunk:
            if dobj.eof:  # another frame follows
                dobj = zstandard.ZstdDecompressor().decompressobj()
            dst.write(dobj.decompress(chunk))
            chunk = dobj.unused_data if dobj.eof else b""
        ended = dobj.eof
    return ended


def head(core: Path, size: int) -> bytes:
    """The first SIZE bytes of CORE as gdb would read it (unpacked when it is a
    .zst): enough for its headers and notes without unpacking the memory."""
    with open(core, "rb") as f:
        if not core.name.endswith(".zst"):
            return f.read(size)
        zstandard = _zstandard()
        try:
            with zstandard.ZstdDecompressor().stream_reader(f, read_across_frames=True) as r:
                out = b""
                while len(out) < size and (chunk := r.read(size - len(out))):
                    out += chunk
        except zstandard.ZstdError as exc:
            raise OutputError(f"cannot unpack {core.name}: {exc}",
                              "the core is damaged: take another snapshot",
                              stage=Stage.COMPRESS) from None
    return out
