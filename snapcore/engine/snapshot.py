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
from datetime import datetime, timezone
from pathlib import Path

from snapcore.core import elf, placement, publish, records
from snapcore.core import staging as staging_dirs
from snapcore.core.compress import compress
from snapcore.core.sink import zstd_missing
from snapcore.engine import interrupts, preflight, sequence
from snapcore.engine.checks_process import exec_race
from snapcore.engine.ratelimit import RateLimiter, program
from snapcore.engine.controller import MemoryWatch
from snapcore.engine.kernelerrors import decided
from snapcore.engine.phase import Dumped, Job
from snapcore.engine.request import Request
from snapcore.engine.result import Snapshot
from snapcore.errors import (SETTING, AlreadyTraced, NoSuchProcess, OutputError,
                             PermissionDenied, SnapcoreError, Stage)
from snapcore.linux import stops
from snapcore.linux.procfs import open_exe, reading, start_time


def take(pid: int, request: Request) -> Snapshot:
    """Snapshot process `pid` as `request` says; the target keeps running.

    Every preflight check runs first; a refusal raises unless its name is in
    request.force (and it may be forced).  threads "all" holds every thread
    for the fork and puts each in the core; "main" holds and dumps the main
    thread only.  The stored core gets its record (records.write_sidecar)
    with the request's reason and trigger; `compress` turns it into CORE.zst
    (snapcore's writer compresses while writing).  With a `stream` the core
    goes to that descriptor instead, and has no record.  With `keep_exe` the
    Snapshot's exe_fd stays open on the target's executable (for gdb; the
    caller closes it).
    """
    with interrupts.engage(), exclusive(pid):
        exe_fd = open_exe(pid)
        try:
            snap = _take_exclusive(pid, request, exe_fd)
        except BaseException:
            if exe_fd is not None:
                os.close(exe_fd)
            raise
    if exe_fd is not None and not request.keep_exe:
        os.close(exe_fd)
    else:
        snap.exe_fd = exe_fd
    return snap


def _take_exclusive(pid: int, request: Request, exe_fd: int | None) -> Snapshot:
    pre = preflight.run(pid, request)
    refusals = pre.refusals(request.force)
    if refusals:
        raise preflight.Refused(refusals[0], pid)
    plan = pre.plan
    if request.compress and plan.writer == "snapcore" and zstd_missing():
        raise OutputError(zstd_missing(), f"snapshot without {SETTING}", pid=pid,
                          stage=Stage.PREFLIGHT, setting="compress")
    output_dir = placement.prepare_output_dir(request.output_dir)
    limiter = RateLimiter(output_dir, request.max_per_hour, request.clock)
    key = program(plan.target, plan.facts.cgroups)
    with limiter.exclusive(key, pid):
        root = plan.facts.root  # the target's view the staging check judged
        staging_dirs.remove_stale_staging(output_dir, root)
        publish.finish_interrupted(output_dir)
        staging = (staging_dirs.make_staging_dir(output_dir, plan.target.uid,
                                                 plan.target.gid, root)
                   if plan.core_pattern.kind == "relative" and plan.writer == "kernel"
                   else None)
        job = Job(plan, request, output_dir, staging, root, datetime.now(timezone.utc),
                  MemoryWatch(plan.memory_room, plan.memory_limit_file,
                              ceiling=plan.memory_worst))
        try:
            with stops.signals_held([signal.SIGCHLD]):
                dumped = _take(job)
        except SnapcoreError as exc:
            exc.pid = exc.pid if exc.pid is not None else pid
            raise
        finally:
            if staging is not None:
                staging_dirs.remove_staging(staging)
        limiter.record(key)
    snap = _snapshot(job, dumped, pre.as_dicts(), key, exe_fd)
    if snap.core_path is not None and not snap.streamed:
        _publish(snap, snap.core_path, output_dir, request)
    return snap


def _snapshot(job: Job, dumped: Dumped, checks: list[dict], key: str,
              exe_fd: int | None) -> Snapshot:
    """The Snapshot, made once from what the preflight planned and the writer made."""
    plan = job.plan
    return Snapshot(
        target=plan.target, core_path=dumped.core_path, core_size=dumped.core_size,
        pause=dumped.pause, reap_pause=0.0, dump_seconds=dumped.dump_seconds,
        threads=dumped.threads, thread_map=dumped.thread_map, child_pid=dumped.child_pid,
        core_pattern=plan.core_pattern, taken_at=job.taken_at, notes=dumped.notes,
        checks=checks, priority_steps=dumped.priority_steps,
        core_estimate=plan.core_estimate, core_apparent=plan.core_apparent,
        regions_missing=plan.regions_missing, writer=plan.writer,
        writer_reason=plan.writer_reason, streamed=dumped.streamed, program=key,
        # the file the target runs, not the one its name names here
        exe_build_id=elf.build_id(f"/proc/self/fd/{exe_fd}") if exe_fd is not None else "")


def _publish(snap: Snapshot, partial: Path, output_dir: Path, request: Request) -> None:
    """Compress the stored core (`partial`, under its hidden name) if asked,
    write its record, then give the core its name: a core is never seen
    without its record (list and prune would not know it)."""
    if request.compress and not partial.name.endswith(".zst"):  # the kernel's raw core
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
    snap.sidecar_path = records.write_sidecar(snap, request.reason, request.trigger)
    try:
        publish.publish(partial, snap.core_path)
    except OutputError:
        snap.sidecar_path.unlink(missing_ok=True)  # a record of no core
        raise


def _take(job: Job) -> Dumped:
    pid = job.plan.target.pid
    # Pin the identity before the window: a pidfd opened now refers to this
    # process for good, and the start time says the pid was not reused since
    # preflight.  Inside the window one pidfd_send_signal(0) tells it is alive.
    with reading(pid, Stage.PREFLIGHT):
        pidfd = os.pidfd_open(pid)
    try:
        if start_time(pid) != job.plan.target.start_time:
            raise NoSuchProcess(f"process {pid} exited and its pid was reused",
                                "check the pid again", pid=pid, stage=Stage.PREFLIGHT)
        with decided:  # each phase decides already: none may leave one undecided
            return sequence.fork_and_dump(job, pidfd)
    except PermissionDenied as exc:  # an exec while snapcore attached, it may be
        raise exec_race(job.plan, exc, Stage.CAPTURE) from None
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
