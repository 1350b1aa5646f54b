"""Awkward targets and outputs: a name that is not UTF-8, a target gone
right after the fork, an exec while snapcore attaches, a reader of standard
output that goes away, a staged core removed meanwhile, a record of the
wrong shape.  Each ends in a clear line and a documented exit code, or is
harmless, and the target is untouched."""

from __future__ import annotations

import errno
import importlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from snapcore.engine.snapshot import take
from snapcore.engine.request import Request
from snapcore.errors import ExitCode, SnapcoreError
from snapcore.linux.proctext import readable

from conftest import TARGETS, run_snapcore, snap_json
from helpers import check_json, in_fork, prstatus_pids

REPLACEMENT = "\ufffd"


@pytest.fixture(scope="session")
def hostile(build_dir):
    """tests/targets/hostile.c, built under a name of its own (test_hostile.py
    builds `hostile`: never rewrite an executable a target may be running)."""
    exe = build_dir / "hostile-awkward"
    subprocess.run(["gcc", "-Wall", "-Werror", "-g", "-O0", "-pthread", "-o", str(exe),
                    str(TARGETS / "hostile.c")], check=True)
    return exe


# 2. A name that is not UTF-8

@pytest.mark.unit
def test_a_name_that_is_not_utf8_is_shown_readably_and_still_fits_a_comm():
    raw = "\udcff\udcfe"  # b"\xff\xfe" read with surrogateescape
    assert readable(raw, 15) == REPLACEMENT * 2
    assert readable("w\udcff" * 7 + "x", 15) == ("w" + REPLACEMENT) * 3 + "w"  # 13 bytes
    assert len(readable("\udcff" * 15, 15).encode()) <= 15
    assert readable("nginx: worker") == "nginx: worker"


@pytest.mark.parametrize("writer", ["kernel", "snapcore"])
@pytest.mark.usefixtures("file_core_pattern")  # asks for the kernel's writer
def test_a_target_named_in_bytes_that_are_not_utf8(writer, start_victim, hostile, out_dir):
    victim = start_victim("badname", exe=hostile)
    assert Path(f"/proc/{victim.pid}/comm").read_bytes() == b"\xff\xfe\n"
    assert Path(f"/proc/{victim.pid}/cmdline").read_bytes().startswith(b"\xff\xfe\xff")
    shown = REPLACEMENT * 2

    code, doc = check_json("--writer", writer, "-o", str(out_dir), str(victim.pid))
    assert code == 0 and doc["target"]["name"] == shown, doc

    code, doc = snap_json("--writer", writer, "--max-per-hour", "0", "-o", str(out_dir),
                          str(victim.pid))
    assert code == 0, doc
    assert doc["target"]["name"] == shown and doc["thread_map"][0]["name"] == shown
    core = Path(doc["core"]["path"])
    assert re.fullmatch(rf"\d{{8}}T\d{{6}}\.\d{{3}}Z_+{victim.pid}\.core", core.name), core
    assert prstatus_pids(core) == [victim.pid]
    human = run_snapcore("--writer", writer, "--max-per-hour", "0", "-o", str(out_dir),
                         str(victim.pid))
    assert human.returncode == 0 and f"{shown} (pid {victim.pid})" in human.stdout, human

    proc = run_snapcore("stacks", "--writer", writer, "--max-per-hour", "0", "-o",
                        str(out_dir), str(victim.pid))
    assert proc.returncode == 0 and "mode_badname" in proc.stdout, proc.stderr
    listed = run_snapcore("list", "-o", str(out_dir))
    assert listed.returncode == 0 and listed.stdout.count(shown) == 3, listed
    info = run_snapcore("info", "-o", str(out_dir), str(victim.pid))
    assert info.returncode == 0 and f"target    {shown} (pid {victim.pid})" in info.stdout
    victim.wait_for_heartbeats(victim.heartbeats())
    victim.assert_unharmed()


# 3. The target gone right after the fork

def in_worker(work) -> dict:
    """work() in a forked copy of this process, as root (helpers.in_fork)."""
    return in_fork(work)


