"""Links an unprivileged user plants where root's snapcore writes.

Two places another user controls: an output directory everyone may write
(1777, the sticky case the output-dir check accepts), and a target's own root
(a chroot, a mount namespace) whose /var/tmp and /tmp are absolute symlinks.
Every planted link points into a root-only directory (0700, under /root),
which is watched while snapcore runs and compared afterwards: nothing may
be created, written, chowned or removed there.  snapcore either refuses with
one clear line or takes a correct core, and the target is unharmed.

The neighbour is played by this (root) test, which gives what it plants to
`nobody` (lchown): the owner is what the kernel and snapcore judge.  Hard
links to a root-only file stand for any file: with fs.protected_hardlinks
`nobody` may link only files it can read and write, and root writing into
those is harm enough (a record `nobody` can rewrite steers root's gdb).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import psutil
import pytest
import zstandard
from elftools.elf.elffile import ELFFile

from snapcore.errors import ExitCode

from conftest import TARGETS, Victim, run_snapcore, snap_json
from helpers import check_json, cores_in, prstatus_pids, verdicts

NOBODY = 65534


def plant_link(path: Path, target) -> None:
    os.symlink(str(target), path)
    os.lchown(path, NOBODY, NOBODY)


def plant_dir(path: Path, mode: int = 0o700) -> None:
    path.mkdir()
    path.chmod(mode)
    os.chown(path, NOBODY, NOBODY)


def plant_fifo(path: Path) -> None:
    os.mkfifo(path, 0o666)
    os.chown(path, NOBODY, NOBODY)


def tree(top: Path) -> dict:
    """Everything about every entry under `top`, the directory itself too.
    Files named linked* are the targets of planted hard links: their link
    count and ctime move with the planting, their content, mode and owner
    must not."""
    found = {}
    for where, dirs, files in os.walk(top):
        for name in ["."] + dirs + files:
            path = Path(where) / name
            st = path.lstat()
            facts = [stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid,
                     st.st_size, st.st_mtime_ns]
            if not name.startswith("linked"):
                facts += [st.st_nlink, st.st_ctime_ns]
            if stat.S_ISREG(st.st_mode):
                facts.append(hashlib.sha256(path.read_bytes()).hexdigest())
            found[str(path.relative_to(top))] = facts
    return found


def difference(before: dict, after: dict) -> str:
    added = sorted(set(after) - set(before))
    gone = sorted(set(before) - set(after))
    changed = sorted(k for k in set(before) & set(after) if before[k] != after[k])
    return f"added {added}, removed {gone}, changed {changed}"


class Watch(threading.Thread):
    """Polls a directory's tree while snapcore runs: a staging directory made
    there and removed again shows only meanwhile."""

    def __init__(self, top: Path):
        super().__init__(daemon=True)
        self.top, self.before, self.changes = top, tree(top), []
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            now = tree(self.top)
            if now != self.before and now not in self.changes:
                self.changes.append(now)
            time.sleep(0.002)

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.done.set()
        self.join()
        assert self.changes == [], f"{self.top} changed while snapcore ran: " + \
            "; ".join(difference(self.before, c) for c in self.changes)
        after = tree(self.top)
        assert after == self.before, f"{self.top}: {difference(self.before, after)}"


@pytest.fixture
def root_only():
    """A root-only directory (0700 under /root, itself 0700) holding a secret
    and a file that planted hard links point to."""
    top = Path(tempfile.mkdtemp(prefix="snapcore-rootonly-", dir="/root"))
    top.chmod(0o700)
    for name in ("secret", "linked"):
        (top / name).write_bytes(f"root's {name}: never to be written, moved or given\n".encode())
        (top / name).chmod(0o600)
    yield top
    shutil.rmtree(top, ignore_errors=True)


@pytest.fixture
def shared(tmp_path):
    """An output directory everyone may write, sticky (like /var/tmp), root's."""
    path = tmp_path / "shared"
    path.mkdir()
    path.chmod(0o1777)
    return path


