"""Who writes the core: the kernel (the child takes SIGABRT and the kernel
writes it where core_pattern says) or snapcore's own writer (it reads the
stopped child and writes the core itself: engine/dump_snapcore.py).

`auto` lets the kernel write where core_pattern writes a file and the
process's limits let it, unless the core is to be compressed, the kernel's
dump would fill never-written shared memory (core/dumprules.py), or the
process's view of the files has no writable place to stage the core in (a
distroless image); everywhere else snapcore writes.  A snapshot is not
a crash: snapcore's writer, like gdb's gcore, ignores RLIMIT_CORE, and never
hands a snapshot to a crash handler.
"""

from __future__ import annotations

import os
from pathlib import Path

from snapcore import units
from snapcore.core import core_pattern, staging
from snapcore.core.dumprules import CoreSize
from snapcore.engine.request import Request
from snapcore.engine.verdicts import OK, REFUSE, Preflight
from snapcore.errors import OutputError

UNLIMITED = 1 << 63
# Never-written shared memory the kernel's dump would allocate (dumprules:
# shared_unwritten) that is worth choosing the other writer for, and warning
# about: a few pages are not.
SHARED_FILL_WORTH = 1 << 20


def choose_writer(pre: Preflight, opts: Request, pattern: core_pattern.CorePattern,
                  sizes: CoreSize | None) -> None:
    """Sets pre.plan.writer and its reason, and adds the `writer` verdict."""
    t = pre.plan.target
    asked = opts.writer
    # RLIMIT_CORE counts the file's size, holes included (dump_skip).
    size = sizes.apparent if sizes else 0
    if opts.to_stdout:
        if asked == "kernel":
            pre.add("writer", REFUSE, "the kernel writes cores only into files or to a "
                    "core_pattern pipe, never to standard output",
                    "use snapcore's writer (the default) or an output directory",
                    setting="writer")
            return
        _chosen(pre, "snapcore", "the core goes to standard output")
    elif asked != "auto":
        _chosen(pre, asked, "asked for" + (f" (core_pattern pipes to {pattern.handler})"
                                          if asked == "kernel" and pattern.kind == "pipe"
                                          else ""))
    elif pattern.kind == "pipe":
        _chosen(pre, "snapcore", f"core_pattern pipes cores to {pattern.handler}: the kernel "
                "would hand the snapshot to that crash handler (and its size limits)")
    elif t.core_hard == 0:
        _chosen(pre, "snapcore", f"the hard RLIMIT_CORE of {t.pid} is 0: the kernel would "
                "write nothing (a snapshot is not a crash; gcore ignores the limit too)")
    elif t.core_hard < UNLIMITED and size > t.core_hard:
        _chosen(pre, "snapcore", f"the hard RLIMIT_CORE of {t.pid} "
                f"({units.human(t.core_hard)}) is below the core's size "
                f"(about {units.human(size)}): the kernel would cut it short")
    elif pattern.kind == "absolute" and not os.path.isdir(
            pre.plan.facts.root + os.path.dirname(pattern.pattern)):
        _chosen(pre, "snapcore", f"core_pattern writes to {os.path.dirname(pattern.pattern)}, "
                "which does not exist for the process")
    elif pattern.kind == "relative" and (nowhere := _no_staging(pre, opts)):
        _chosen(pre, "snapcore", f"the kernel's core would need a writable place in the "
                f"process's view of the files ({nowhere}); snapcore's writer writes straight "
                "into the output directory")
    elif sizes and sizes.shared_unwritten >= SHARED_FILL_WORTH:
        _chosen(pre, "snapcore", f"the kernel's dump would allocate the "
                f"{units.human(sizes.shared_unwritten)} of shared memory the process never "
                "wrote, in its own shared memory, for good; snapcore's writer leaves them "
                "holes")
    elif opts.compress:
        # Measured (docs/benchmarks.md): compressing while writing, in the
        # thread the controller steps up, beats the kernel's raw core then an
        # idle compression 2.5 to 25 times, and no raw core touches the disk.
        _chosen(pre, "snapcore", "the core is to be compressed: snapcore's writer "
                "compresses while it writes, and the raw core never touches the disk")
    else:
        _chosen(pre, "kernel", f"core_pattern writes a file ({pattern.pattern}) and the "
                "limits let the kernel write it")
    pre.add("writer", OK, f"{pre.plan.writer}'s writer: {pre.plan.writer_reason}")


def _no_staging(pre: Preflight, opts: Request) -> str:
    """Why the kernel's core has nowhere to be staged ("" when it has):
    a read-only or absent /var/tmp and /tmp in the target's view, say a
    distroless image (core/staging.py: staging_base)."""
    t = pre.plan.target
    try:
        staging.staging_base(Path(opts.output_dir).absolute(), t.uid, pre.plan.facts.root)
    except OutputError as exc:
        return exc.message
    return ""


def _chosen(pre: Preflight, writer: str, why: str) -> None:
    pre.plan.writer, pre.plan.writer_reason = writer, why


def disk_need(pre: Preflight, opts: Request, size: int) -> tuple[int, str]:
    """The room the disk check asks for: the core's estimate, or with
    --compress and snapcore's writer (which never writes the raw core) the
    estimate divided by the ratio the operator expects, when given."""
    if opts.compress and pre.plan.writer == "snapcore" and opts.compress_ratio > 1:
        return int(size / opts.compress_ratio), (f" (compressed, assuming "
                                                  f"{opts.compress_ratio:g}:1)")
    return size, ""
