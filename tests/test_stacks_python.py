"""CPython stacks from snapcore's cores, read by pystack: the distribution's
python3 as the target (tests/targets/pythreads.py), its threads sleeping, waiting
on a lock, computing in Python and in a C extension; the frames and lines
compared with the program's own sys._current_frames() at the same moment.
And the sampling profiler on a target whose hot function is known.
pystack must be installed (the test extra): a missing reader fails, never skips.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TARGETS, run_snapcore

from snapcore.errors import ExitCode

PYTHON = "/usr/bin/python3"
SCRIPT = TARGETS / "pythreads.py"
# The distribution's python3, and the newest other CPython this machine has
# (pyenv's, on the project's machines): pystack reads each version's own
# interpreter structures, which change from one minor version to the next.
OTHERS = sorted(Path("/root/.pyenv/versions").glob("3.*/bin/python3"),
                key=lambda p: tuple(int(x) for x in p.parts[-3].split(".")))
PYTHONS = [PYTHON] + [str(p) for p in OTHERS[-1:]]


def loop_lines() -> dict[str, set[int]]:
    """function -> the lines marked `# LOOP function` in the target."""
    marks: dict[str, set[int]] = {}
    for number, line in enumerate(SCRIPT.read_text().splitlines(), 1):
        m = re.search(r"# LOOP (\w+)", line)
        if m:
            marks.setdefault(m.group(1), set()).add(number)
    return marks


@pytest.fixture
def pythreads(start_victim):
    def start(mode: str, python: str = PYTHON):
        return start_victim(mode, exe=SCRIPT, prefix=(python,))
    return start


def frames_of(thread: dict) -> list[tuple[str, str, int]]:
    return [(f["function"], f["file"], f["line"]) for f in thread["frames"] if not f["native"]]


@pytest.mark.parametrize("python", PYTHONS)
def test_python_threads_as_the_program_itself_sees_them(pythreads, out_dir, python):
    victim = pythreads("threads", python)
    own = json.loads(Path(str(victim.report) + ".frames").read_text())
    proc = run_snapcore("stacks", "--json", "--max-per-hour", "0", "-o", str(out_dir),
                        str(victim.pid))
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert (doc["lang"], doc["reader"]) == ("python", "pystack"), doc
    version = subprocess.run([python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    assert re.fullmatch(r"\d+\.\d+(\.\d+)?", doc["reader_version"]), doc
    assert doc["runtime_version"] == version, (doc["runtime_version"], version)
    read = {t["id"]: t for t in doc["threads"]}
    loops = loop_lines()
    for tid, thread in own.items():
        if thread["name"] == "MainThread":
            continue  # it wrote this file meanwhile; where it is now is checked below
        mine, theirs = thread["frames"][::-1], frames_of(read[int(tid)])[::-1]
        # From the outermost frame to the thread's own function, frame for
        # frame, line for line (threading's frames included).
        entry = [i for i, f in enumerate(mine) if f[0] == thread["name"]][0]
        assert [tuple(f) for f in mine[:entry]] == theirs[:entry], (thread, theirs)
        # Then each frame is in its function's loop: a blocked thread on the
        # very line; a computing one anywhere in its loop.
        for function, file, line in theirs[entry:]:
            assert file == str(SCRIPT) and line in loops[function], (thread["name"], theirs)
        assert theirs[entry][0] == thread["name"]
        if thread["name"] in ("sleeper", "lock_waiter"):
            assert theirs[entry:] == [tuple(f) for f in mine[entry:]]
    main = frames_of(read[victim.pid])
    assert [f[0] for f in main][-2:] == ["main", "<module>"], main
    # Text output says who read it.
    text = run_snapcore("stacks", "--max-per-hour", "0", "--discard", "-o", str(out_dir),
                        str(victim.pid))
    assert text.returncode == 0, text.stderr
    assert re.match(r"# python 3\.\d+: 5 threads read by pystack \d", text.stdout), text.stdout
    # (No GIL state is asserted here: at a snapshot taken while the GIL is
    # handed from one thread to another, which a loaded machine stretches,
    # no thread holds it.)
    assert "lock_waiter at " in text.stdout
    victim.assert_unharmed()


def test_native_frames_of_python_threads_and_lang_native(pythreads, out_dir):
    victim = pythreads("threads")
    # The hasher is in OpenSSL's SHA256 with the GIL released, but between two
    # hashes it waits for the GIL, longer on a loaded machine (it
    # runs at nice 19): up to five snapshots, one must find it hashing.
    for _ in range(5):
        proc = run_snapcore("stacks", "--json", "--native", "--max-per-hour", "0", "-o",
                            str(out_dir), str(victim.pid))
        assert proc.returncode == 0, proc.stderr
        doc = json.loads(proc.stdout)
        by_first_python = {}
        for thread in doc["threads"]:
            names = [f["function"] for f in thread["frames"] if not f["native"]]
            by_first_python[names[0]] = [f["function"] for f in thread["frames"]]
        assert any("nanosleep" in f for f in by_first_python["sleeper"]), by_first_python
        assert any("acquire_lock" in f for f in by_first_python["lock_waiter"])
        hasher = by_first_python["hasher"]
        if any("SHA256" in f for f in hasher):
            break
        # Else it waits for the GIL: a condition variable's futex (take_gil
        # itself is `???` in a stripped interpreter without debuginfod).
        assert "cond_wait" in " ".join(hasher[:4]), hasher
    else:
        raise AssertionError(f"the hasher was never seen in SHA256: {by_first_python}")
    # --lang native: gdb's backtraces of the same core, as before.
    core = doc["core"]
    proc = run_snapcore("stacks", "--lang", "native", "--json", "--core", core)
    assert proc.returncode == 0, proc.stderr
    gdb_doc = json.loads(proc.stdout)
    assert gdb_doc["reader"] == "gdb" and "#0 " in gdb_doc["stacks"]
    assert {t["id"] for t in gdb_doc["threads"]} == {t["id"] for t in doc["threads"]}
    victim.assert_unharmed()


def test_sampling_finds_the_hot_function_at_one_slot_per_run(pythreads, out_dir):
    victim = pythreads("hot")
    proc = run_snapcore("stacks", "--samples", "8", "--interval", "0.3", "--format",
                        "collapsed", "--max-per-hour", "1", "-o", str(out_dir),
                        str(victim.pid), timeout=300)
    assert proc.returncode == 0, proc.stderr
    counts = {}
    for line in proc.stdout.splitlines():
        stack, n = line.rsplit(" ", 1)
        counts[stack] = int(n)
    worker = {s: n for s, n in counts.items() if ";worker (pythreads.py)" in s}
    assert sum(worker.values()) == 8, counts  # one worker thread per sample
    hot = sum(n for s, n in worker.items() if s.endswith(";hot (pythreads.py)"))
    assert hot >= 5, worker  # ~90 % of its time: at least 5 of 8 (binomial: p < 0.5 %)
    pauses = re.findall(r"sample (\d)/8: paused ([\d.]+) ms", proc.stderr)
    assert [int(i) for i, _ in pauses] == list(range(1, 9)), proc.stderr
    assert all(float(ms) < 1000 for _, ms in pauses), pauses
    # No core kept, no private directory left; the run took one slot of one:
    # a second run is refused by the rate limit.
    assert [p.name for p in out_dir.iterdir()] == [".snapcore"], list(out_dir.iterdir())
    again = run_snapcore("stacks", "--samples", "2", "--max-per-hour", "1", "-o",
                         str(out_dir), str(victim.pid))
    assert again.returncode == ExitCode.RATE_LIMITED, again.stderr
    # The text summary: the hottest innermost frame first.
    text = run_snapcore("stacks", "--samples", "3", "--interval", "0", "--max-per-hour", "0",
                        "-o", str(out_dir), str(victim.pid), timeout=300)
    assert text.returncode == 0, text.stderr
    assert text.stdout.startswith("# 3 samples of python stacks read by pystack")
    victim.assert_unharmed()


def test_info_shows_each_threads_top_frames_kept_or_read_now(pythreads, out_dir):
    victim = pythreads("threads")
    taken = run_snapcore("stacks", "--json", "--max-per-hour", "0", "-o", str(out_dir),
                         str(victim.pid))
    assert taken.returncode == 0, taken.stderr
    doc = json.loads(taken.stdout)
    kept = Path(doc["core"][:-len(".core")] + ".stacks.json")
    assert json.loads(kept.read_text())["threads"] == doc["threads"]
    # info shows the kept stacks, each thread's innermost frames (--frames).
    text = run_snapcore("info", "--frames", "2", "-o", str(out_dir), str(victim.pid))
    assert text.returncode == 0, text.stderr
    assert re.search(r"^# python 3\.\d+: 5 threads read by pystack", text.stdout, re.M)
    # The sleeper's two innermost frames: its loop, then threading's run.
    block = text.stdout.split("    sleeper at ", 1)[1].splitlines()
    assert block[1].startswith("    run at ") and "outer frames" in block[2], text.stdout
    info = json.loads(run_snapcore("info", "--json", "-o", str(out_dir), str(victim.pid)).stdout)
    assert info["stacks"]["threads"] == doc["threads"], info["stacks"]
    # Kept stacks are what info shows, not a new read: a kept file edited by
    # hand shows as edited (its seconds are the first read's).
    edited = json.loads(kept.read_text())
    edited["reader_version"] = "0.0-kept"
    kept.write_text(json.dumps(edited))
    again = json.loads(run_snapcore("info", "--json", "-o", str(out_dir), str(victim.pid)).stdout)
    assert again["stacks"]["reader_version"] == "0.0-kept"
    # A link planted at the kept stacks' name is not followed: the stacks are
    # read from the core now, by pystack again.
    secret = out_dir.parent / "not-stacks.json"
    secret.write_text(json.dumps(edited))
    kept.unlink()
    kept.symlink_to(secret)
    fresh = json.loads(run_snapcore("info", "--json", "-o", str(out_dir), str(victim.pid)).stdout)
    assert fresh["stacks"]["reader"] == "pystack"
    assert fresh["stacks"]["reader_version"] != "0.0-kept"
    assert {t["id"] for t in fresh["stacks"]["threads"]} == {t["id"] for t in doc["threads"]}
    assert run_snapcore("info", "--frames", "0", "--json", "-o", str(out_dir),
                        str(victim.pid)).stdout.count('"stacks": null') == 1
    # prune removes the kept stacks with their snapshot, never the link's target.
    kept.unlink()
    kept.write_text(json.dumps(doc))
    pruned = run_snapcore("prune", "--keep", "0", "-o", str(out_dir))
    assert pruned.returncode == 0, pruned.stderr
    assert not kept.exists() and not Path(doc["core"]).exists() and secret.exists()
    victim.assert_unharmed()


def test_the_reader_never_imports_from_the_working_directory(pythreads, out_dir, tmp_path):
    """The Python reader runs as a child `python -m`: a `snapcore` package in
    the directory snapcore is run from (a checkout, or one another user
    planted in /tmp) must not be what that child imports."""
    victim = pythreads("threads")
    planted = tmp_path / "cwd" / "snapcore"
    (planted / "core" / "readers").mkdir(parents=True)
    marker = tmp_path / "planted-code-ran"
    for init in (planted, planted / "core", planted / "core" / "readers"):
        (init / "__init__.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    (planted / "core" / "readers" / "python.py").write_text(
        f"open({str(marker)!r}, 'w').close()\n")
    # The command as installed (bin/snapcore), not `python -m snapcore`,
    # which would itself put the directory first on sys.path.
    command = Path(sys.executable).parent / "snapcore"
    proc = subprocess.run([str(command), "stacks", "--json", "--max-per-hour", "0", "-o",
                           str(out_dir), str(victim.pid)], cwd=planted.parent,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["reader"] == "pystack"
    assert not marker.exists()
    victim.assert_unharmed()
