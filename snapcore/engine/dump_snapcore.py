"""The dump phase with snapcore's own writer: the child stays stopped while a
thread of snapcore, at idle priority, reads its memory and writes its core.

Nothing of the child runs: no recreated threads, no SIGABRT, no crash
handler or core_pattern, no line in the kernel's log.  The notes come from
what the window captured of each target thread (core/corenotes.py).
"""

from __future__ import annotations

import errno
import os
import signal
import threading
import time
from dataclasses import replace

from snapcore.core import corenotes, placement, store
from snapcore.core import writer as corewriter
from snapcore.core.elfcore import Layout
from snapcore.core.sink import FdWriter, FileSink, StreamSink, zstd_sink
from snapcore.engine import child as childmod
from snapcore.engine import dump, phase
from snapcore.engine.controller import Controller
from snapcore.engine.kernelerrors import decided
from snapcore.engine.phase import Dumped, Run
from snapcore.errors import CoreNotWritten, NoSuchProcess, OutputError, Stage
from snapcore.linux import maps, priority, taskinfo
from snapcore.linux.inject import HeldThread
from snapcore.linux.procfs import thread_name


def gather(pid: int, held: list[HeldThread], target_ns: dict[int, int | None]):
    """Right after the window: each held thread's state for its notes (in
    `held`'s order: the main thread first, gdb opens a core on its first
    thread), and the process's ids and times (None when the target exited
    right after the fork: its child's are taken then, see _facts)."""
    states = []
    for thread in held:
        times = taskinfo.thread_facts(pid, thread.tid)
        states.append(corenotes.ThreadState(
            tid=target_ns.get(thread.tid) or thread.tid, regs=bytes(thread.regs),
            xstate=thread.xstate, sigmask=thread.sigmask, regsets=thread.regsets,
            sigpend=times.sigpend if times else 0, utime=times.utime if times else 0,
            stime=times.stime if times else 0))
    facts: taskinfo.ProcessFacts | None
    try:
        facts = taskinfo.process_facts(pid)
    except OSError:
        facts = None
    return states, facts


def _facts(kid, facts: taskinfo.ProcessFacts | None, states) -> taskinfo.ProcessFacts:
    """The target's facts, or for a target gone right after the fork its
    child's (the same process group, session, uid, nice and memory layout;
    its parent may be another) with the target's pid as its namespace named
    it, from the first thread's note: the main thread's."""
    if facts is not None:
        return facts
    try:
        return replace(taskinfo.process_facts(kid.pid), pid=states[0].tid, cutime=0, cstime=0)
    except OSError:
        raise NoSuchProcess(f"snapshot child {kid.pid} is gone", pid=kid.pid) from None


def process_state(child: int, name: str, facts: taskinfo.ProcessFacts, mem: int,
                  vmas: list[maps.Vma], root: str) -> corenotes.ProcessState:
    try:
        args = corewriter.read_memory(mem, max(0, facts.arg_end - facts.arg_start),
                                      facts.arg_start)
    except OSError:
        args = b""
    return corenotes.ProcessState(
        pid=facts.pid, ppid=facts.ppid, pgrp=facts.pgrp, sid=facts.sid, uid=facts.uid,
        gid=facts.gid, comm=name, args=args, nice=facts.nice, flags=facts.flags,
        hz=os.sysconf("SC_CLK_TCK"), cutime=facts.cutime, cstime=facts.cstime,
        signo=int(signal.SIGABRT), sender_pid=facts.sender_pid, sender_uid=os.getuid(),
        auxv=taskinfo.auxv(child), files=corewriter.file_entries(vmas, root))


def plan(child: int, name: str, states, facts, mem: int, pagemap: int) -> Layout:
    """The whole core's layout, before a byte of memory is copied."""
    vmas = maps.read_smaps(child)
    try:
        root = os.readlink(f"/proc/{child}/root")
    except OSError:
        root = "/"
    loads = corewriter.plan_loads(child, vmas, mem, pagemap)
    notes = corenotes.all_notes(process_state(child, name, facts, mem, vmas, root), states)
    return Layout(loads, notes)


def open_sink(run: Run, name: str):
    """The sink and the file it writes (None for a stream): a file is made
    new by core/store.py under the hidden name that publish.publish later
    turns into its own."""
    request = run.request
    sink: StreamSink | FileSink
    if request.stream is not None:
        sink = zstd_sink(request.stream) if request.compress else \
            StreamSink(FdWriter(request.stream))
        return sink, None, -1
    fd, path = store.create_partial(run.output_dir, name + (".zst" if request.compress else ""))
    sink = zstd_sink(fd) if request.compress else FileSink(fd)
    return sink, path, fd


WRITER_STOP = 2.0  # seconds to wait for the writer to leave its read (a stalled pipe: not)


