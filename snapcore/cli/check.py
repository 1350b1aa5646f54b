"""snapcore check: every preflight verdict, without a snapshot.
"""

from __future__ import annotations

import sys

from snapcore.cli import render as report
from snapcore.cli.app import cli, fail
from snapcore.cli.options import (EXIT_CODES_HELP, common_options, make_request, one_target,
                                  pid_argument, target_options)
from snapcore.errors import Interrupted, SnapcoreError, Stage


@cli.command(epilog=EXIT_CODES_HELP)
@pid_argument()
@target_options
@common_options
def check(pid, name_pattern, take_all, pidfile, unit, output_dir, writer, as_json, timeout,
          min_free, max_per_hour):
    """Say whether a snapshot of PID (or --name, --pidfile, --unit) would go
    ahead, and why not.

    Runs every check `snapcore PID` runs, without taking a snapshot: the
    process is stopped only for a moment, to read its seccomp filters when it
    has some. Exits 0 when a snapshot would go ahead, else with the exit code
    the first refusal would give.
    """
    try:
        request = make_request(output_dir, timeout, min_free, max_per_hour, writer,
                               stdout_ok=True)
        from snapcore.engine import preflight  # after the request: a machine snapcore supports
        result = preflight.run(one_target(pid, name_pattern, take_all, pidfile, unit), request)
    except SnapcoreError as exc:
        fail(exc, as_json)
    except KeyboardInterrupt:
        fail(Interrupted("interrupted", "the target keeps running", stage=Stage.INTERRUPT),
             as_json)
    refusals = result.refusals()
    if as_json:
        report.print_json(report.check_dict(result))
    else:
        report.print_checks(result, report.stdout_console())
    sys.exit(int(refusals[0].exit_code) if refusals else 0)
