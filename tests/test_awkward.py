"""Awkward targets and outputs: a name that is not UTF-8, a target gone
right after the fork, an exec while snapcore attaches, a reader of standard
output that goes away, a staged core removed meanwhile, a record of the
wrong shape.  Each ends in a clear line and a documented exit code, or is
harmless, and the target is untouched."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from snapcore.linux.proctext import readable

from conftest import TARGETS, run_snapcore, snap_json
from helpers import check_json, prstatus_pids

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