def killed_first(victim, function):
    """`function`, called after the target is killed and reaped (by this
    test's reaper thread, in the parent): its /proc entry is gone."""
    def hooked(*args, **kwargs):
        os.kill(victim.pid, signal.SIGKILL)
        end = time.monotonic() + 10
        while os.path.exists(f"/proc/{victim.pid}") and time.monotonic() < end:
            time.sleep(0.001)
        return function(*args, **kwargs)
    return hooked


@pytest.mark.slow
@pytest.mark.parametrize("writer, module, name", [
    ("kernel", "snapcore.linux.priority", "own_level"),  # the first read after the fork
    ("snapcore", "snapcore.engine.dump_snapcore", "gather"),
])
@pytest.mark.usefixtures("file_core_pattern")  # asks for the kernel's writer
def test_target_gone_right_after_the_fork(writer, module, name, start_victim, out_dir):
    """The child is a whole copy: its dump goes on, and the core is the
    target's (its threads' ids), or the error says the process exited."""
    victim = start_victim("sleep")
    reaper = threading.Thread(target=victim.proc.wait)

    def work():
        target = importlib.import_module(module)
        setattr(target, name, killed_first(victim, getattr(target, name)))
        try:
            snap = take(victim.pid, Request(output_dir=out_dir, max_per_hour=0, writer=writer))
            return {"core": str(snap.core_path), "writer": snap.writer}
        except SnapcoreError as exc:
            return {"error": exc.one_line(), "exit_code": int(exc.exit_code)}

    reaper.start()
    try:
        result = in_worker(work)
    finally:
        victim.stop()
        reaper.join()
    assert "crash" not in result, result["crash"]
    assert victim.proc.returncode == -signal.SIGKILL  # it was gone, as meant
    if "error" in result:
        assert result["exit_code"] == ExitCode.NO_SUCH_PROCESS and "exited" in result["error"]
    else:
        assert result["writer"] == writer
        assert prstatus_pids(Path(result["core"])) == [victim.pid]


# 4. An exec while snapcore attaches

@pytest.fixture
def aslr():
    """Address space randomization on for one test (an exec is told from the
    memory layout it randomizes), and put back as it was."""
    knob = Path("/proc/sys/kernel/randomize_va_space")
    saved = knob.read_text()
    knob.write_text("2\n")
    yield
    knob.write_text(saved)


def test_exec_while_snapcore_attaches_is_said_so(aslr, start_victim, hostile, out_dir):
    """ptrace_attach answers EPERM to the main thread a multi-threaded exec
    replaces, once the exec is through (the old task has exited): the seize
    of the first window is made to fail so, just after the target (exec_loop)
    exec'd.  Not "run as root": the exec, exit 3, and the target untouched."""
    victim = start_victim("exec_loop", exe=hostile)

    def work():
        from ptrace import PtraceError

        from snapcore.linux import ptrace as ptracemod
        real, raced = ptracemod._raw_ptrace, []

        def racing(request, pid, addr=0, data=0):
            if request == ptracemod.PTRACE_SEIZE and pid == victim.pid and not raced:
                raced.append(pid)
                before = Path(f"/proc/{pid}/cmdline").read_bytes()
                end = time.monotonic() + 5
                while Path(f"/proc/{pid}/cmdline").read_bytes() == before:
                    assert time.monotonic() < end, "the target stopped exec'ing"
                    time.sleep(0.001)
                raise PtraceError("seize: EPERM", errno=errno.EPERM, pid=pid)
            return real(request, pid, addr, data)

        ptracemod._raw_ptrace = racing
        try:
            take(victim.pid, Request(output_dir=out_dir, max_per_hour=0))
            return {"raced": raced}
        except SnapcoreError as exc:
            return {"raced": raced, "error": exc.one_line(), "exit_code": int(exc.exit_code)}

    result = in_worker(work)
    assert "crash" not in result, result["crash"]
    assert result["raced"] == [victim.pid] and "error" in result, result
    assert result["exit_code"] == ExitCode.NO_SUCH_PROCESS, result
    assert "exec'd a new program while snapcore attached" in result["error"], result
    assert "try again" in result["error"] and "root" not in result["error"]
    victim.wait_for_heartbeats(victim.heartbeats())
    victim.assert_unharmed()


