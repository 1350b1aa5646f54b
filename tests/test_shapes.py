"""The checks' numbers against the cores actually written: for each shape of
memory the kernel's dump rule treats on its own (tests/targets/shapes.c) and
for PostgreSQL's shared_buffers, the estimate (`core_estimate`, what the disk
check, the writer check and the dump's controller use) is within 10 % of the
core each writer wrote, allocated and apparent.  One rule decides both
(core/dumprules.py), so they cannot disagree by construction; these tests
hold the rule to the kernel's own writer.

Shared memory has a second hazard: reading a never-written page of shmem
allocates it, in the target's own object, for good (shmem_fault).  The
kernel's dump does; snapcore's writer leaves such pages holes, and `auto`
chooses it when a process has any."""

from __future__ import annotations

import glob
import os
import pwd
import select
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile

from snapcore.engine.request import Request
from snapcore.engine.snapshot import take

from conftest import compile_target, run_snapcore, snap_json
from helpers import in_fork

MIB = 64
TOLERANCE = 0.10
# Whether the kernel's dump holds the region (default coredump_filter 0x33:
# anonymous private and shared, ELF headers, hugetlb private).
DUMPED = {"anon": True, "anon-shared": True, "anon-shared-half": True,
          "anon-shared-dropped": True, "sysv": True, "posix": False, "memfd": True,
          "hugetlb": True, "file-private": True, "dontdump": False}


@pytest.fixture(scope="module")
def shapes_exe(build_dir):
    return compile_target(build_dir, "shapes")