def one_line(proc, code: int, *words: str) -> str:
    """The run failed with `code` and said why in one line naming `words`."""
    said = proc.stderr.strip()
    assert proc.returncode == code, f"exit {proc.returncode}: {proc.stderr}{proc.stdout}"
    assert "Traceback" not in said and "internal error" not in said, said
    assert len(said.splitlines()) == 1, said
    for word in words:
        assert word in said, said
    return said


def assert_own_file(path: Path) -> None:
    st = path.lstat()
    assert stat.S_ISREG(st.st_mode) and st.st_nlink == 1 and st.st_uid == 0, (path, st)


def unpacked(core: Path, into: Path) -> Path:
    plain = into / core.name.removesuffix(".zst")
    with open(core, "rb") as src, open(plain, "wb") as dst:
        zstandard.ZstdDecompressor().copy_stream(src, dst)
    return plain


def lock_name(pid: int) -> str:
    from snapcore.engine.ratelimit import program
    from snapcore.linux import procfs
    return "lock-" + hashlib.sha256(program(procfs.read(pid)).encode()).hexdigest()[:16]


# 1. The rate limit's state directory, .snapcore, planted before snapcore made it.

@pytest.mark.parametrize("kind", ["symlink", "foreign"])
def test_a_planted_state_directory_is_refused(kind, start_victim, shared, root_only):
    victim = start_victim("sleep")
    state = shared / ".snapcore"
    if kind == "symlink":
        plant_link(state, root_only)
    else:  # nobody's own, with links where snapcore keeps its state and lock
        plant_dir(state)
        plant_link(state / "state.json", root_only / "state.json")
        os.link(root_only / "linked", state / lock_name(victim.pid))
        plant_fifo(state / "lock-0000000000000000")
    with Watch(root_only):
        proc = run_snapcore("-o", str(shared), str(victim.pid), timeout=60)
        code, doc = check_json("-o", str(shared), str(victim.pid))
    one_line(proc, ExitCode.OUTPUT, str(state), "rm -r")
    assert code == ExitCode.OUTPUT and verdicts(doc)["output-dir"] == "refuse", doc["checks"]
    assert cores_in(shared) == []
    victim.assert_unharmed()


# 2. Every other name snapcore gives its files there, planted the moment a
#    snapcore shows its pid (its staging directory), for each millisecond
#    the snapshot's name may carry.

class Neighbour(threading.Thread):
    """Waits for a snapcore's staging directory in `out`, then plants, for
    each millisecond from its birth on, `plant(pid, name)`: name is what
    placement.core_name gives the core, less ".core"."""

    def __init__(self, out: Path, target_pid: int, plant):
        super().__init__(daemon=True)
        self.out, self.target_pid, self.plant = out, target_pid, plant
        self.names: set[str] = set()
        self.done = threading.Event()

    def run(self) -> None:
        from snapcore.core.placement import core_name
        while not self.done.is_set():
            seen = [m for m in map(re.compile(r"\.snapcore-staging-(\d+)-").match,
                                   os.listdir(self.out)) if m]
            if seen:
                break
            time.sleep(0.0005)
        else:
            return
        pid = int(seen[0].group(1))
        born = os.lstat(self.out / seen[0].string).st_ctime_ns // 1_000_000
        for ms in range(born - 20, born + 3000):
            when = datetime.fromtimestamp(ms / 1000, timezone.utc)
            name = core_name("victim", self.target_pid, when)[:-len(".core")]
            self.plant(pid, name)
            self.names.add(name)
            if self.done.is_set():
                return


def _after_the_core(out: Path, root_only: Path):
    def plant(pid: int, name: str) -> None:
        plant_link(out / f"..snapcore-part-{pid}-{name}.core.zst.part", root_only / "zst-part")
        os.link(root_only / "linked", out / f".{name}.json.{pid}.part")
        plant_link(out / f"{name}.json", root_only / "record")
    return plant