# 5. The reader of standard output goes away; a core removed meanwhile

@pytest.mark.parametrize("compressed", [False, True])
def test_reader_of_standard_output_goes_away(compressed, start_victim, tmp_path):
    """`snapcore -o - PID | head -c 100`: one line saying so (exit 10),
    not "check free space"; with --json, the document on stderr."""
    victim = start_victim("sleep")
    for as_json in (False, True):
        args = [sys.executable, "-m", "snapcore", "--max-per-hour", "0", "-o", "-",
                *(["--compress"] if compressed else []), *(["--json"] if as_json else []),
                str(victim.pid)]
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, cwd=tmp_path)
        if not compressed:  # head -c 100 (a compressed core may fit in the pipe)
            assert len(proc.stdout.buffer.read(100)) == 100
        proc.stdout.close()
        err = proc.stderr.read()
        assert proc.wait(timeout=60) == ExitCode.OUTPUT, err
        if as_json:
            doc = json.loads(err)
            assert doc["error"]["exit_code"] == ExitCode.OUTPUT
            line = f"{doc['error']['message']}: {doc['error']['hint']}"
        else:
            assert err.count("\n") == 1 and err.startswith("snapcore: error: "), err
            line = err
        assert "reader of standard output went away" in line and "free space" not in line
        assert "target is unharmed" in line
    victim.wait_for_heartbeats(victim.heartbeats())
    victim.assert_unharmed()


def removing_first(function, remove):
    def hooked(*args, **kwargs):
        remove(*args)
        return function(*args, **kwargs)
    return hooked


@pytest.mark.usefixtures("file_core_pattern")  # asks for the kernel's writer
def test_staged_core_removed_before_it_is_taken(start_victim, out_dir):
    """The kernel's core, held by descriptor, loses its name in the staging
    directory (a clean-up of /var/tmp): snapcore copies it from the
    descriptor; before, "check free space and permissions there"."""
    victim = start_victim("sleep")

    def work():
        from snapcore.core import store
        store.store = removing_first(store.store,
                                     lambda core, *_: os.unlink(core.name, dir_fd=core.dir_fd))
        try:
            snap = take(victim.pid, Request(output_dir=out_dir, max_per_hour=0,
                                            writer="kernel"))
            return {"core": str(snap.core_path)}
        except SnapcoreError as exc:
            return {"error": exc.one_line(), "exit_code": int(exc.exit_code)}

    result = in_worker(work)
    assert "core" in result, result
    assert prstatus_pids(Path(result["core"])) == [victim.pid]
    assert Path(result["core"]).with_suffix(".json").exists()
    victim.assert_unharmed()


def test_core_removed_from_the_output_directory_before_it_is_named(start_victim, out_dir):
    """snapcore's writer's core, under its hidden name, removed by someone
    else: said so (exit 10), and no record is left behind for it."""
    victim = start_victim("sleep")

    def work():
        from snapcore.engine import dump_snapcore as write

        def gone(snap):
            os.unlink(snap.core_path)
            return snap
        real = write.dump_and_store
        write.dump_and_store = lambda *args: gone(real(*args))
        try:
            take(victim.pid, Request(output_dir=out_dir, max_per_hour=0, writer="snapcore"))
            return {}
        except SnapcoreError as exc:
            return {"error": exc.one_line(), "exit_code": int(exc.exit_code)}

    result = in_worker(work)
    assert result.get("exit_code") == ExitCode.OUTPUT, result
    assert "was removed from" in result["error"] and "not by snapcore" in result["error"]
    assert "free space" not in result["error"]
    assert [p.name for p in out_dir.iterdir() if not p.name.startswith(".snapcore")] == []
    victim.assert_unharmed()


# 6. A record of the wrong shape beside the others

GOOD, BAD = "20261201T100000.000Z_nginx_12", "20261202T100000.000Z_bad_13"


