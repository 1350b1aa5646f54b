"""The operator's workflow: naming targets, the record beside each core, list,
prune, compression, stacks and syslog."""

from __future__ import annotations

import json
import os
import platform
import re
import select
import shutil
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from snapcore.core import compress, records
from snapcore.errors import ExitCode

from conftest import run_snapcore, snap_json
from helpers import on_terminal, process_state, prstatus_pids, wait_until


def test_name_pattern_ambiguous_then_all(start_victim, out_dir):
    first, second = start_victim("sleep"), start_victim("read")
    pattern = f"victim (sleep|read) {first.report.parent}"
    proc = run_snapcore("-f", "--name", pattern, "-o", str(out_dir))
    assert proc.returncode == ExitCode.USAGE
    assert "matches 2 processes" in proc.stderr and "--all" in proc.stderr
    assert str(first.pid) in proc.stderr and str(second.pid) in proc.stderr
    code, doc = snap_json("-f", "--name", pattern, "--all", "-o", str(out_dir))
    assert code == 0, doc
    assert sorted(s["target"]["pid"] for s in doc["snapshots"]) == sorted(
        [first.pid, second.pid])
    first.assert_unharmed()
    second.assert_unharmed()


def test_pidfile_live_and_stale(start_victim, out_dir, tmp_path):
    victim = start_victim("sleep")
    pidfile = tmp_path / "service.pid"
    pidfile.write_text(f"{victim.pid}\n")
    code, doc = snap_json("--pidfile", str(pidfile), "-o", str(out_dir))
    assert code == 0 and doc["target"]["pid"] == victim.pid
    dead = subprocess.Popen(["true"])
    dead.wait()
    pidfile.write_text(f"{dead.pid}\n")
    proc = run_snapcore("--pidfile", str(pidfile), "-o", str(out_dir))
    assert proc.returncode == ExitCode.NO_SUCH_PROCESS and "stale" in proc.stderr


def test_several_targets_in_one_call(start_victim, out_dir):
    a, b = start_victim("sleep"), start_victim("futex")
    code, doc = snap_json("-o", str(out_dir), str(a.pid), "4194000", str(b.pid))
    assert code == ExitCode.NO_SUCH_PROCESS and doc["ok"] is False
    oks = [s["ok"] for s in doc["snapshots"]]
    assert oks == [True, False, True]
    a.assert_unharmed()
    b.assert_unharmed()


def readelf_build_id(path: str) -> str:
    out = subprocess.run(["readelf", "-n", path], capture_output=True, text=True).stdout
    return next(line.split()[-1] for line in out.splitlines() if "Build ID" in line)


def test_record_beside_the_core(victim_exe, tmp_path, out_dir):
    report = tmp_path / "report.txt"
    env = dict(os.environ, SNAPCORE_TEST_SECRET="hunter2-do-not-record")
    target = subprocess.Popen([str(victim_exe), "sleep", str(report)], env=env,
                              stdout=subprocess.PIPE)
    try:
        assert target.stdout.readline() == b"ready\n"
        code, doc = snap_json("--reason", "INC-1234", "-o", str(out_dir), str(target.pid))
        assert code == 0, doc
        sidecar = Path(doc["core"]["record"])
        assert stat.S_IMODE(sidecar.stat().st_mode) == 0o600
        text = sidecar.read_text()
        assert "hunter2" not in text  # nothing from the environment
        rec = json.loads(text)
        proc = psutil.Process(target.pid)
        t = rec["target"]
        assert (t["pid"], t["name"], t["exe"]) == (target.pid, "victim", str(victim_exe))
        assert t["cmdline"] == proc.cmdline()
        assert t["build_id"] == readelf_build_id(str(victim_exe))
        started = time.mktime(time.strptime(t["started_at"][:19], "%Y-%m-%dT%H:%M:%S")) \
            - time.timezone
        assert abs(started - proc.create_time()) < 2
        assert t["user"] == "root" and t["uid"] == 0
        assert rec["reason"] == "INC-1234"
        assert [th["tid"] for th in rec["threads"]] == [target.pid]
        assert rec["core"]["file"] == Path(doc["core"]["path"]).name
        assert rec["core"]["size"] == Path(doc["core"]["path"]).stat().st_size
        assert rec["pause_ms"] > 0 and rec["dump_seconds"] >= 0
        assert rec["kernel"] == platform.release()
        assert rec["hostname"] == socket.gethostname()
        assert rec["snapcore_version"] and rec["taken_at"].endswith("Z")
        # The keys scripts read are those written before records had a
        # version (tests/records), in the same order, the version first.
        before = json.loads((Path(__file__).parent / "records" /
                             "written-before-version.json").read_text())
        assert rec["version"] == 1 and keys(rec) == ["version", *keys(before)]
        info = run_snapcore("info", "--json", "-o", str(out_dir), str(target.pid))
        assert json.loads(info.stdout)["record"] == rec, info.stderr
    finally:
        target.kill()
        target.wait()


