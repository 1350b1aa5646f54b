"""The command line: bad input, error lines and exit codes, and its docs agreeing."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from snapcore.cli.app import cli
from snapcore.engine import preflight
from snapcore.errors import ExitCode

from helpers import a_kernel_thread

ROOT = Path(__file__).parent.parent


# Pids known only when the test runs (nothing reads /proc at collection time).
LIVE_PIDS = {"<this process>": os.getpid, "<a kernel thread>": a_kernel_thread}


@pytest.mark.parametrize("arg, code, words", [
    ("abc", ExitCode.USAGE, "invalid pid 'abc'"),
    ("-5", ExitCode.USAGE, "invalid pid '-5'"),
    ("0", ExitCode.USAGE, "invalid pid 0"),
    ("99999999", ExitCode.USAGE, "invalid pid 99999999"),
    ("4194000", ExitCode.NO_SUCH_PROCESS, "no such process 4194000"),
    ("<this process>", ExitCode.UNSUPPORTED, "snapcore itself or one of its parents"),
    ("<a kernel thread>", ExitCode.UNSUPPORTED, "kernel thread"),
])
def test_bad_pid_gets_one_line_and_exit_code(arg, code, words):
    if arg in LIVE_PIDS:
        arg = str(LIVE_PIDS[arg]())
    result = CliRunner().invoke(cli, [arg])
    assert result.exit_code == code, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("snapcore: error: "), result.output
    assert words in lines[0] and ": " in lines[0][len("snapcore: error: "):]


def test_snap_subcommand_is_the_same_command():
    assert CliRunner().invoke(cli, ["snap", "abc"]).exit_code == ExitCode.USAGE


def test_json_error_is_one_document():
    result = CliRunner().invoke(cli, ["--json", "abc"])
    doc = json.loads(result.stdout)
    assert doc["ok"] is False
    assert doc["error"]["exit_code"] == ExitCode.USAGE
    assert doc["error"]["stage"] == "usage"


def run(*args):
    return subprocess.run([sys.executable, "-m", "snapcore", *args], capture_output=True,
                          text=True, timeout=60)


def test_unknown_option_is_one_line_without_traceback():
    proc = run("--bogus", "1")
    assert proc.returncode == ExitCode.USAGE
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("snapcore: error: ")


def test_no_arguments_shows_help_and_fails():
    proc = run()
    assert proc.returncode == ExitCode.USAGE
    assert "Usage: snapcore" in proc.stderr


def test_version():
    proc = run("--version")
    assert proc.returncode == 0 and re.search(r"snapcore, version \d+\.\d+", proc.stdout)


def snap_options() -> list[str]:
    options = set()
    for command in ("snap", "check", "stacks", "watch", "list", "prune", "info", "debug"):
        help_text = CliRunner().invoke(cli, [command, "--help"]).output
        options |= set(re.findall(r"(?<![\w-])(--[a-z][a-z-]+)", help_text))
    return sorted(options)


def test_man_page_renders_without_warnings():
    proc = subprocess.run(["groff", "-man", "-ww", "-z", str(ROOT / "man/snapcore.1")],
                          capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stderr == ""
    proc = subprocess.run(["man", "--warnings", "-l", str(ROOT / "man/snapcore.1")],
                          capture_output=True, text=True, env={"MANPAGER": "cat",
                                                               "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr


@pytest.mark.parametrize("doc", ["man/snapcore.1", "README.md"])
def test_docs_list_every_option_and_exit_code(doc):
    text = (ROOT / doc).read_text().replace("\\-", "-")
    for option in snap_options():
        assert option in text, f"{doc} does not mention {option}"
    for check in preflight.CHECKS:
        assert check in text, f"{doc} does not describe the {check} check"
    if doc.endswith(".1"):
        listed = {int(c) for c in re.findall(r"^\.B (\d+)$", text, re.M)}
    else:
        listed = {int(c) for c in re.findall(r"^\| (\d+) \|", text, re.M)}
    assert listed == {int(c) for c in ExitCode}


@pytest.mark.parametrize("args, words", [
    (["prune", "--keep", "-1"], "--keep"),  # a value, not an unknown option
    (["prune", "--older-than", "7"], "needs a unit"),  # 7 seconds or 7 days?
    (["list", "--since", "2"], "needs a unit"),
    (["--unit", "surely-no-such-unit"], "--unit"),  # no systemd here, or no such unit
])
def test_operator_mistakes_get_one_clear_line(args, words, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "snapcore", *args, "-o", str(tmp_path)],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == ExitCode.USAGE, proc.stderr
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("snapcore: error: ")
    assert words in proc.stderr and ".:" not in proc.stderr


def test_top_level_help_shows_snapshot_usage_options_and_whole_summaries():
    for flag in ("-h", "--help"):
        proc = run(flag)
        assert proc.returncode == 0
        assert "Usage: snapcore [OPTIONS] PID..." in proc.stdout
        assert "Snapshot options (snapcore PID, snapcore snap PID)" in proc.stdout
        for option in ("--compress", "--reason", "--force", "--name", "-o, --output-dir"):
            assert option in proc.stdout
        assert "..." not in proc.stdout.split("Commands")[1].split("Snapshot options")[0]
    assert "Usage: snapcore snap" in run("snap", "-h").stdout


def complete(*words: str) -> list[str]:
    """What the shell is offered for the last word (bash's protocol)."""
    env = dict(os.environ, _SNAPCORE_COMPLETE="bash_complete",
               COMP_WORDS=" ".join(("snapcore",) + words), COMP_CWORD=str(len(words)))
    proc = subprocess.run([sys.executable, "-m", "snapcore"], env=env, capture_output=True,
                          text=True, cwd=ROOT)
    return [line.split(",", 1)[1] for line in proc.stdout.splitlines()]


def test_completion_offers_processes_and_check_names():
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        assert str(sleeper.pid) in complete("check", str(sleeper.pid)[:-1])
        assert str(sleeper.pid) in complete(str(sleeper.pid)[:-1])  # snapcore PID
        assert {"snap", "check", "info", "debug"} <= set(complete(""))
        assert "sleep" in complete("--name", "sle")
        assert complete("--force", "") == list(preflight.FORCEABLE)
        assert complete("stacks", "--force", "d") == ["dumpable", "disk"]
    finally:
        sleeper.kill()
        sleeper.wait()


def test_parsing_loads_neither_rich_nor_psutil_nor_the_engine():
    """Every TAB runs snapcore afresh: click alone is loaded to parse."""
    code = ("import sys, snapcore.cli; print(' '.join(m for m in ('rich', 'psutil', "
            "'snapcore.engine.preflight', 'snapcore.linux.ptrace', 'ctypes') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0 and proc.stdout.strip() == "", proc.stdout + proc.stderr


@pytest.fixture
def titled_and_scripts(build_dir, tmp_path):
    """A server that set its title to `tt-NONCE: master process`, and two
    shell scripts whose command lines hold the same words."""
    from conftest import compile_target
    nonce = f"n{os.getpid()}x{len(str(tmp_path))}"
    words = f"master process {nonce}"
    exe = compile_target(build_dir, "titled")
    server = subprocess.Popen([str(exe), f"tt-{nonce}: {words}"], stdout=subprocess.PIPE)
    assert server.stdout.readline() == b"ready\n"
    script = tmp_path / "watchdog.sh"
    script.write_text("sleep 60\n")
    shells = [subprocess.Popen(["sh", "-c", f"sleep 60; : {words}"]),
              subprocess.Popen(["sh", str(script), words])]
    yield words, server.pid, [s.pid for s in shells]
    for proc in [server, *shells]:
        proc.kill()
        proc.wait()


def test_name_matches_the_process_name_or_title_and_full_the_command_line(
        titled_and_scripts, tmp_path):
    words, server, shells = titled_and_scripts
    out = str(tmp_path / "cores")
    checked = run("check", "--json", "--name", words, "-o", out)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert json.loads(checked.stdout)["target"]["pid"] == server  # not the scripts
    by_comm = run("check", "--json", "--name", "^titled$", "-o", out)
    assert json.loads(by_comm.stdout)["target"]["pid"] == server, by_comm.stdout
    full = run("check", "-f", "--name", words, "-o", out)  # like pgrep -f: all three
    assert full.returncode == ExitCode.USAGE and "matches 3 processes" in full.stderr
    assert all(str(pid) in full.stderr for pid in [server, *shells]), full.stderr
    alone = run("check", "--full", "-o", out)
    assert alone.returncode == ExitCode.USAGE and "--name" in alone.stderr


def test_name_never_matches_snapcore_or_its_ancestors(tmp_path):
    """The pattern is on snapcore's own command line and its shell's."""
    nonce = f"only-here-{os.getpid()}"
    proc = subprocess.run(["sh", "-c", f"{sys.executable} -m snapcore check -f --name "
                           f"{nonce} -o {tmp_path}; exit $?"], capture_output=True,
                          text=True, cwd=ROOT)
    assert proc.returncode == ExitCode.NO_SUCH_PROCESS, proc.stderr
    assert "no process matches" in proc.stderr


def test_quiet_stacks_keep_standard_output_to_the_path(start_victim, out_dir):
    """gdb EXE "$(snapcore -q --stacks PID)": stdout is the path alone."""
    victim = start_victim("sleep")
    proc = run("-q", "--stacks", "-o", str(out_dir), str(victim.pid))
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.splitlines()) == 1 and Path(proc.stdout.strip()).is_file()
    assert "mode_sleep" in proc.stderr and "mode_sleep" not in proc.stdout
    victim.assert_unharmed()


def test_stacks_without_gdb_keep_the_snapshot_and_exit_14(start_victim, out_dir):
    victim = start_victim("sleep")
    proc = subprocess.run([sys.executable, "-m", "snapcore", "-q", "--stacks", "-o",
                           str(out_dir), str(victim.pid)], capture_output=True, text=True,
                          env=dict(os.environ, PATH="/nonexistent"), cwd=ROOT)
    assert proc.returncode == ExitCode.TOOL, proc.stderr
    assert Path(proc.stdout.strip()).is_file()  # the core is kept, and said
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("snapcore: error: ") \
        and "needs gdb" in lines[0], proc.stderr
    victim.assert_unharmed()


@pytest.mark.parametrize("where", ["/proc/nope", "/sys/nope/cores"])
def test_an_output_dir_that_cannot_be_created_is_named_so(where, start_victim):
    victim = start_victim("sleep")
    proc = run("-o", where, str(victim.pid))
    assert proc.returncode == ExitCode.OUTPUT, proc.stderr
    assert proc.stderr.count("\n") == 1 and f"{where} cannot be created" in proc.stderr
    assert "free" not in proc.stderr and "another output directory" in proc.stderr
    checked = run("check", "--json", "-o", where, str(victim.pid))
    doc = json.loads(checked.stdout)
    assert checked.returncode == ExitCode.OUTPUT and doc["exit_code"] == ExitCode.OUTPUT
    said = next(c for c in doc["checks"] if c["name"] == "output-dir")
    assert said["verdict"] == "refuse" and "cannot be created" in said["reason"], said
    assert not os.path.exists(where)
    victim.assert_unharmed()


def test_help_is_one_usage_line_and_a_command(tmp_path):
    top = run("--help").stdout
    assert top.count("Usage:") == 1, top
    assert run("help").stdout == top
    debug = run("help", "debug")
    assert debug.returncode == 0 and "Usage: snapcore debug" in debug.stdout
    unknown = run("help", "nope")
    assert unknown.returncode == ExitCode.USAGE and "no command 'nope'" in unknown.stderr


@pytest.mark.parametrize("command, own, foreign", [
    ("info", "no snapshot matches", "rate limit"),
    ("debug", "gdb's own status", "rate limit"),
    ("snap", "rate limit reached", "gdb's own status"),
])
def test_each_command_help_shows_its_own_exit_codes(command, own, foreign):
    text = run(command, "--help").stdout
    assert own in text and foreign not in text, text


def test_the_core_would_never_be_complete_is_said_so():
    from snapcore.engine.controller import completion
    assert completion(float("inf")) == "the core would never be complete"
    assert completion(42.4) == "the core would be complete at 42 s"


def test_forced_check_shows_as_forced(start_victim, out_dir):
    victim = start_victim("sleep")
    first = run("--max-per-hour", "1", "-o", str(out_dir), str(victim.pid))
    assert first.returncode == 0, first.stderr
    forced = run("--max-per-hour", "1", "--force", "rate-limit", "-o", str(out_dir),
                 str(victim.pid))
    assert forced.returncode == 0, forced.stderr
    line = next(x for x in forced.stdout.splitlines() if x.startswith("check rate-limit"))
    assert "forced: " in line and "refuse" not in line, line
    doc = json.loads(run("--json", "--max-per-hour", "1", "--force", "rate-limit", "-o",
                         str(out_dir), str(victim.pid)).stdout)
    said = next(c for c in doc["checks"] if c["name"] == "rate-limit")
    assert said["forced"] is True
    victim.assert_unharmed()


def test_check_table_has_no_empty_fix_cell(start_victim, out_dir):
    from helpers import on_terminal
    victim = start_victim("sleep")
    code, text = on_terminal("check", "-o", str(out_dir), str(victim.pid), columns=200)
    assert code == 0, text
    rows = [x for x in text.splitlines() if x.startswith("│")]
    cells = [[c.strip() for c in row.strip("│").split("│")] for row in rows]
    header = next(x for x in text.splitlines() if "verdict" in x)
    if "fix" in header:  # some check has a fix: every row says something there
        assert all(row[-1] for row in cells if row[0]), text


def test_list_never_wraps_the_core_and_says_booleans_as_words(start_victim, tmp_path):
    from helpers import on_terminal
    out_dir = tmp_path / "cores"
    victim = start_victim("sleep")
    snapped = run("--json", "--reason", "a reason long enough to need some room " * 2,
                  "-o", str(out_dir), str(victim.pid))
    name = Path(json.loads(snapped.stdout)["core"]["path"]).name
    code, text = on_terminal("list", "-o", str(out_dir), columns=120)
    assert code == 0 and name in text, text
    plain = run("list", "-o", str(out_dir)).stdout.splitlines()
    compressed = plain[0].split("\t").index("compressed")
    assert plain[1].split("\t")[compressed] == "no", plain
    assert "True" not in "\n".join(plain) and "False" not in "\n".join(plain)
    victim.assert_unharmed()


def _tree(top: Path) -> dict:
    """Every name under `top` (`top` too): its mode, its mtime and, for a
    file, its bytes."""
    tree = {}
    for path in [top, *sorted(top.rglob("*"))]:
        st = os.lstat(path)
        tree[str(path.relative_to(top))] = (st.st_mode, st.st_mtime_ns,
                                            path.read_bytes() if path.is_file() else None)
    return tree


def test_check_writes_nothing(start_victim, tmp_path):
    victim = start_victim("sleep")
    out = tmp_path / "cores"
    snapped = run("--json", "--max-per-hour", "5", "-o", str(out), str(victim.pid))
    assert snapped.returncode == 0, snapped.stderr
    # An hour-old snapshot in the rate limit's state: a snapshot prunes it, a
    # check must not.  Every time set in the past: any write would change it.
    state = out / ".snapcore" / "state.json"
    program, = json.loads(state.read_text())
    state.write_text(json.dumps({program: [1_000_000.0, time.time()]}))
    for path in [tmp_path, *tmp_path.rglob("*")]:
        os.utime(path, ns=(1_000_000_000_000_000, 1_000_000_000_000_000),
                 follow_symlinks=False)
    before = _tree(tmp_path)
    # An output directory to be made (its parent probed), then one with state.
    for where, rate in ((tmp_path / "missing" / "cores", "0 of 5 snapshots"),
                        (out, "1 of 5 snapshots")):
        checked = run("check", "--json", "--max-per-hour", "5", "-o", str(where),
                      str(victim.pid))
        assert checked.returncode == 0, checked.stdout + checked.stderr
        said = {c["name"]: c for c in json.loads(checked.stdout)["checks"]}
        assert said["output-dir"]["verdict"] == "ok", said["output-dir"]
        assert rate in said["rate-limit"]["reason"], said["rate-limit"]
        assert _tree(tmp_path) == before, where
    victim.assert_unharmed()
