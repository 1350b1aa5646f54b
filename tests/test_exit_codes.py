"""Every documented exit code (README "Exit codes", man page EXIT STATUS),
caused for real.  Most are caused where their feature is tested; this module
causes the others.  Where each one is caused:

| code | caused by |
| --- | --- |
| 0 | tests/test_snapshot.py (every snapshot), tests/test_guards.py::test_check_on_a_healthy_target_says_go |
| 1 | not caused: the catch-all for a bug (cli/app.py main's last `except`); a real input that reaches it is a bug to fix, not a case to keep |
| 2 | tests/test_cli.py::test_bad_pid_gets_one_line_and_exit_code, test_operator_mistakes_get_one_clear_line |
| 3 | tests/test_cli.py::test_bad_pid_gets_one_line_and_exit_code (4194000), test_name_never_matches_snapcore_or_its_ancestors |
| 4 | here: test_another_users_process_is_exit_4 |
| 5 | tests/test_refusals.py::test_already_traced_names_the_tracer, tests/test_guards.py::test_one_snapshot_at_a_time_per_target |
| 6 | tests/test_cli.py::test_bad_pid_gets_one_line_and_exit_code, tests/test_refusals.py::test_zombie_is_refused, tests/test_machine.py (a machine with no architecture table) |
| 7 | tests/test_guards.py::test_uninterruptible_sleep_times_out_and_leaves_target_alone |
| 8 | tests/test_refusals.py::test_hard_core_limit_zero_is_refused_before_touching; disk full during the dump: tests/test_guards.py::test_disk_filling_during_the_dump_ends_cleanly (the kernel's writer) and here (snapcore's) |
| 9 | tests/test_refusals.py::test_pipe_core_pattern_reports_the_handler |
| 10 | tests/test_refusals.py::test_unusable_output_dir, tests/test_guards.py::test_no_room_on_disk_is_refused, tests/test_cli.py::test_an_output_dir_that_cannot_be_created_is_named_so |
| 11 | tests/test_guards.py::test_memory_headroom_under_strict_overcommit |
| 12 | tests/test_guards.py::test_rate_limit_refuses_with_the_next_allowed_time |
| 13 | tests/test_limits.py::test_pids_cgroup_without_headroom_is_refused, test_rlimit_nproc_without_headroom_is_refused |
| 14 | tests/test_workflow.py::test_stacks_without_gdb_says_so, tests/test_cli.py::test_stacks_without_gdb_keep_the_snapshot_and_exit_14 |
| 15 | tests/test_workflow.py::test_watch_logs_samples_and_ends_when_the_target_exits |
| 130 | tests/test_snapshot.py::test_sigint_at_any_moment_leaves_target_running, tests/test_guards.py::test_sigint_in_the_middle_of_many_snapshots |
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from snapcore.errors import ExitCode

from conftest import run_snapcore
from helpers import cores_in


@pytest.fixture
def tiny_fs(tmpfs):
    return tmpfs("2m")


def test_disk_full_while_snapcores_writer_writes_is_exit_8(start_victim, tiny_fs):
    """As with the kernel's writer: the snapshot went ahead, no core came of
    it (10 is for a refusal before the target is touched)."""
    victim = start_victim("fat")  # a core of 24 MiB
    proc = run_snapcore("--writer", "snapcore", "--force", "disk", "--max-per-hour", "0",
                        "-o", str(tiny_fs / "cores"), str(victim.pid))
    assert proc.returncode == ExitCode.CORE_NOT_WRITTEN, proc.stderr
    assert proc.stderr.count("\n") == 1 and "disk filled up" in proc.stderr, proc.stderr
    assert cores_in(tiny_fs / "cores") == []
    victim.wait_for_heartbeats(victim.heartbeats())
    victim.assert_unharmed()


def test_another_users_process_is_exit_4(start_victim, capfd):
    """snapcore run as `nobody` on a process of root's.  Forked from this
    interpreter rather than started afresh: `nobody` cannot read the
    interpreter's home under /root (the modules are loaded before)."""
    from snapcore.cli import check, reading, snap, tools, watch  # noqa: F401 (commands)
    from snapcore.cli import render, selection  # noqa: F401
    from snapcore.cli.app import main
    from snapcore.engine import preflight, snapshot  # noqa: F401
    import mmap  # noqa: F401
    import rich.console  # noqa: F401
    import rich.table  # noqa: F401
    victim = start_victim("sleep")
    out = Path(tempfile.gettempdir()) / f"snapcore-nobody-{os.getpid()}"
    capfd.readouterr()
    child = os.fork()
    if child == 0:
        code = 1
        try:
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            main(["-o", str(out), str(victim.pid)])
        except SystemExit as done:
            code = done.code if isinstance(done.code, int) else 1
        finally:
            os._exit(code)
    _, status = os.waitpid(child, 0)
    said = capfd.readouterr().err
    assert os.waitstatus_to_exitcode(status) == ExitCode.PERMISSION, said
    assert said.count("\n") == 1 and said.startswith("snapcore: error: "), said
    victim.assert_unharmed()
