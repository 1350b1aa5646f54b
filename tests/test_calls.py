"""The injected calls as data (engine/calls.py): the real injectors, run
against real targets with a recording seccomp.Guard (the gate every
injected call passes just before it runs), make no call the table lacks,
and between them make every call of it that can run while snapcore lives;
the preflight judges the same table."""

from __future__ import annotations

import os
import signal

import pytest

from snapcore.engine import calls, forkthread
from snapcore.engine.checks_seccomp import planned_syscalls
from snapcore.engine.request import Request
from snapcore.engine.snapshot import take
from snapcore.linux import arch, procfs, seccomp, stops
from snapcore.linux.window import Window

from helpers import in_fork

# What no snapshot here makes: these need a snapcore killed at the wrong
# moment (test_first_law.py, test_hostile.py) or an old kernel.
NOT_HERE = {calls.RECORDED, calls.SNAPCORE_DIES, calls.OLD_KERNEL}


class Recording(seccomp.Guard):
    """A Guard that writes down each call it lets through, and who made it."""

    made: list = []  # shared by every Guard of the worker (inherited copies too)

    def __call__(self, nr: int, args: tuple, at: int) -> None:
        super().__call__(nr, args, at)
        self.made.append([self.task, nr, [int(a) for a in args]])


def _snapshot(pid: int, out_dir, writer: str, threads: str, force=()) -> list:
    """One real snapshot in a worker, with every Guard recording: the calls made."""
    def work():
        seccomp.Guard = Recording  # fork.choose_runner makes the runner's Guard
        snap = take(pid, Request(output_dir=out_dir, max_per_hour=0, writer=writer,
                                 threads=threads, force=force))
        return {"made": Recording.made, "writer": snap.writer, "core": str(snap.core_path)}
    result = in_fork(work)
    assert "crash" not in result, result.get("crash")
    assert result["writer"] == writer and os.path.exists(result["core"]), result
    return [(who, nr, tuple(args)) for who, nr, args in result["made"]]


def _leave_a_page(pid: int) -> int:
    """The page a snapcore killed mid-snapshot leaves: planted by the real
    injector (forkthread.plant) and never unmapped."""
    def work():
        at = procfs.syscall_instructions(pid)[0]
        with stops.signals_held([signal.SIGCHLD]):
            with Window(pid, threads=None, timeout=5, with_xstate=True) as window:
                page, _ = forkthread.plant(window.main, at, None, window.deadline)
        return {"page": page}
    result = in_fork(work)
    assert "page" in result, result
    return result["page"]


def test_the_injectors_make_the_planned_calls_and_no_other(start_victim, threads_exe,
                                                          out_dir, core_pattern):
    core_pattern("core")  # relative: the kernel's writer gets a staging directory (chdir)
    many = start_victim("eight", exe=threads_exe)
    _leave_a_page(many.pid)
    made = _snapshot(many.pid, out_dir, "kernel", "all")  # + the page's munmap, + threads
    plain = start_victim("sleep")
    made += _snapshot(plain.pid, out_dir, "snapcore", "main")
    undumpable = start_victim("nodump")
    made += _snapshot(undumpable.pid, out_dir, "kernel", "main", force=("dumpable",))

    names = {nr: name for name, nr in arch.NR.items()}
    unknown = [(who, names.get(nr, nr), args) for who, nr, args in made
               if calls.of(who, nr, args) is None]
    assert unknown == []
    seen = {calls.of(who, nr, args) for who, nr, args in made}
    never = [(c.who, c.name, c.args) for c in calls.TABLE
             if c.when not in NOT_HERE and c not in seen]
    assert never == []
    for victim in (many, plain, undumpable):
        victim.assert_unharmed()


@pytest.mark.unit
def test_the_preflight_judges_the_table():
    planned = planned_syscalls(threads=3)
    assert planned == [(c.who, c.name, c.judged()) for c in calls.TABLE if c.required]
    assert ("child", "clone", calls.RECREATE_THREAD.judged()) not in planned_syscalls(1)
    assert all(a is calls.ANY or isinstance(a, int) for c in calls.TABLE for a in c.args)


@pytest.mark.unit
@pytest.mark.skipif(arch.NAME != "x86_64",
                    reason="x86_64's code; arm64's page: tests/test_arch_aarch64.py")
def test_the_page_s_own_loop_makes_the_calls_the_table_names():
    """The code page's loop (arch.FORK_THREAD_CODE) runs only if snapcore
    dies, so it is judged, never recorded: its immediates are the table's."""
    code = arch.FORK_THREAD_CODE
    assert code[12:16] == calls.LOOP_WAIT.to_bytes(4, "little")  # mov $.., %edx
    assert code[20:24] == calls.LOOP_REAP.nr.to_bytes(4, "little")  # mov $61, %eax
    assert code[32:36] == calls.END_EXIT.nr.to_bytes(4, "little")  # mov $60, %eax
    assert calls.LOOP_REAP.args == (-1, 0, calls.LOOP_WAIT, 0)


@pytest.mark.unit
def test_a_call_is_bound_with_exactly_its_open_arguments():
    assert calls.DONTFORK.bind(0x7000) == (0x7000, arch.PAGE_SIZE, 10)
    with pytest.raises(ValueError):
        calls.DONTFORK.bind()
    with pytest.raises(ValueError):
        calls.FORK.bind(1)
    assert calls.of("child", arch.NR["munmap"], (0x1000, arch.PAGE_SIZE)) is calls.CHILD_UNMAP
    assert calls.of("target", arch.NR["munmap"], (0x1000, 8192)) is None
