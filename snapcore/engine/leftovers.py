"""What a snapshot can leave in its target, and the next snapshot's clean-up.

- The fork thread's code page, when snapcore was killed before it could
  unmap it (engine/forkthread.py).  Recognised by what it is: an anonymous,
  private, read-and-execute mapping of one page holding exactly the page
  snapcore writes.  The next snapshot's window unmaps it.
- The snapshot child and the sentinel as zombies, when the target exec'd
  during the dump: exec ends the fork thread (kernel/exec.c: de_thread), and
  its children pass to the thread that exec'd, keeping exit signal 0 (no
  SIGCHLD; only a __WALL wait sees them).  The snapcore that made them
  records each (its id in the target's namespace and its start time) in
  RECORDS; the next snapshot of that process reaps each still there.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os

from snapcore.engine import calls, forkthread
from snapcore.linux import arch
from snapcore.linux.inject import HeldThread
from snapcore.linux.ptrace import PtraceFailed
from snapcore.linux.procfs import ns_tid, start_time

RECORDS = "/run/snapcore/leftovers.json"  # root's; a tmpfs: gone with the pids at boot


def stale_pages(pid: int, maps) -> list[int]:
    """Code pages a killed snapcore left in the process (see above); `maps`:
    its mappings (linux/maps.read_smaps)."""
    wanted = forkthread.page_contents()  # the rest holds addresses: its own, the runner's
    found: list[int] = []
    candidates = [m for m in maps if m.perms == "r-xp" and not m.inode and not m.path
                  and m.size == arch.PAGE_SIZE]
    if not candidates:
        return found
    try:
        with open(f"/proc/{pid}/mem", "rb", buffering=0) as mem:
            for m in candidates:
                try:
                    mem.seek(m.start)
                    if mem.read(len(wanted)) == wanted:
                        found.append(m.start)
                except OSError:
                    continue
    except OSError:
        pass
    return found


def unmap_pages(runner: HeldThread, at: int, guard, pages: list[int], deadline: float,
                notes: list[str], stack=None) -> None:
    for page in pages:
        if not runner.free:
            return  # the next snapshot, then
        if runner.inject(at, calls.UNMAP_PAGE.nr, *calls.UNMAP_PAGE.bind(page),
                         deadline=deadline, guard=guard, landing=stack)[0] == 0:
            notes.append(f"unmapped the page {page:#x} a snapcore killed mid-snapshot left")


def record(pid: int, tids: list[int]) -> list[str]:
    """Record tasks of snapcore's left as zombies of process `pid`; returns notes."""
    entries = []
    for tid in tids:
        try:
            entries.append({"ns_pid": ns_tid(tid, tid), "start": start_time(tid)})
        except OSError:
            continue  # reaped meanwhile, by the process itself
    if not entries:
        return []
    try:
        with _records() as state:
            state.setdefault(_key(pid), []).extend(entries)
    except OSError as exc:
        return [f"could not record the zombies left in the process ({exc.strerror})"]
    return [f"the process exec'd during the snapshot: {len(entries)} zombie(s) of "
            "snapcore's stay in it (exit signal 0: invisible to its wait()), until its next "
            "snapshot reaps them"]


def reap_recorded(pid: int, runner: HeldThread, at: int, guard, deadline: float,
                  notes: list[str], stack=None) -> None:
    """Inside a window: reap the recorded zombies of `pid` that are still its own."""
    if not os.path.exists(RECORDS):
        return
    try:
        with _records() as state:
            for entry in state.pop(_key(pid), []):
                if runner.free and _still_there(pid, entry):
                    reap = calls.REAP_RECORDED
                    got, _ = runner.inject(at, reap.nr, *reap.bind(entry["ns_pid"]),
                                           deadline=deadline, guard=guard, landing=stack)
                    if got == entry["ns_pid"]:
                        notes.append(f"reaped task {got}, left by an earlier snapshot")
    except PtraceFailed:
        raise  # the runner's, not the records': the window's to answer
    except (OSError, ValueError):
        return


def _still_there(pid: int, entry: dict) -> bool:
    """A zombie child of `pid` with the recorded namespace id and start time."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                children = [int(c) for c in f.read().split()]
        except OSError:
            continue
        for child in children:
            try:
                if ns_tid(child, child) == entry["ns_pid"] and \
                        start_time(child) == entry["start"]:
                    return True
            except OSError:
                continue
    return False


def _key(pid: int) -> str:
    return f"{pid}:{start_time(pid)}"


@contextlib.contextmanager
def _records():
    """The records, read and written under an exclusive lock.  The directory
    is root's own (0700, never a link): nobody else may plant a file there."""
    os.makedirs(os.path.dirname(RECORDS), mode=0o700, exist_ok=True)
    fd = os.open(RECORDS, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "r+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        text = f.read()
        state = json.loads(text) if text.strip() else {}
        if not isinstance(state, dict):
            state = {}
        yield state
        f.seek(0)
        f.truncate()
        f.write(json.dumps(state))
