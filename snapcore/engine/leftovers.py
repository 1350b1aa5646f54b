"""What a snapcore killed during a fork leaves in the target: its intermediate
task, a zombie with exit signal 0 (EXITKILL killed it before it could be
reaped).  The next snapshot's window recognises and reaps it.
"""

from __future__ import annotations

import os

from snapcore.linux import arch, stops
from snapcore.linux.inject import HeldThread

# The intermediate task's name (comm): how a zombie of it is recognised.
INTERMEDIATE_NAME = "snapcore-fork"
# wait4 options for reaping from inside the target: never blocks it, and
# __WALL sees children whose exit signal is not SIGCHLD.
REAP_OPTIONS = stops.WALL | os.WNOHANG


def leftovers(pid: int) -> list[int]:
    """Zombie intermediate tasks of the target, left by a snapcore killed during
    the fork (EXITKILL killed them before they could be reaped): children of
    the target named INTERMEDIATE_NAME, with exit signal 0.  As the target
    names them: pids in its namespace."""
    found = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                children = f.read().split()
        except OSError:
            continue
        for child in children:
            try:
                with open(f"/proc/{child}/stat") as f:
                    stat = f.read()
                with open(f"/proc/{child}/status") as f:
                    nspid = next(line for line in f if line.startswith("NSpid:"))
            except (OSError, StopIteration):
                continue
            comm = stat[stat.index("(") + 1:stat.rindex(")")]
            fields = stat[stat.rindex(")") + 2:].split()
            # fields[0] is state (stat field 3); exit_signal is field 38.
            if comm == INTERMEDIATE_NAME and fields[0] == "Z" and fields[35] == "0":
                found.append(int(nspid.split()[-1]))
    return found


def reap_leftovers(pid: int, runner: HeldThread, at: int, deadline: float, guard,
                    notes: list[str]) -> None:
    for ns_pid in leftovers(pid):
        if runner.pending_sig:
            return  # the next snapshot, then
        result, _ = runner.inject(at, arch.NR["wait4"], ns_pid, 0, REAP_OPTIONS, 0,
                                  deadline=deadline, guard=guard)
        if result == ns_pid:
            notes.append(f"reaped task {ns_pid}, left by a snapcore killed during a fork")