def _the_core(out: Path, root_only: Path):
    def plant(pid: int, name: str) -> None:
        plant_link(out / f".snapcore-part-{pid}-{name}.core", root_only / "core-part")
    return plant


@pytest.mark.parametrize("planted", ["after-the-core", "the-core"])
def test_names_planted_in_a_shared_output_directory(planted, core_pattern, start_victim,
                                                    shared, root_only, tmp_path):
    """The kernel writes a root target's core into a staging directory in the
    output directory; snapcore stores it, compresses it (its partial .zst)
    and writes its record (a partial, then the name).  `after-the-core`:
    links at the names of the compressed partial, the record's partial and
    the record; `the-core`: at the stored core's own hidden name."""
    core_pattern("core")
    victim = start_victim("fat")
    plant = (_after_the_core if planted == "after-the-core" else _the_core)(shared, root_only)
    neighbour = Neighbour(shared, victim.pid, plant)
    neighbour.start()
    with Watch(root_only):
        proc = run_snapcore("--json", "--writer", "kernel", "--compress", "--max-per-hour", "0",
                            "-o", str(shared), str(victim.pid), timeout=120)
        neighbour.done.set()
        neighbour.join()
    doc = json.loads(proc.stdout)
    assert "Traceback" not in proc.stderr, proc.stderr
    if planted == "the-core":
        assert proc.returncode == ExitCode.OUTPUT, doc
        message = doc["error"]["message"]
        assert "\n" not in message and "not snapcore's" in message, doc
        assert all((shared / name).is_symlink() for name in cores_in(shared))
    else:
        assert proc.returncode == 0, doc
        core = Path(doc["core"]["path"])
        assert core.name.removesuffix(".core.zst") in neighbour.names, \
            f"the neighbour planted too late to test anything: {core.name}"
        assert_own_file(core)
        assert_own_file(Path(doc["core"]["record"]))
        json.loads(Path(doc["core"]["record"]).read_text())
        plain = unpacked(core, tmp_path)
        with open(plain, "rb") as f:
            assert ELFFile(f).header["e_type"] == "ET_CORE"
        assert prstatus_pids(plain) == [victim.pid]
    victim.wait_for_heartbeats(victim.heartbeats())
    victim.assert_unharmed()


# 3. Records, cores and FIFOs a neighbour adds to the shared directory are
#    never read, listed, pruned or handed to gdb; debug unpacks a .zst core
#    where no neighbour can have planted anything.

def test_only_snapcores_own_records_are_read(start_victim, shared, root_only, tmp_path):
    victim = start_victim("sleep")
    code, doc = snap_json("--compress", "--max-per-hour", "0", "-o", str(shared),
                          str(victim.pid))
    assert code == 0, doc
    mine = Path(doc["core"]["path"])
    theirs = "29990101T000000.000Z_evil_1"
    record = {"snapcore_version": "0", "taken_at": "2999-01-01T00:00:00Z", "reason": "",
              "target": {"pid": 1, "name": "evil", "exe": str(root_only / "secret"),
                         "cmdline": ["evil"], "program": "evil", "uid": NOBODY},
              "threads": [], "core": {"file": f"{theirs}.core.zst", "compressed": True}}
    (shared / f"{theirs}.json").write_text(json.dumps(record))
    os.chown(shared / f"{theirs}.json", NOBODY, NOBODY)
    plant_link(shared / f"{theirs}.core.zst", root_only / "secret")
    plant_fifo(shared / "29990101T000001.000Z_fifo_2.json")
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    tmpdir.chmod(0o1777)
    plant_link(tmpdir / mine.name.removesuffix(".zst"), root_only / "unpacked")
    with Watch(root_only):
        listed = run_snapcore("list", "--json", "-o", str(shared), timeout=30)
        info = run_snapcore("info", "--json", "-o", str(shared), timeout=30)
        debug = subprocess.run([sys.executable, "-m", "snapcore", "debug", "-o", str(shared),
                                "-A", "-batch -ex 'info inferiors'"], capture_output=True,
                               text=True, timeout=120, env={**os.environ, "TMPDIR": str(tmpdir)})
        pruned = run_snapcore("prune", "--keep", "0", "-o", str(shared), timeout=30)
    assert [s["core"] for s in json.loads(listed.stdout)["snapshots"]] == [str(mine)], listed
    assert json.loads(info.stdout)["core"] == str(mine), info.stdout
    assert debug.returncode == 0, debug.stderr
    assert "victim" in debug.stdout and str(root_only) not in debug.stdout + debug.stderr, \
        debug.stdout
    assert pruned.returncode == 0 and "removed 1 snapshot(s)" in pruned.stdout, pruned.stdout
    assert not mine.exists()
    assert sorted(os.listdir(shared)) == sorted([f"{theirs}.json", f"{theirs}.core.zst",
                                                 "29990101T000001.000Z_fifo_2.json",
                                                 ".snapcore"])
    assert os.listdir(tmpdir) == [mine.name.removesuffix(".zst")]
    victim.assert_unharmed()