def keys(doc: dict, at: str = "") -> list[str]:
    """Every key of a JSON object, its objects' (a list's first) too, in order."""
    out = []
    for key, value in doc.items():
        out.append(at + key)
        if isinstance(value, list) and value and isinstance(value[0], dict):
            value = value[0]
        if isinstance(value, dict):
            out += keys(value, f"{at}{key}.")
    return out


def age(record: Path, seconds: float) -> None:
    """Make a real snapshot look older by its record (the clock is not ours to move)."""
    data = json.loads(record.read_text())
    data["taken_at"] = time.strftime("%Y-%m-%dT%H:%M:%S.000000Z",
                                     time.gmtime(time.time() - seconds))
    record.write_text(json.dumps(data))


@pytest.mark.slow
def test_list_and_prune_never_touch_foreign_files(start_victim, threads_exe, out_dir):
    sleeper, threaded = start_victim("sleep"), start_victim("eight", exe=threads_exe)
    taken = {}
    for victim, ages in ((sleeper, (0, 3600, 86400 * 3, 86400 * 10)),
                         (threaded, (0, 86400 * 8))):
        for seconds in ages:
            code, doc = snap_json("--max-per-hour", "0", "-o", str(out_dir),
                                  str(victim.pid))
            assert code == 0, doc
            age(Path(doc["core"]["record"]), seconds)
            taken[(victim.pid, seconds)] = Path(doc["core"]["path"])
    foreign = [out_dir / "notes.txt", out_dir / "someone-elses.core",
               out_dir / "config.json"]
    foreign[0].write_text("keep me")
    foreign[1].write_bytes(b"\x7fELF")
    foreign[2].write_text('{"not": "ours"}')

    listing = json.loads(run_snapcore("list", "--json", "-o", str(out_dir)).stdout)
    assert len(listing["snapshots"]) == 6
    times = [s["taken_at"] for s in listing["snapshots"]]
    assert times == sorted(times, reverse=True)
    only_threads = json.loads(run_snapcore("list", "--json", "--name", "threads", "-o",
                                           str(out_dir)).stdout)
    assert {s["pid"] for s in only_threads["snapshots"]} == {threaded.pid}
    recent = json.loads(run_snapcore("list", "--json", "--since", "2h", "-o",
                                     str(out_dir)).stdout)
    assert len(recent["snapshots"]) == 3
    piped = run_snapcore("list", "-o", str(out_dir))  # not a terminal: plain columns
    assert piped.returncode == 0
    rows = [line.split("\t") for line in piped.stdout.splitlines()]
    assert rows[0][0] == "taken_at" and rows[0][-1] == "core"
    assert {r[-1] for r in rows[1:]} == {str(p) for p in taken.values()}  # full paths
    assert all(len(r) == len(rows[0]) for r in rows)
    newest = run_snapcore("list", "-q", "--latest", "--name", "threads", "-o", str(out_dir))
    assert newest.stdout.splitlines() == [str(taken[(threaded.pid, 0)])]
    nowhere = run_snapcore("list", "-o", str(out_dir / "nope"))
    assert nowhere.returncode == 0 and nowhere.stderr.startswith("snapcore: warning: no output")

    dry = run_snapcore("prune", "--keep", "1", "--dry-run", "-o", str(out_dir))
    assert "would remove 4 snapshot(s), kept 2" in dry.stdout
    assert all(p.exists() for p in taken.values())
    assert run_snapcore("prune", "--keep", "3", "-o", str(out_dir)).returncode == 0
    oldest = taken[(sleeper.pid, 86400 * 10)]
    assert not oldest.exists() and not records.sidecar_path(oldest).exists()
    assert run_snapcore("prune", "--older-than", "7d", "-o", str(out_dir)).returncode == 0
    assert not taken[(threaded.pid, 86400 * 8)].exists()
    assert taken[(sleeper.pid, 86400 * 3)].exists()
    newest_size = sum(p.stat().st_size for p in (taken[(sleeper.pid, 0)],
                                                 taken[(threaded.pid, 0)]))
    assert run_snapcore("prune", "--max-total", str(newest_size + 8192), "-o",
                        str(out_dir)).returncode == 0
    assert sorted(r.core for r in records.records(out_dir)) == sorted(
        [taken[(sleeper.pid, 0)], taken[(threaded.pid, 0)]])
    for f in foreign:
        assert f.exists(), f"prune touched {f}"
    sleeper.assert_unharmed()
    threaded.assert_unharmed()


