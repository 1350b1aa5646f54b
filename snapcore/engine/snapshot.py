"""The engine's entry point: take(pid) -> Snapshot.

One snapcore per target, the preflight's checks, the output and staging
directories and the rate limit around the phases (sequence.py), then the
record and the core's final name.  The engine never prints; it returns a
`Snapshot` or raises a SnapcoreError.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import socket
from dataclasses import replace
from pathlib import Path

from snapcore.core import elf, placement, publish, records
from snapcore.core import staging as staging_dirs
from snapcore.core.compress import compress
from snapcore.core.sink import zstd_missing
from snapcore.engine import interrupts, preflight, sequence
from snapcore.engine.checks_process import exec_race
from snapcore.engine.ratelimit import RateLimiter, program
from snapcore.engine.result import DumpLimits, Output, Snapshot
from snapcore.errors import (AlreadyTraced, NoSuchProcess, OutputError, PermissionDenied,
                             SnapcoreError, Stage)
from snapcore.linux import stops
from snapcore.linux.procfs import open_exe, reading, start_time


def take(pid: int, opts: preflight.Options, *, threads: str = "all",
         force: tuple[str, ...] = (), limits: DumpLimits | None = None,
         reason: str = "", compressed: bool = False, stream: int | None = None,
         keep_exe: bool = False, trigger: str = "") -> Snapshot:
    """Snapshot process `pid` into `opts.output_dir`; the target keeps running.

    Every preflight check runs first; a refusal raises unless its name is in
    `force` (and it may be forced).  threads="all" holds every thread for the
    fork and puts each in the core; "main" holds and dumps the main thread only.
    The stored core gets its record (records.write_sidecar) with `reason` (the
    operator's) and `trigger` (what fired it: watch's condition);
    `compressed` turns it into CORE.zst (snapcore's writer compresses while
    writing).  With `opts.to_stdout` the core goes to descriptor `stream`
    instead, and has no record.  `keep_exe`: the Snapshot's exe_fd stays open
    on the target's executable (for gdb; the caller closes it).
    """
    with interrupts.engage(), exclusive(pid):
        exe_fd = open_exe(pid)
        try:
            snap = _take_exclusive(pid, opts, threads=threads, force=force, limits=limits,
                                   reason=(reason, trigger), compressed=compressed,
                                   exe_fd=exe_fd, stream=stream)
        except BaseException:
            if exe_fd is not None:
                os.close(exe_fd)
            raise
    if exe_fd is not None and not keep_exe:
        os.close(exe_fd)
    else:
        snap.exe_fd = exe_fd
    return snap


def _take_exclusive(pid: int, opts: preflight.Options, *, threads: str,
                    force: tuple[str, ...], limits: DumpLimits | None,
                    reason: tuple[str, str],
                    compressed: bool, exe_fd: int | None, stream: int | None) -> Snapshot:
    pre = preflight.run(pid, opts)
    refusals = pre.refusals(force)
    if refusals:
        raise preflight.Refused(refusals[0], pid)
    target = pre.target
    if compressed and pre.writer == "snapcore" and zstd_missing():
        raise OutputError(zstd_missing(), "snapshot without --compress", pid=pid,
                          stage=Stage.PREFLIGHT)
    output_dir = placement.prepare_output_dir(opts.output_dir)
    limiter = RateLimiter(output_dir, opts.max_per_hour, opts.clock)
    key = program(target)
    with limiter.exclusive(key, pid):
        root = pre.facts.root  # the target's view the staging check judged
        staging_dirs.remove_stale_staging(output_dir, root)
        publish.finish_interrupted(output_dir)
        staging = (staging_dirs.make_staging_dir(output_dir, target.uid, target.gid, root)
                   if pre.core_pattern.kind == "relative" and pre.writer == "kernel"
                   else None)
        output = Output(output_dir, stream if opts.to_stdout else None, compressed)
        try:
            with stops.signals_held([signal.SIGCHLD]):
                limits = replace(limits or DumpLimits(), expected=pre.core_estimate)
                snap = _take(pre, output_dir, staging, threads == "all", opts.timeout,
                             allow_undumpable="dumpable" in force, dump_limits=limits,
                             root=root, output=output)
        except SnapcoreError as exc:
            exc.pid = exc.pid if exc.pid is not None else pid
            raise
        finally:
            if staging is not None:
                staging_dirs.remove_staging(staging)
        limiter.record(key)
    snap.checks = pre.as_dicts()
    snap.program = key
    snap.core_estimate, snap.core_apparent = pre.core_estimate, pre.core_apparent
    snap.regions_missing = pre.regions_missing
    if exe_fd is not None:  # the file the target runs, not the one its name names here
        snap.exe_build_id = elf.build_id(f"/proc/self/fd/{exe_fd}")
    if snap.core_path is not None and not snap.streamed:
        _publish(snap, output_dir, reason, compressed)
    return snap


def _publish(snap: Snapshot, output_dir: Path, reason: tuple[str, str],
             compressed: bool) -> None:
    """Compress the stored core if asked, write its record, then give the core
    its name: a core is never seen without its record (list and prune would
    not know it)."""
    partial = snap.core_path
    if compressed and not partial.name.endswith(".zst"):  # the kernel's raw core
        try:
            partial = compress(partial)
        except OutputError as exc:
            snap.notes.append(f"not compressed: {exc.one_line()}")
    snap.core_path = output_dir / publish.final_name(partial.name)
    try:
        stat = partial.stat()
    except FileNotFoundError:
        raise publish.removed(partial) from None
    snap.core_size, snap.core_allocated = stat.st_size, stat.st_blocks * 512
    snap.sidecar_path = records.write_sidecar(snap, *reason)
    try:
        publish.publish(partial, snap.core_path)
    except OutputError:
        snap.sidecar_path.unlink(missing_ok=True)  # a record of no core
        raise


def _take(pre: preflight.Preflight, output_dir: Path, staging: Path | None,
          all_threads: bool, stop_timeout: float, *, allow_undumpable: bool,
          dump_limits: DumpLimits, root: str, output: Output) -> Snapshot:
    pid = pre.target.pid
    # Pin the identity before the window: a pidfd opened now refers to this
    # process for good, and the start time says the pid was not reused since
    # preflight.  Inside the window one pidfd_send_signal(0) tells it is alive.
    with reading(pid, Stage.PREFLIGHT):
        pidfd = os.pidfd_open(pid)
    try:
        if start_time(pid) != pre.target.start_time:
            raise NoSuchProcess(f"process {pid} exited and its pid was reused",
                                "check the pid again", pid=pid, stage=Stage.PREFLIGHT)
        return sequence.fork_and_dump(pre, output_dir, staging, all_threads, stop_timeout,
                                      allow_undumpable, dump_limits, pidfd, root, output)
    except PermissionDenied as exc:  # an exec while snapcore attached, it may be
        raise exec_race(pre, exc, Stage.CAPTURE) from None
    finally:
        os.close(pidfd)


@contextlib.contextmanager
def exclusive(pid: int):
    """One snapcore at a time per target, whatever its output directory: an
    abstract unix socket named after the target, which the kernel releases
    when snapcore exits, however it exits (no file to go stale)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(f"\0snapcore-target-{pid}")
    except OSError as exc:
        sock.close()
        if exc.errno != errno.EADDRINUSE:
            raise
        raise AlreadyTraced(f"process {pid} is busy: another snapcore is snapshotting it",
                            "wait for it to finish", pid=pid, stage=Stage.PREFLIGHT) from None
    try:
        yield
    finally:
        sock.close()