# 4. A compressed core cut short.

def test_a_truncated_compressed_core_is_one_clear_error(start_victim, out_dir):
    victim = start_victim("fat")
    code, doc = snap_json("--compress", "--max-per-hour", "0", "-o", str(out_dir),
                          str(victim.pid))
    assert code == 0, doc
    core = Path(doc["core"]["path"])
    size = core.stat().st_size
    os.truncate(core, size // 2)
    debug = run_snapcore("debug", "-o", str(out_dir), "-A", "-batch")
    one_line(debug, ExitCode.OUTPUT, core.name, "truncated")
    stacks = run_snapcore("stacks", "--core", str(core))
    one_line(stacks, ExitCode.OUTPUT, core.name, "truncated")
    info = run_snapcore("info", "--json", "-o", str(out_dir))
    warnings = json.loads(info.stdout)["warnings"]
    assert info.returncode == 0 and any("truncated" in w for w in warnings), info.stdout
    plain = run_snapcore("info", "-o", str(out_dir))
    assert f"snapcore: warning: {core.name} is {size // 2} bytes" in plain.stderr, plain.stderr
    victim.assert_unharmed()


# 5. The output-dir check: a directory another user controls is refused.

def test_output_directories_another_user_controls_are_refused(start_victim, tmp_path):
    victim = start_victim("sleep")
    fine = tmp_path / "fine"
    fine.mkdir(mode=0o700)
    theirs = tmp_path / "theirs"
    plant_dir(theirs, 0o755)
    group = tmp_path / "group"
    group.mkdir()
    os.chown(group, 0, NOBODY)
    group.chmod(0o770)
    their_sticky = tmp_path / "their-sticky"
    plant_dir(their_sticky, 0o1777)
    link = tmp_path / "link"
    plant_link(link, fine)
    refused = {theirs: "uid 65534", theirs / "cores": "uid 65534", group: "group",
               their_sticky: "uid 65534", link: "symlink"}
    for path, why in refused.items():
        code, doc = check_json("-o", str(path), str(victim.pid))
        check = next(c for c in doc["checks"] if c["name"] == "output-dir")
        assert check["verdict"] == "refuse" and why in check["reason"], (path, check)
        assert code == ExitCode.OUTPUT, (path, doc)
    sticky = tmp_path / "sticky"
    sticky.mkdir()
    sticky.chmod(0o1777)
    for path in (fine, sticky):
        code, doc = check_json("-o", str(path), str(victim.pid))
        assert verdicts(doc)["output-dir"] == "ok", (path, doc["checks"])
    assert not (theirs / "cores").exists()
    victim.assert_unharmed()


# 6. A target whose own root holds /var/tmp and /tmp as absolute symlinks to
#    a root-only directory of the host.

@pytest.fixture(scope="session")
def static_victim(build_dir):
    """victim.c linked statically: it runs in a root of its own with no libraries."""
    exe = build_dir / "victim-static"
    subprocess.run(["gcc", "-Wall", "-Werror", "-g", "-O0", "-pthread", "-static", "-o",
                    str(exe), str(TARGETS / "victim.c")], check=True)
    return exe


@pytest.fixture
def jail(static_victim, root_only):
    """The target's root: its /var (nobody's, who may swap /var/tmp at will),
    /var/tmp and /tmp symlinks to root_only's host path, /victim, /report."""
    top = Path(tempfile.mkdtemp(prefix="snapcore-jail-"))
    top.chmod(0o755)
    shutil.copy(static_victim, top / "victim")
    (top / "report").mkdir()
    (top / "report").chmod(0o777)
    plant_dir(top / "var", 0o755)
    plant_link(top / "var" / "tmp", root_only)
    plant_link(top / "tmp", root_only)
    yield top
    shutil.rmtree(top, ignore_errors=True)


class NsVictim(Victim):
    """A target in a pid namespace of its own, under `unshare` (self.proc):
    self.pid is its pid here, and its heartbeats carry its namespace pid."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.pid = psutil.Process(self.proc.pid).children()[0].pid
        status = Path(f"/proc/{self.pid}/status").read_text()
        self.ns_pid = int(next(x for x in status.splitlines()
                               if x.startswith("NSpid:")).split()[-1])

    def lines(self) -> list[str]:
        return [f"hb {self.pid}" if x == f"hb {self.ns_pid}" else x for x in super().lines()]

    def stop(self) -> None:
        # unshare's --kill-child is a parent-death signal, which the kernel
        # clears when chroot --userspec changes the credentials: the target
        # is killed itself (the namespace's init: the namespace goes with it).
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        super().stop()
        end = time.monotonic() + 10
        while True:
            try:
                if psutil.Process(self.pid).status() == psutil.STATUS_ZOMBIE:
                    return
            except psutil.NoSuchProcess:
                return
            assert time.monotonic() < end, f"target {self.pid} outlived its namespace"
            time.sleep(0.01)


CHROOT = 'exec chroot --userspec=nobody:nogroup "$0" /victim "$2" /report/victim.txt'


@pytest.mark.parametrize("inside", ["missing", "there"])
@pytest.mark.parametrize("how", ["chroot", "pid+mount namespace"])
def test_a_targets_root_with_tmp_linked_to_the_host(how, inside, core_pattern, jail, root_only,
                                                    out_dir):
    """`missing`: the links name nothing in the target's root; `there`: they
    name a directory of the target's own, which the kernel may write."""
    core_pattern("core")
    if inside == "there":
        own = jail / str(root_only).lstrip("/")
        own.mkdir(parents=True)
        os.chown(own, NOBODY, NOBODY)
        own.chmod(0o1777)
    prefix = ("sh", "-c", CHROOT, str(jail))
    kind = Victim
    if how != "chroot":
        prefix = ("unshare", "--pid", "--mount", "--fork", "--kill-child", "--propagation",
                  "private", *prefix)
        kind = NsVictim
    victim = kind(Path("/victim"), "sleep", jail / "report" / "victim.txt", prefix=prefix)
    try:
        assert Path(f"/proc/{victim.pid}/status").read_text().count("65534") >= 2
        with Watch(root_only):
            proc = run_snapcore("--writer", "kernel", "--max-per-hour", "0", "-o", str(out_dir),
                                str(victim.pid))
        if inside == "missing":
            one_line(proc, ExitCode.OUTPUT, "/var/tmp", "/tmp", str(root_only))
            assert not out_dir.exists() or cores_in(out_dir) == []
        else:
            assert proc.returncode == 0, proc.stderr
            [name] = cores_in(out_dir)
            assert_own_file(out_dir / name)
            assert prstatus_pids(out_dir / name) == [getattr(victim, "ns_pid", victim.pid)]
            assert os.listdir(own) == [], "a staging directory was left in the target's root"
        victim.wait_for_heartbeats(victim.heartbeats())
        victim.assert_unharmed()
    finally:
        victim.stop()