def test_compression_round_trips_to_the_identical_core(start_victim, out_dir, tmp_path):
    victim = start_victim("fat")
    code, doc = snap_json("-o", str(out_dir), str(victim.pid))
    assert code == 0
    core = Path(doc["core"]["path"])
    original = tmp_path / "original.core"
    shutil.copyfile(core, original)
    packed = compress.compress(core)
    assert not core.exists() and packed.name.endswith(".core.zst")
    assert packed.stat().st_size < original.stat().st_size
    unpacked = tmp_path / "unpacked.core"
    compress.decompress_to(packed, unpacked)
    assert unpacked.read_bytes() == original.read_bytes()
    # and from the command line: the record says compressed, list shows both kinds
    code, doc = snap_json("--compress", "-o", str(out_dir), str(victim.pid))
    assert code == 0 and doc["core"]["path"].endswith(".core.zst")
    rec = json.loads(Path(doc["core"]["record"]).read_text())
    assert rec["core"]["compressed"] is True
    kinds = {s["compressed"] for s in json.loads(
        run_snapcore("list", "--json", "-o", str(out_dir)).stdout)["snapshots"]}
    assert kinds == {True, False}
    compress.decompress_to(Path(doc["core"]["path"]), tmp_path / "second.core")
    assert prstatus_pids(tmp_path / "second.core") == [victim.pid]
    victim.assert_unharmed()


def test_stacks_of_a_multithreaded_target(start_victim, threads_exe, out_dir):
    victim = start_victim("eight", exe=threads_exe)
    proc = run_snapcore("stacks", "-o", str(out_dir), str(victim.pid))
    assert proc.returncode == 0, proc.stderr
    for function in ("main_sleeper", "sleeper_thread", "condvar_thread",
                     "pipe_reader_thread", "busy_thread", "mutex_holder_thread",
                     "mutex_waiter_thread", "xmm_thread"):
        assert function in proc.stdout, function
    core = next(p for p in out_dir.iterdir() if p.name.endswith(".core"))
    again = run_snapcore("stacks", "--core", str(core))
    assert again.returncode == 0 and "mutex_waiter_thread" in again.stdout
    victim.wait_for_heartbeats(victim.heartbeats())
    victim.assert_unharmed()


def test_syslog_lines_for_snapshots_and_refusals(start_victim, out_dir, tmp_path):
    path = str(tmp_path / "log.sock")
    sink = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sink.bind(path)
    sink.settimeout(10)
    try:
        victim = start_victim("sleep")
        env = dict(os.environ, SNAPCORE_SYSLOG_SOCKET=path)
        ok = subprocess.run([sys.executable, "-m", "snapcore", "-q", "--reason", "nightly", "-o",
                             str(out_dir), str(victim.pid)], env=env, capture_output=True,
                            text=True, cwd=Path(__file__).parent.parent)
        assert ok.returncode == 0, ok.stderr
        line = sink.recv(8192).decode()
        assert line.startswith("<30>snapcore[") and f"(pid {victim.pid})" in line
        assert "paused" in line and ok.stdout.strip() in line
        zombie = subprocess.Popen(["true"])
        wait_until(lambda: process_state(zombie.pid) == "Z", "it has exited, not reaped")
        subprocess.run([sys.executable, "-m", "snapcore", "-o", str(out_dir), str(zombie.pid)],
                       env=env, capture_output=True, cwd=Path(__file__).parent.parent)
        line = sink.recv(8192).decode()
        assert line.startswith("<28>") and f"refused snapshot of pid {zombie.pid}" in line
        zombie.wait()
    finally:
        sink.close()


def test_shell_completion_script():
    proc = subprocess.run([sys.executable, "-c", "from snapcore.cli.app import main; main()"],
                          env=dict(os.environ, _SNAPCORE_COMPLETE="bash_source"),
                          capture_output=True, text=True, cwd=Path(__file__).parent.parent)
    assert "_snapcore_completion" in proc.stdout