def run_writer(run: Run, layout: Layout, mem: int, sink) -> tuple[float, Controller]:
    """Write in a thread of snapcore's own that puts itself at the idle level
    (SCHED_IDLE, I/O class idle); meanwhile the dump's controller steps that
    thread up, by its id, and abandons the dump, exactly as it does for the
    kernel's dump in the child."""
    progress = corewriter.Progress(total=layout.data_bytes())
    started = threading.Event()
    outcome: dict = {}

    def work() -> None:
        # SIGCHLD stays blocked here, as in every thread of snapcore (cli/app.py):
        # a thread that took it would steal the waits' notifications.
        outcome["tid"] = threading.get_native_id()
        try:
            priority.apply(outcome["tid"], priority.IDLE)
        except OSError as exc:
            outcome["failed"] = f"the writer stays at snapcore's priority: {exc.strerror}"
        started.set()
        try:
            corewriter.write(layout, mem, sink, progress)
        except BaseException as exc:  # handed to the waiting thread
            outcome["error"] = exc

    thread = threading.Thread(target=work, name="snapcore-writer", daemon=True)
    controller = phase.controller(run, lambda: progress.written, progress.total)
    kid = run.kid
    t0 = time.monotonic()
    thread.start()
    try:
        started.wait()
        if "failed" in outcome:
            controller.notes.append(outcome["failed"])
        controller.start()
        while thread.is_alive():
            # Woken by SIGCHLD too: the fork thread's job-control stops are
            # answered at once (forkthread.service).
            signal.sigtimedwait([signal.SIGCHLD], controller.period)
            kid.check_parent()
            if thread.is_alive() and controller.tick([outcome["tid"]]):
                # The writer, raised by the controller, leaves its read first: a
                # read of /proc/CHILD/mem holds the child's memory (mm_users), so
                # a child killed meanwhile would leave the cgroup before its
                # memory is freed, and an OOM then would find only the target.
                progress.cancelled = True
                thread.join(WRITER_STOP)
                dump.kill(kid)  # its copies are what the memory rule is about
    finally:
        progress.cancelled = True  # an interrupt: the writer stops at its next block
        thread.join()
    if run.request.progress is not None:
        run.request.progress(progress.written, progress.total)
    error = outcome.get("error")
    if error is not None and not controller.failure:
        _raise(error)
    return time.monotonic() - t0, controller


def _raise(error: BaseException) -> None:
    if isinstance(error, corewriter.ProcessGone):
        raise CoreNotWritten("the snapshot child was killed while its core was written",
                             "no core was written; the target is unharmed",
                             stage=Stage.DUMP) from None
    if isinstance(error, BrokenPipeError):
        raise OutputError("the reader of standard output went away before the whole core "
                          "was written (broken pipe)", "no core was kept; the target is "
                          "unharmed: let the reader read to the end, or write the core "
                          "into a directory", stage=Stage.DUMP, setting="output_dir") from None
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        # Exit 8 as with the kernel's writer: the snapshot went ahead and no
        # core came of it (10 is the refusal before the target is touched).
        raise CoreNotWritten(f"no core was written: the disk filled up while it was "
                             f"written ({error.strerror})", "free space, or choose another "
                             "output directory", stage=Stage.DUMP,
                             setting="output_dir") from None
    if isinstance(error, OSError):
        raise OutputError(f"writing the core failed: {error.strerror}",
                          "check the output directory's filesystem", stage=Stage.DUMP,
                          setting="output_dir") from None
    raise error


@decided
def dump_and_store(run: Run) -> Dumped:
    """The phase after the window with snapcore's writer: the child made
    harmless, its core written, the child killed and reaped as for the kernel's
    dump.  The core is left under its hidden name for snapshot.py to publish."""
    target, forked, kid = run.plan.target, run.forked, run.kid
    held = sorted([forked.runner, *forked.others], key=lambda t: (t.tid != target.pid, t.tid))
    states, facts = gather(target.pid, held, run.target_ns)
    kid.notes = []  # the window's notes are added once, below
    path, fd = None, -1
    try:
        with phase.child_phase(run):
            childmod.prepare_still(kid, run.plan.syscall_at,
                                   allow_undumpable="dumpable" in run.request.force,
                                   deadline=time.monotonic() + 30)
            facts = _facts(kid, facts, states)
            mem, pagemap = corewriter.open_memory(kid.pid)
            try:
                layout = plan(kid.pid, target.name, states, facts, mem, pagemap)
                sink, path, fd = open_sink(run, placement.core_name(target.name, target.pid,
                                                                    run.taken_at))
                seconds, controller = run_writer(run, layout, mem, sink)
            finally:
                for d in (mem, pagemap):
                    os.close(d)
            controller.raise_failure(target.pid, "the writer was stopped")
    except BaseException:
        if path is not None:
            path.unlink(missing_ok=True)
        raise
    finally:
        if fd >= 0:
            os.close(fd)
    return Dumped(
        core_path=path, core_size=sink.out_bytes, dump_seconds=seconds, threads=len(states),
        thread_map=[{"tid": t.tid, "name": thread_name(target.pid, t.tid), "core_lwp": s.tid,
                     "child_tid": None} for t, s in zip(held, states)],
        notes=kid.notes + forked.notes + controller.notes,
        priority_steps=controller.steps, streamed=run.request.stream is not None)
