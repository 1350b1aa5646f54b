"""Where the core writer's bytes go: a file with holes, or a stream (a pipe,
standard output, a zstandard frame) where a hole is written as zeros.

Every sink is written front to back, once: a compressed core never exists
uncompressed on disk.
"""

from __future__ import annotations

import os
import typing

_ZEROS = bytes(1 << 20)


class FileSink:
    """A regular file: holes are skipped over (a sparse file, as the kernel
    writes it), and the size set at the end, so a hole at the end counts."""

    def __init__(self, fd: int):
        self.fd = fd
        self.pos = 0

    @property
    def out_bytes(self) -> int:
        return self.pos

    def write(self, data) -> None:
        view = memoryview(data)
        while view:
            n = os.pwrite(self.fd, view, self.pos)
            self.pos += n
            view = view[n:]

    def skip(self, n: int) -> None:
        self.pos += n

    def finish(self) -> None:
        os.ftruncate(self.fd, self.pos)
        os.fsync(self.fd)


class StreamSink:
    """A stream: `out` has write(); holes are zeros (zstandard makes next to
    nothing of them)."""

    def __init__(self, out, closer=None, raw=None):
        self.out = out
        self.pos = 0
        self._closer = closer
        self._raw = raw  # the FdWriter under a compressor: what really went out

    @property
    def out_bytes(self) -> int:
        """Bytes written to the descriptor (compressed ones, under zstandard)."""
        return self._raw.count if self._raw is not None else self.pos

    def write(self, data) -> None:
        self.out.write(data)
        self.pos += len(data)

    def skip(self, n: int) -> None:
        while n > 0:
            chunk = min(n, len(_ZEROS))
            self.out.write(_ZEROS[:chunk] if chunk < len(_ZEROS) else _ZEROS)
            self.pos += chunk
            n -= chunk

    def finish(self) -> None:
        if self._closer is not None:
            self._closer()


class FdWriter:
    """write() to a descriptor, whole (a pipe takes writes in pieces)."""

    def __init__(self, fd: int):
        self.fd = fd
        self.count = 0

    def write(self, data) -> int:
        view = memoryview(data)
        total = len(view)
        while view:
            view = view[os.write(self.fd, view):]
        self.count += total
        return total


def zstd_missing() -> str:
    """Why compressing while writing cannot work here ("" when it can)."""
    try:
        import zstandard  # noqa: F401
    except ImportError:
        from snapcore.core.compress import zstandard_hint
        return f"snapcore's environment lacks zstandard, a dependency: {zstandard_hint()}"
    return ""


def zstd_sink(fd: int, level: int = 3) -> StreamSink:
    """Compress while writing into `fd` (a file or standard output)."""
    import zstandard
    raw = FdWriter(fd)
    # zstandard writes to anything with write(): FdWriter keeps every byte
    writer = zstandard.ZstdCompressor(level=level).stream_writer(
        typing.cast(typing.IO[bytes], raw), closefd=False)

    def close() -> None:
        writer.flush(zstandard.FLUSH_FRAME)
        writer.close()
    return StreamSink(writer, close, raw)