def test_watch_fires_on_rss_and_honours_count_and_cooldown(start_victim, out_dir):
    victim = start_victim("grow")  # 4 MiB more every 100 ms, up to 96 MiB
    proc = run_snapcore("watch", "--json", "--rss", "40M", "--for", "0.3", "--interval",
                        "0.1", "--count", "2", "--cooldown", "1", "-o", str(out_dir),
                        str(victim.pid))
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]  # one JSON per line
    assert lines[-1]["event"] == "end" and lines[-1]["fired"] is True
    assert lines[-1]["reason"] == "2 snapshot(s) taken, as many as asked"
    samples = [e for e in lines if e["event"] == "sample"]
    assert samples and all(re.fullmatch(r"\d{8}T\d{6}\.\d{3}Z", e["time"]) for e in samples)
    assert any(e["met"] for e in samples) and not samples[0]["met"]
    assert [e["event"] for e in lines].count("fire") == 2
    shots = [e for e in lines if e["event"] == "snapshot"]
    assert len(shots) == 2 and all(s["ok"] for s in shots)
    taken = [time.mktime(time.strptime(s["taken_at"][:19], "%Y-%m-%dT%H:%M:%S"))
             + float("0." + s["taken_at"][20:26]) for s in shots]
    assert taken[1] - taken[0] >= 1.0  # the cooldown
    # It fired once the heap had grown past 40 MiB, not before: the first core
    # holds at least that much.
    assert shots[0]["core_estimate"] >= 40 << 20, shots[0]["core_estimate"]
    record = json.loads(Path(shots[0]["core"]["record"]).read_text())
    assert record["reason"].startswith("watch: rss")
    victim.assert_unharmed()