def good_record(base: str) -> dict:
    """A record as records.write_sidecar writes it, for the core BASE.core."""
    stamp, name, pid = base.split("_")
    taken = f"{stamp[:4]}-{stamp[4:6]}-{stamp[6:11]}:{stamp[11:13]}:{stamp[13:]}"
    return {"snapcore_version": "0.1.0", "taken_at": taken, "reason": "",
            "target": {"pid": int(pid), "name": name, "exe": f"/usr/bin/{name}",
                       "cmdline": [name], "build_id": None,
                       "started_at": "2026-01-01T00:00:00Z", "user": "root", "uid": 0,
                       "program": name},
            "threads": [{"tid": int(pid), "name": name, "core_lwp": int(pid),
                         "child_tid": None}],
            "pause_ms": 1.5, "dump_seconds": 0.2, "priority_steps": [],
            "core": {"file": f"{base}.core", "size": 4, "allocated": 4096,
                     "compressed": False},
            "regions_missing": [], "writer": {"name": "kernel", "reason": ""}, "notes": [],
            "kernel": "6.1", "hostname": "h"}


def place(directory: Path, base: str, record) -> Path:
    """BASE.core and its record BASE.json, `record` as given."""
    (directory / f"{base}.core").write_bytes(b"core")
    sidecar = directory / f"{base}.json"
    sidecar.write_text(record if isinstance(record, str) else json.dumps(record))
    return sidecar


def wrong(change):
    record = good_record(BAD)
    return change(record) or record


WRONG = {
    "pid a string": lambda r: r["target"].update(pid="x"),
    "threads null": lambda r: r.update(threads=None),
    "a list": lambda r: [r],
    "not JSON": lambda r: '{"taken_at": ',
    "taken_at a number": lambda r: r.update(taken_at=5),
    "taken_at no time": lambda r: r.update(taken_at="yesterday"),
    "core a string": lambda r: r.update(core="x.core"),
    "cmdline of numbers": lambda r: r["target"].update(cmdline=[1, 2]),
    "a thread a string": lambda r: r.update(threads=["main"]),
    "target a list": lambda r: r.update(target=[13]),
    "name a list": lambda r: r["target"].update(name=["bad"]),
}


@pytest.mark.parametrize("what", WRONG)
def test_one_record_of_the_wrong_shape_is_skipped_with_a_warning(what, tmp_path):
    good = place(tmp_path, GOOD, good_record(GOOD))
    bad = place(tmp_path, BAD, wrong(WRONG[what]))
    (tmp_path / "settings.json").write_text("[1, 2]")  # not snapcore's: not a word of it
    for args in (["list"], ["list", "--json"], ["list", "--name", "ngi"], ["info"],
                 ["info", "--json", "12"], ["prune", "--keep", "0", "--dry-run"]):
        proc = run_snapcore(*args, "-o", str(tmp_path))
        assert proc.returncode == 0, (args, proc.stderr)
        warnings = proc.stderr.splitlines()
        assert warnings and warnings[0].startswith(f"snapcore: warning: skipped {bad}: "), \
            (args, proc.stderr)
        assert "settings.json" not in proc.stderr and "Traceback" not in proc.stderr
        assert "nginx" in proc.stdout, (args, proc.stdout)
        if args == ["list", "--json"]:
            assert [s["pid"] for s in json.loads(proc.stdout)["snapshots"]] == [12]
        if args[0] == "prune":
            assert str(bad.with_suffix(".core")) not in proc.stdout  # never touched
    assert good.exists() and bad.exists() and bad.with_suffix(".core").exists()


@pytest.mark.unit
def test_records_says_which_were_left_out(tmp_path):
    from snapcore.core import records
    place(tmp_path, GOOD, good_record(GOOD))
    bad = place(tmp_path, BAD, wrong(WRONG["threads null"]))
    skipped: list[str] = []
    found = records.records(tmp_path, skipped)
    assert [r.data.target.pid for r in found] == [12]
    assert skipped == [f"{bad}: 'threads' is null, not a list"]
    assert records.shape_problem(good_record(GOOD)) is None
