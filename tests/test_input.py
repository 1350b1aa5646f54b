"""Bad input at the command line's boundary: every number an option takes is
finite and bounded (snapcore/bounds.py), refused in one line naming the
option, the value and the range, with exit status 2 and the target
untouched; the engine refuses the same values from a library caller."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from snapcore import bounds
from snapcore.cli.app import cli
from snapcore.engine import watch
from snapcore.engine.request import Request
from snapcore.errors import BadInput, ExitCode

from conftest import run_snapcore

ROOT = Path(__file__).parent.parent
NO_SUCH_PID = "4194000"  # valid, and no process: a valid option gets exit 3
TARGETED = ("snap", "check", "stacks", "watch")

# option -> (setting, commands that take it, a valid value)
OPTIONS = {
    "--timeout": ("timeout", TARGETED, "0.5"),
    "--min-free": ("min_free", TARGETED, "1G"),
    "--max-per-hour": ("max_per_hour", TARGETED, "10"),
    "--dump-deadline": ("dump_deadline", ("snap", "stacks", "watch"), "5"),
    "--max-dump-time": ("max_dump_time", ("snap", "stacks", "watch"), "60"),
    "--compress-ratio": ("compress_ratio", ("snap", "stacks", "watch"), "3"),
    "--interval": ("interval", ("watch",), "0.5"),
    "--for": ("hold", ("watch",), "2"),
    "--cooldown": ("cooldown", ("watch",), "60"),
    "--cpu": ("cpu", ("watch",), "150"),
    "--cpu-below": ("cpu_below", ("watch",), "5"),
    "--rss": ("rss", ("watch",), "2G"),
    "--rss-below": ("rss_below", ("watch",), "1M"),
    "--threads-over": ("threads", ("watch",), "100"),
    "--fds": ("fds", ("watch",), "1000"),
    "--count": ("count", ("watch",), "3"),
    "--since": ("since", ("list",), "2h"),
    "--older-than": ("older_than", ("prune",), "7d"),
    "--max-total": ("max_total", ("prune",), "20G"),
    "--keep": ("keep", ("prune",), "8"),
}
BAD = ("nan", "inf", "-inf", "1e308", "-1")
HUGE = {"size": "99999999T", "duration": "99999999d"}  # past the range, well formed
CASES = [(command, option) for option, (_, commands, _) in OPTIONS.items()
         for command in commands]


def command_line(command: str, option: str, value: str, target: str) -> list[str]:
    args = [command, option, value]
    if command == "watch" and option not in ("--cpu",):
        args += ["--cpu", "50"]  # a condition to watch for
    if command in TARGETED:
        return args + [target]
    return args


def assert_refused(proc, option: str, value: str) -> None:
    lines = proc.stderr.splitlines()
    assert proc.returncode == ExitCode.USAGE, (proc.returncode, proc.stderr)
    assert len(lines) == 1 and lines[0].startswith("snapcore: error: "), proc.stderr
    assert option in lines[0] and value in lines[0], lines[0]
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("command, option", CASES)
def test_numbers_out_of_range_are_refused_and_the_target_untouched(command, option,
                                                                   start_victim, tmp_path):
    setting, _, good = OPTIONS[option]
    kind = bounds.RANGES[setting][2]
    victim = start_victim("sleep") if command in TARGETED else None
    target = str(victim.pid) if victim else ""
    out = ["-o", str(tmp_path / "cores")]
    for value in BAD + ((HUGE[kind],) if kind in HUGE else ()):
        proc = run_snapcore(*command_line(command, option, value, target), *out,
                            timeout=30)
        assert_refused(proc, option, value)
        # the range is named (a size or percentage for --min-free)
        assert bounds.span(setting) in proc.stderr or "1024T" in proc.stderr, proc.stderr
    # --json: one JSON document on stdout saying the same
    proc = run_snapcore(*command_line(command, option, "nan", target), "--json", *out)
    doc = json.loads(proc.stdout)
    assert proc.returncode == ExitCode.USAGE and doc["ok"] is False
    assert doc["error"]["exit_code"] == ExitCode.USAGE and option in doc["error"]["message"]
    assert not (tmp_path / "cores").exists()
    if victim:
        victim.assert_unharmed()
        # A valid value goes past the command line: no such process (3) for a
        # pid that is not running, a listing (0) for list and prune.
        proc = run_snapcore(*command_line(command, option, good, NO_SUCH_PID), *out)
        assert proc.returncode == ExitCode.NO_SUCH_PROCESS, proc.stderr
    else:
        proc = run_snapcore(*command_line(command, option, good, ""), *out)
        assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("args, option, value", [
    (["--timeout", "-1", "PID"], "--timeout", "-1"),
    (["PID", "--timeout", "-1"], "--timeout", "-1"),
    (["snap", "--max-dump-time", "-5", "PID"], "--max-dump-time", "-5"),
])
def test_a_negative_value_is_the_options_not_a_pid(args, option, value, start_victim):
    victim = start_victim("sleep")
    proc = run_snapcore(*[str(victim.pid) if a == "PID" else a for a in args])
    assert_refused(proc, option, value)
    assert "invalid pid" not in proc.stderr
    victim.assert_unharmed()


def test_a_negative_pid_is_still_named_as_one():
    proc = run_snapcore("--timeout", "0.5", "-5")
    assert proc.returncode == ExitCode.USAGE and "invalid pid '-5'" in proc.stderr


def normalized(text: str) -> str:
    return " ".join(text.replace("\\-", "-").split())


def test_help_readme_and_man_page_give_the_same_ranges():
    readme = (ROOT / "README.md").read_text()
    man = (ROOT / "man/snapcore.1").read_text().replace("\\-", "-")
    for option, (setting, commands, _) in OPTIONS.items():
        span = bounds.span(setting)
        row = re.search(rf"^\| `{option}` \|(.*)\|$", readme, re.M)
        assert row and span in row.group(1), f"README: {option} {span}"
        entry = re.search(rf"^\.TP\n\.B {option}\n(.*)$", man.split(".SS Numbers")[1], re.M)
        assert entry and span in entry.group(1), f"man page: {option} {span}"
        for command in commands:
            text = normalized(CliRunner().invoke(cli, [command, "--help"]).output)
            assert span in text, f"{command} --help: {option} {span}"


# The engine, for a library caller: the same ranges, BadInput (exit 2).

@pytest.mark.unit
@pytest.mark.parametrize("make", [
    lambda v: Request(Path("/tmp"), timeout=v),
    lambda v: Request(Path("/tmp"), compress_ratio=v),
    lambda v: Request(Path("/tmp"), max_per_hour=v),
    lambda v: Request(Path("/tmp"), min_free=f"{v}%"),
    lambda v: Request(Path("/tmp"), dump_deadline=v),
    lambda v: Request(Path("/tmp"), max_dump_time=v),
    lambda v: watch.Conditions(cpu=v),
    lambda v: watch.Conditions(rss=v),
    lambda v: watch.events(1, watch.Conditions(cpu=1.0), None, interval=v, hold=1.0,
                           count=1, cooldown=1.0),
    lambda v: watch.events(1, watch.Conditions(cpu=1.0), None, interval=1.0, hold=v,
                           count=1, cooldown=1.0),
])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf"), 1e308, -1])
def test_the_engine_refuses_what_the_command_line_would(make, value):
    with pytest.raises(BadInput) as caught:
        make(value)
    assert caught.value.exit_code == ExitCode.USAGE and "invalid" in caught.value.message


@pytest.mark.unit
def test_the_engine_takes_its_defaults_and_valid_values():
    Request(Path("/tmp"))
    Request(Path("/tmp"), timeout=60, min_free="2G", max_per_hour=0)
    Request(Path("/tmp"), dump_deadline=0, max_dump_time=86400)
    watch.Conditions(cpu=150.0, rss=1 << 30, threads=10, fds=100)


def test_with_the_core_on_standard_output_a_bad_number_is_said_on_stderr(start_victim):
    """-o -: standard output is the core's, so even the JSON error goes to stderr."""
    victim = start_victim("sleep")
    proc = run_snapcore("--json", "-o", "-", "--timeout", "inf", str(victim.pid))
    assert proc.returncode == ExitCode.USAGE and proc.stdout == ""
    assert "--timeout" in json.loads(proc.stderr)["error"]["message"]
    victim.assert_unharmed()


@pytest.mark.parametrize("command", [[], ["check"], ["list"], ["prune", "--keep", "1"],
                                     ["info"]])
@pytest.mark.parametrize("name", ["a" * 300, "/".join(["d" * 200] * 21)])
def test_an_output_dir_no_filesystem_can_hold_is_one_line(command, name, start_victim):
    """A name over NAME_MAX (or a path over PATH_MAX) for -o: one line, exit 2,
    for every command that takes -o (it was an internal error in list, and a
    rate-limit refusal in check)."""
    victim = start_victim("sleep")
    pid = [str(victim.pid)] if command in ([], ["check"]) else []
    proc = run_snapcore(*command, "-o", f"/tmp/{name}", *pid)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and "at most" in proc.stderr, proc.stderr
    victim.assert_unharmed()