def test_watch_logs_samples_and_ends_when_the_target_exits(victim_exe, tmp_path, out_dir):
    target = subprocess.Popen([str(victim_exe), "read", str(tmp_path / "r.txt")],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert target.stdout.readline() == b"ready\n"
    watcher = subprocess.Popen([sys.executable, "-m", "snapcore", "watch", "--fds", "1000",
                                "--interval", "0.1", "-o", str(out_dir), str(target.pid)],
                               stderr=subprocess.PIPE, text=True,
                               cwd=Path(__file__).parent.parent)
    ready, _, _ = select.select([watcher.stderr], [], [], 30)
    first = watcher.stderr.readline() if ready else ""  # its first sample
    target.stdin.close()  # read() returns 0: the target exits
    target.wait()
    _, rest = watcher.communicate(timeout=30)
    err = first + rest
    assert watcher.returncode == ExitCode.WATCH_ENDED  # nothing fired: not a success
    assert "fds" in err and "threads" in err
    assert re.match(r"\d{8}T\d{6}\.\d{3}Z cpu ", first), first  # UTC, like the cores
    assert f"watch ended: process {target.pid} exited (no condition fired)" in err


def test_stacks_of_a_file_gdb_cannot_read_is_an_error(tmp_path):
    """gdb's failure is snapcore's error (exit 14), never an empty success."""
    bogus = tmp_path / "not-a.core"
    bogus.write_bytes(b"\x7fELF" + b"\0" * 60)
    proc = subprocess.run([sys.executable, "-m", "snapcore", "stacks", "--core", str(bogus),
                           "--exe", sys.executable], capture_output=True, text=True)
    assert proc.returncode == ExitCode.TOOL, proc.stderr
    assert "gdb could not read" in proc.stderr


def test_stacks_without_gdb_says_so(start_victim, out_dir):
    victim = start_victim("sleep")
    code, doc = snap_json("-o", str(out_dir), str(victim.pid))
    assert code == 0
    no_gdb = dict(os.environ, PATH="/nonexistent")
    proc = subprocess.run([sys.executable, "-m", "snapcore", "stacks", "--core",
                           doc["core"]["path"]], env=no_gdb, capture_output=True, text=True,
                          cwd=Path(__file__).parent.parent)
    assert proc.returncode == ExitCode.TOOL
    assert "needs gdb" in proc.stderr and "apt-get install gdb" in proc.stderr


def test_summary_prints_the_core_path_whole_at_80_columns(start_victim, tmp_path):
    """The path is the line an operator copies: never cut, never wrapped, and
    no line of the summary ends in padding (piped or not)."""
    out_dir = tmp_path / ("a-rather-long-directory-name-for-cores-" * 2) / "cores"
    victim = start_victim("sleep")
    code, text = on_terminal("-o", str(out_dir), str(victim.pid))
    assert code == 0, text
    lines = text.splitlines()
    core_lines = [x for x in lines if x.startswith("core ")]
    assert len(core_lines) == 1, lines
    path = core_lines[0].split(None, 1)[1].strip()
    assert len(str(out_dir)) > 80 and path.startswith(str(out_dir)) and Path(path).exists()
    piped = run_snapcore("--max-per-hour", "0", "-o", str(out_dir), str(victim.pid))
    assert piped.returncode == 0
    assert [x for x in piped.stdout.splitlines() if x != x.rstrip()] == []
    victim.assert_unharmed()


def test_syslog_asked_for_without_a_socket_says_so(start_victim, out_dir, tmp_path):
    victim = start_victim("sleep")
    env = dict(os.environ, SNAPCORE_SYSLOG_SOCKET=str(tmp_path / "no-such.sock"))
    proc = subprocess.run([sys.executable, "-m", "snapcore", "--syslog", "-q", "-o",
                           str(out_dir), str(victim.pid)], env=env, capture_output=True,
                          text=True, cwd=Path(__file__).parent.parent)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.startswith("snapcore: warning: --syslog: no syslog socket")
    assert proc.stderr.count("\n") == 1
    victim.assert_unharmed()


def test_every_command_names_its_process_the_same_ways(start_victim, out_dir, tmp_path):
    """check, stacks and watch take PID, --name, --pidfile and --unit like snap."""
    victim, other = start_victim("sleep"), start_victim("sleep")
    unique = str(victim.report)  # on this target's command line, and nowhere else
    checked = run_snapcore("check", "--json", "-f", "--name", unique, "-o", str(out_dir))
    assert checked.returncode == 0, checked.stderr
    assert json.loads(checked.stdout)["target"]["pid"] == victim.pid
    pidfile = tmp_path / "victim.pid"
    pidfile.write_text(f"{victim.pid}\n")
    stacks = run_snapcore("stacks", "--pidfile", str(pidfile), "-o", str(out_dir))
    assert stacks.returncode == 0, stacks.stderr
    assert "mode_sleep" in stacks.stdout
    # Both targets' reports live in one directory: --all names two, and a
    # command that takes one says so in one line.
    both = run_snapcore("check", "-f", "--name", str(victim.report.parent), "--all",
                        "-o", str(out_dir))
    assert both.returncode == ExitCode.USAGE and "this command takes one" in both.stderr
    watcher = subprocess.Popen([sys.executable, "-m", "snapcore", "watch", "-f", "--name",
                                str(other.report), "--fds", "100000", "--interval", "0.1",
                                "-o", str(out_dir)], stderr=subprocess.PIPE, text=True,
                               cwd=Path(__file__).parent.parent)
    ready, _, _ = select.select([watcher.stderr], [], [], 30)
    first = watcher.stderr.readline() if ready else ""  # its first sample of `other`
    other.stop()
    _, rest = watcher.communicate(timeout=30)
    assert watcher.returncode == ExitCode.WATCH_ENDED, first + rest
    assert f"process {other.proc.pid} exited" in first + rest
    victim.assert_unharmed()


def test_watch_waits_for_a_process_and_fires_from_below(victim_exe, tmp_path, out_dir):
    """--wait --name: watching starts before the process does (procdump -w);
    --cpu-below fires on a process that does nothing."""
    report = tmp_path / "late-starter.txt"
    watcher = subprocess.Popen([sys.executable, "-m", "snapcore", "watch", "--json", "--wait", "-f",
                                "--name", str(report), "--cpu-below", "50", "--for", "0.3",
                                "--interval", "0.1", "-o", str(out_dir)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               cwd=Path(__file__).parent.parent)
    ready, _, _ = select.select([watcher.stdout], [], [], 30)
    waiting = json.loads(watcher.stdout.readline() if ready else "{}")
    assert waiting.get("event") == "waiting", waiting
    target = subprocess.Popen([str(victim_exe), "sleep", str(report)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert target.stdout.readline() == b"ready\n"
        out, err = watcher.communicate(timeout=60)
        assert watcher.returncode == 0, err
        events = [json.loads(line) for line in out.splitlines()]
        fired = [e for e in events if e["event"] == "fire"]
        assert fired and fired[0]["trigger"].startswith("cpu 0% < 50%"), events
        shot = next(e for e in events if e["event"] == "snapshot")
        assert shot["ok"] and shot["target"]["pid"] == target.pid
        assert target.poll() is None and process_state(target.pid) in "SR"
    finally:
        target.kill()
        target.wait()


@pytest.mark.slow
def test_info_and_debug_open_the_newest_snapshot(start_victim, threads_exe, out_dir):
    """Like coredumpctl info/debug: by pid or name, plain or compressed."""
    victim = start_victim("eight", exe=threads_exe)
    assert run_snapcore("-q", "-o", str(out_dir), str(victim.pid)).returncode == 0
    zst = run_snapcore("-q", "--compress", "--force", "rate-limit", "-o", str(out_dir),
                       str(victim.pid))
    assert zst.returncode == 0 and zst.stdout.strip().endswith(".zst"), zst.stderr
    info = run_snapcore("info", "-o", str(out_dir), str(victim.pid))
    assert info.returncode == 0, info.stderr
    assert f"core      {zst.stdout.strip()}" in info.stdout  # the newest one, whole
    assert "threads   8: threads x8" in info.stdout and "Program terminated with signal SIGABRT" \
        in info.stderr and "not a crash" in info.stderr
    doc = json.loads(run_snapcore("info", "--json", "-o", str(out_dir), "threads").stdout)
    assert doc["core"] == zst.stdout.strip() and doc["record"]["target"]["pid"] == victim.pid
    for match in (str(victim.pid), zst.stdout.strip()):
        proc = run_snapcore("debug", "-o", str(out_dir), match, "-A",
                            "-batch -nx -ex 'thread apply all bt'")
        assert proc.returncode == 0, proc.stderr
        assert "mutex_waiter_thread" in proc.stdout and "main_sleeper" in proc.stdout
    plain = next(p for p in out_dir.iterdir() if p.name.endswith(".core"))
    proc = run_snapcore("debug", str(plain), "-A", "-batch -nx -ex 'info threads'")
    listed = re.findall(r"^\*?\s+\d+\s+Thread \S+ \(LWP \d+\)", proc.stdout, re.M)
    assert proc.returncode == 0 and len(listed) == 8, proc.stdout
    assert not [p for p in Path(os.environ.get("TMPDIR", "/var/tmp")).glob("snapcore-debug-*")]
    missing = run_snapcore("info", "-o", str(out_dir), "no-such-program")
    assert missing.returncode == ExitCode.NO_SUCH_PROCESS
    assert missing.stderr.count("\n") == 1 and "no snapshot matching" in missing.stderr
    victim.assert_unharmed()


def test_debug_warns_when_the_executable_changed(start_victim, victim_exe, tmp_path, out_dir):
    exe = tmp_path / "victim-copy"
    shutil.copy(victim_exe, exe)
    victim = start_victim("sleep", exe=exe)
    assert run_snapcore("-q", "-o", str(out_dir), str(victim.pid)).returncode == 0
    victim.stop()
    subprocess.run(["gcc", "-O0", "-x", "c", "-o", str(exe), "-"], check=True,
                   input="int main(void) { return 0; }", text=True)  # an upgrade
    proc = run_snapcore("debug", "-o", str(out_dir), "-A", "-batch -nx")
    assert "is not the executable that was snapshotted (build-id" in proc.stderr


def test_stacks_says_where_the_snapshot_is_kept_or_discards_it(start_victim, out_dir):
    victim = start_victim("sleep")
    kept = run_snapcore("stacks", "-o", str(out_dir), str(victim.pid))
    assert kept.returncode == 0 and "mode_sleep" in kept.stdout
    core = next(p for p in out_dir.iterdir() if p.name.endswith(".core"))
    assert f"the snapshot is kept: {core} (" in kept.stderr
    gone = run_snapcore("stacks", "--discard", "--force", "rate-limit", "-o", str(out_dir),
                        str(victim.pid))
    assert gone.returncode == 0 and "mode_sleep" in gone.stdout, gone.stderr
    assert "kept" not in gone.stderr
    # The kept snapshot: its core, its record and its stacks (for info); the
    # discarded one: nothing.
    assert sorted(p.name for p in out_dir.iterdir() if not p.name.startswith(".")) == \
        sorted([core.name, core.name[:-5] + ".json", core.name[:-5] + ".stacks.json"])
    victim.assert_unharmed()