@pytest.fixture
def hugepages():
    """MIB MiB of huge pages reserved for the test, given back after."""
    knob = Path("/proc/sys/vm/nr_hugepages")
    before = int(knob.read_text())
    knob.write_text(str(before + MIB // 2 + 2))
    try:
        free = int(next(line.split()[1] for line in Path("/proc/meminfo").read_text()
                        .splitlines() if line.startswith("HugePages_Free:")))
        assert free >= MIB // 2, f"could not reserve {MIB} MiB of huge pages"
        yield
    finally:
        knob.write_text(str(before))


class Shape:
    def __init__(self, exe: Path, shape: str, *extra: str):
        self.proc = subprocess.Popen([str(exe), shape, str(MIB), *extra],
                                     stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline().split()
        assert line[:1] == ["ready"], f"{shape}: {line}"
        self.address = int(line[1], 16)
        self.pid = self.proc.pid

    def region_blocks(self) -> int:
        """Bytes the region's shared object holds (st_blocks of the very file)."""
        for entry in os.listdir(f"/proc/{self.pid}/map_files"):
            if int(entry.split("-")[0], 16) == self.address:
                return os.stat(f"/proc/{self.pid}/map_files/{entry}").st_blocks * 512
        raise AssertionError("the region is not mapped")

    def assert_unharmed(self) -> None:
        assert self.proc.poll() is None, "the target died"
        ready, _, _ = select.select([self.proc.stdout], [], [], 0)
        assert not ready, f"the target said: {self.proc.stdout.readline()!r}"

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()
        Path(f"/dev/shm/snapcore-shapes-{self.pid}").unlink(missing_ok=True)


def near(estimate: int, written: int) -> bool:
    return abs(estimate - written) <= TOLERANCE * written


def snapshot(out: Path, pid: int, *args: str) -> tuple[dict, Path]:
    code, doc = snap_json("--max-per-hour", "0", "-o", str(out), *args, str(pid))
    assert code == 0, doc
    return doc, Path(doc["core"]["path"])


def assert_estimate_holds(doc: dict, core: Path) -> None:
    st = core.stat()
    written = {"allocated": st.st_blocks * 512, "apparent": st.st_size}
    estimated = {"allocated": doc["core_estimate"], "apparent": doc["core_estimate_apparent"]}
    for kind in written:
        assert near(estimated[kind], written[kind]), (
            f"{kind}: estimated {estimated[kind]}, written {written[kind]} "
            f"({doc['writer']['name']}'s writer)")


@pytest.mark.parametrize("writer", ["kernel", "snapcore"])
@pytest.mark.parametrize("shape", sorted(DUMPED))
@pytest.mark.usefixtures("file_core_pattern")  # asks for the kernel's writer
def test_estimate_is_the_core_written(shapes_exe, tmp_path, request, shape, writer):
    extra = []
    if shape == "hugetlb":
        request.getfixturevalue("hugepages")
    if shape == "file-private":
        data = tmp_path / "data"
        data.write_bytes(os.urandom(MIB << 20))
        extra = [str(data)]
    target = Shape(shapes_exe, shape, *extra)
    try:
        doc, core = snapshot(tmp_path / "cores", target.pid, "--writer", writer)
        assert_estimate_holds(doc, core)
        # The rule itself, held to what the kernel writes: the region is in
        # the core whole, or not at all.
        holds = core.stat().st_size > (MIB << 20)
        assert holds == DUMPED[shape], f"{shape}: in the core: {holds}"
        record = core.with_suffix(".json").read_text()
        assert f'"core_estimate": {doc["core_estimate"]}' in record
        target.assert_unharmed()
    finally:
        target.stop()


def byte_at(core: Path, address: int) -> int | None:
    """The core's byte at `address`; None when the core has no data there."""
    with open(core, "rb") as f:
        for seg in ELFFile(f).iter_segments():
            start = seg["p_vaddr"]
            if seg["p_type"] == "PT_LOAD" and start <= address < start + seg["p_memsz"]:
                if address - start >= seg["p_filesz"]:
                    return None
                f.seek(seg["p_offset"] + address - start)
                return f.read(1)[0]
    return None


def test_snapcore_writer_never_allocates_shared_memory(shapes_exe, tmp_path):
    """Half of a shared region written: snapcore's writer copies that half
    and leaves the other a hole (reading as zeros, as in the process); the
    region's object is no bigger after.  `auto` chooses it, saying why."""
    target = Shape(shapes_exe, "anon-shared-half")
    try:
        before = target.region_blocks()
        assert before == (MIB << 20) // 2
        doc, core = snapshot(tmp_path / "cores", target.pid)
        assert doc["writer"]["name"] == "snapcore"
        assert "never wrote" in doc["writer"]["reason"]
        assert target.region_blocks() == before
        page = 4096
        for i in (0, 1, 2, (MIB << 20) // 2 // page - 1):
            assert byte_at(core, target.address + i * page) == i % 251 + 1
        for i in ((MIB << 20) // 2 // page, (MIB << 20) // page - 1):
            assert byte_at(core, target.address + i * page) in (0, None)
        assert_estimate_holds(doc, core)
        target.assert_unharmed()
    finally:
        target.stop()


def test_check_says_what_the_kernel_dump_would_allocate(shapes_exe):
    """Asked for, the kernel's writer is warned about: the memory check
    names what its dump would add to the target's shared memory."""
    target = Shape(shapes_exe, "anon-shared-half")
    try:
        proc = run_snapcore("check", "--writer", "kernel", str(target.pid))
        assert proc.returncode == 0, proc.stderr
        text = " ".join(proc.stdout.split())
        assert "allocates 32.0 MiB of shared memory" in text
        target.assert_unharmed()
    finally:
        target.stop()


# PostgreSQL: shared_buffers is one MAP_SHARED|MAP_ANONYMOUS region every
# process of the cluster maps; the checkpointer maps few of its pages itself.

def postgres_bin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"))
    assert found, "PostgreSQL is missing: .ci/run installs it (apt-get install postgresql)"
    return Path(found[-1]).parent


@pytest.fixture(scope="module")
def cluster():
    """A PostgreSQL cluster of its own (128 MiB of shared_buffers, about
    40 MiB of it filled by a table), run as the postgres user."""
    bindir = postgres_bin()
    base = Path(tempfile.mkdtemp(prefix="snapcore-pg-"))  # pytest's are root's alone
    base.chmod(0o755)
    data = base / "data"
    user = pwd.getpwnam("postgres")
    as_pg = ["runuser", "-u", "postgres", "--"]
    data.mkdir()
    os.chown(data, user.pw_uid, user.pw_gid)
    subprocess.run(as_pg + [str(bindir / "initdb"), "-D", str(data), "--no-sync", "-A", "trust"],
                   check=True, capture_output=True, cwd=base)
    server = subprocess.Popen(as_pg + [str(bindir / "postgres"), "-D", str(data),
                                       "-c", "shared_buffers=128MB", "-c", "huge_pages=off",
                                       "-c", "listen_addresses=", "-c",
                                       f"unix_socket_directories={data}"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=base)
    try:
        psql = as_pg + [str(bindir / "psql"), "-h", str(data), "-d", "postgres", "-qc"]
        end = time.monotonic() + 60
        while subprocess.run(psql + ["select 1"], capture_output=True,
                             cwd=base).returncode != 0:
            assert time.monotonic() < end and server.poll() is None, "PostgreSQL did not start"
            time.sleep(0.2)
        subprocess.run(psql + ["create table t as select g, repeat('x', 200) "
                               "from generate_series(1, 150000) g"], check=True, cwd=base)
        yield server
    finally:
        server.terminate()
        server.wait(timeout=60)
        shutil.rmtree(base, ignore_errors=True)


def checkpointer(cluster) -> int:
    for task in Path("/proc").iterdir():
        if task.name.isdigit():
            try:
                if (task / "cmdline").read_bytes().startswith(b"postgres: checkpointer"):
                    return int(task.name)
            except OSError:
                continue
    raise AssertionError("no checkpointer")


# snapcore's writer first: the kernel's dump fills shared_buffers' holes.
@pytest.mark.parametrize("writer", ["snapcore", "kernel"])
@pytest.mark.usefixtures("file_core_pattern")  # asks for the kernel's writer
def test_postgres_shared_buffers(cluster, tmp_path, writer):
    pid = checkpointer(cluster)
    proc = run_snapcore("check", "--writer", writer, str(pid))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    doc, core = snapshot(tmp_path / "cores", pid, "--writer", writer)
    assert doc["core"]["size"] > 128 << 20, "shared_buffers is not in the core"
    assert_estimate_holds(doc, core)
    assert cluster.poll() is None


@pytest.mark.usefixtures("file_core_pattern")  # asks for the kernel's writer
def test_disk_check_counts_shared_memory(shapes_exe, tmpfs):
    """The issue's night: 418 MiB of shared_buffers estimated at 3 MiB, the
    kernel's writer then filled a small filesystem.  Now the disk check sees
    the shared memory and refuses before the process is touched."""
    small = tmpfs("32m")
    target = Shape(shapes_exe, "anon-shared")
    try:
        proc = run_snapcore("--writer", "kernel", "-o", str(small / "cores"), str(target.pid))
        assert proc.returncode == 10, proc.stderr
        assert "disk" in proc.stderr and "64." in proc.stderr, proc.stderr
        assert not (small / "cores").exists() or not os.listdir(small / "cores")
        target.assert_unharmed()
    finally:
        target.stop()


@pytest.mark.parametrize("writer", ["kernel", "snapcore"])
@pytest.mark.usefixtures("file_core_pattern")  # asks for the kernel's writer
def test_estimate_holds_for_a_user_without_privileges(shapes_exe, writer):
    """Without root, /proc/PID/map_files is closed: shared memory was judged
    by the name of its file, and "/dev/zero (deleted)" by /dev/zero, a device
    with a link.  Its 64 MiB were missing from the estimate, and from the
    core snapcore's writer wrote, though the kernel's held them."""
    out = Path(tempfile.mkdtemp(prefix="snapcore-nobody-"))  # reachable by nobody
    out.chmod(0o1777)
    target = subprocess.Popen(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                               str(shapes_exe), "anon-shared", str(MIB)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert target.stdout.readline().startswith("ready")

        def work():  # in this interpreter: nobody cannot exec the one under /root
            snap = take(target.pid, Request(output_dir=out / "cores", writer=writer,
                                                      max_per_hour=0))
            return {"core_estimate": snap.core_estimate,
                    "core_estimate_apparent": snap.core_apparent,
                    "writer": {"name": snap.writer}, "core": str(snap.core_path)}

        doc = in_fork(work, as_nobody=True)
        assert "core" in doc, doc
        core = Path(doc["core"])
        assert doc["writer"]["name"] == writer
        assert core.stat().st_size > MIB << 20, "the shared region is not in the core"
        assert_estimate_holds(doc, core)
    finally:
        target.kill()
        target.wait()
        shutil.rmtree(out)
