"""Go stacks from snapcore's cores, read by delve: goroutines blocked in a
channel receive, a sleep, a mutex, and one spinning, against the program's
own runtime.Stack(all=true) dump.  golang-go and delve must be installed: a
missing one fails, never skips.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess

import pytest
from conftest import TARGETS, run_snapcore


@pytest.fixture(scope="module")
def gostacks_exe(build_dir):
    assert shutil.which("go") and shutil.which("dlv"), \
        "Go or delve is missing: apt-get install golang-go delve"
    exe = build_dir / "gostacks"
    subprocess.run(["go", "build", "-o", str(exe), str(TARGETS / "gostacks.go")], check=True,
                   env=dict(os.environ, GOCACHE=str(build_dir / "gocache"), GO111MODULE="off"))
    return exe


def own_dump(text: str) -> dict[int, tuple[str, list[tuple[str, int]]]]:
    """goroutine id -> (state, [(function, line)]) from runtime.Stack(all)."""
    out, current = {}, None
    lines = text.splitlines()
    for i, line in enumerate(lines):
        m = re.match(r"^goroutine (\d+) \[([^\],]+)", line)
        if m:
            current = int(m.group(1))
            out[current] = (m.group(2), [])
        elif current and re.match(r"^[\w.(*)/]+\(", line) and i + 1 < len(lines):
            at = re.search(r":(\d+)", lines[i + 1])
            out[current][1].append((line.rsplit("(", 1)[0], int(at.group(1))))
    return out


def test_goroutines_as_the_program_dumps_them(gostacks_exe, start_victim, out_dir):
    victim = start_victim("threads", exe=gostacks_exe)
    own = own_dump(open(f"{victim.report}.stacks").read())
    proc = run_snapcore("stacks", "--json", "--max-per-hour", "0", "-o", str(out_dir),
                        str(victim.pid))
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert (doc["lang"], doc["reader"]) == ("go", "dlv") and \
        doc["runtime_version"].startswith("go1."), doc
    ours = {t["id"]: t for t in doc["threads"]}
    wanted = {"main.receiver": "chan receive", "main.sleeper": "sleep",
              "main.locker": "semacquire"}
    for gid, (state, frames) in own.items():
        functions = [f for f, _ in frames]
        user = [f for f in functions if f in wanted]
        if not user:
            continue
        assert ours[gid]["state"] == state == wanted[user[0]], (gid, ours[gid], own[gid])
        read = [(f["function"], f["line"]) for f in ours[gid]["frames"]]
        # Every frame the program printed, with its line, in order, is
        # among delve's (which also shows the runtime's own frames).
        it = iter(read)
        assert all(any(r == (f, n) for r in it) for f, n in frames), (read, frames)
    spinning = [t for t in doc["threads"]
                if any(f["function"] == "main.spinner" for f in t["frames"])]
    assert len(spinning) == 1, doc["threads"]
    text = run_snapcore("stacks", "--core", doc["core"])
    assert re.match(r"# go go1\.\d+\S*: \d+ goroutines read by dlv", text.stdout), text.stdout
    victim.assert_unharmed()
