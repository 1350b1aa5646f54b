"""Real targets for real snapshots: C programs compiled here, which check themselves.

A target appends every violation it sees (EINTR from a restartable call, a
SIGCHLD, a reaped child, its SIGABRT handler running) to a report file, and a
heartbeat "hb PID" after each round of its main loop.  A copy of the target
that ran the target's code would write a heartbeat with another pid.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import resource
import select
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from snapcore.linux.procstat import read_stat

TARGETS = Path(__file__).parent / "targets"


@pytest.fixture(scope="session")
def build_dir():
    # World-readable, so targets started as `nobody` can run from it.
    path = Path(tempfile.mkdtemp(prefix="snapcore-tests-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def compile_target(build_dir: Path, name: str) -> Path:
    exe = build_dir / name
    subprocess.run(["gcc", "-Wall", "-Werror", "-g", "-O0", "-pthread", "-o", str(exe),
                    str(TARGETS / f"{name}.c")], check=True)
    return exe


@pytest.fixture(scope="session")
def victim_exe(build_dir):
    return compile_target(build_dir, "victim")


@pytest.fixture(scope="session")
def threads_exe(build_dir):
    return compile_target(build_dir, "threads")


@pytest.fixture(scope="session")
def fat_preload(build_dir):
    """hostile.c as an LD_PRELOAD library: HOSTILE_FAT_MB MiB of touched heap."""
    lib = build_dir / "hostile_fat.so"
    subprocess.run(["gcc", "-Wall", "-Werror", "-g", "-O0", "-pthread", "-shared", "-fPIC",
                    "-DHOSTILE_FAT_PRELOAD", "-o", str(lib), str(TARGETS / "hostile.c")],
                   check=True)
    return lib


@pytest.fixture
def out_dir(tmp_path):
    return tmp_path / "cores"


class Victim:
    def __init__(self, exe: Path, mode: str, report: Path, user: str | None = None,
                 core_limit: tuple[int, int] | None = None, args: tuple = (),
                 prefix: tuple = ()):
        self.exe = exe
        self.mode = mode
        self.report = report
        report.touch()
        report.chmod(0o666)
        account = pwd.getpwnam(user) if user else None

        def setup():
            if core_limit is not None:
                resource.setrlimit(resource.RLIMIT_CORE, core_limit)
            if account:
                os.setgroups([])
                os.setgid(account.pw_gid)
                os.setuid(account.pw_uid)

        self.proc = subprocess.Popen([*prefix, str(exe), mode, str(report), *args],
                                     stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, preexec_fn=setup, cwd="/")
        self.pid = self.proc.pid
        ready, _, _ = select.select([self.proc.stdout], [], [], 30)
        line = self.proc.stdout.readline() if ready else b""
        assert line == b"ready\n", f"target {mode} did not start: {line!r}"

    def send(self, text: str) -> None:
        self.proc.stdin.write(text.encode())
        self.proc.stdin.flush()

    def lines(self) -> list[str]:
        return self.report.read_text().splitlines()

    def wait_for_line(self, wanted: str, timeout: float = 5.0) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if wanted in self.lines():
                return
            time.sleep(0.02)
        raise AssertionError(f"target never reported {wanted!r}: {self.lines()}")

    def heartbeats(self) -> int:
        return sum(1 for line in self.lines() if line.startswith("hb "))

    def wait_for_heartbeats(self, more_than: int, timeout: float = 5.0) -> None:
        end = time.monotonic() + timeout
        while self.heartbeats() <= more_than:
            assert time.monotonic() < end, f"target stopped beating: {self.lines()}"
            time.sleep(0.02)

    def assert_unharmed(self) -> None:
        """Running, not stopped, not traced, no child, no violation, only its own heartbeats."""
        assert self.proc.poll() is None, f"target died: {self.proc.returncode}"
        status = dict(line.split(":\t", 1) for line in
                      Path(f"/proc/{self.pid}/status").read_text(errors="replace").splitlines()
                      if ":\t" in line)
        assert status["State"][0] not in "tTZ", status["State"]
        assert status["TracerPid"].strip() == "0"
        for tid in os.listdir(f"/proc/{self.pid}/task"):
            try:
                state = read_stat(self.pid, int(tid)).state
                tracer = Path(f"/proc/{self.pid}/task/{tid}/status").read_text(errors="replace")
            except (FileNotFoundError, ProcessLookupError):
                continue  # a thread that ended meanwhile (ESRCH once it is reaped)
            assert state not in "tT", f"thread {tid} left stopped"
            assert "TracerPid:\t0\n" in tracer, f"thread {tid} left traced"
        children = psutil.Process(self.pid).children()
        assert children == [], f"target has children: {children}"
        lines = self.lines()
        assert [x for x in lines if x.startswith("VIOLATION")] == []
        beats = {x.split()[1] for x in lines if x.startswith("hb ")}
        assert beats <= {str(self.pid)}, f"heartbeats from another pid: {beats}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


@pytest.fixture
def start_victim(victim_exe, threads_exe, tmp_path):
    started = []
    # The report lives where `nobody` can write it.
    shared = Path(tempfile.mkdtemp(prefix="snapcore-report-"))
    shared.chmod(0o777)

    def start(mode: str, exe: Path | None = None, **kwargs) -> Victim:
        v = Victim(exe or victim_exe, mode, shared / f"{mode}-{len(started)}.txt", **kwargs)
        started.append(v)
        return v

    yield start
    for v in started:
        v.stop()
    shutil.rmtree(shared, ignore_errors=True)


def run_snapcore(*args: str, check: bool = False, timeout: float = 120):
    """Run the real command, as an operator would."""
    proc = subprocess.run([sys.executable, "-m", "snapcore", *args], capture_output=True,
                          text=True, timeout=timeout)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def snap_json(*args: str) -> tuple[int, dict]:
    proc = run_snapcore("--json", *args)
    return proc.returncode, json.loads(proc.stdout)


def gdb(exe: Path, core: Path, *commands: str) -> str:
    cmd = ["gdb", "-batch", "-nx"]
    for c in commands:
        cmd += ["-ex", c]
    proc = subprocess.run(cmd + [str(exe), str(core)], capture_output=True, text=True,
                          timeout=120)
    return proc.stdout + proc.stderr


def gdb_threads(exe: Path, core: Path) -> dict[int, str]:
    """LWP -> frame text of each thread gdb lists in `info threads` for a core."""
    out = gdb(exe, core, "info threads")
    threads = {}
    for line in out.splitlines():
        m = re.match(r"^[* ]\s*\d+\s+(?:Thread 0x[0-9a-f]+ )?\(?LWP (\d+)\)?\s+(.*)$", line)
        if m:
            lwp = int(m.group(1))
            assert lwp not in threads, f"gdb lists LWP {lwp} twice:\n{out}"
            threads[lwp] = m.group(2)
    return threads


def gdb_per_thread(exe: Path, core: Path, command: str) -> dict[int, str]:
    """LWP -> what `thread apply all COMMAND` printed for that thread."""
    out = gdb(exe, core, f"thread apply all {command}")
    sections: dict[int, str] = {}
    current = None
    for line in out.splitlines():
        m = re.match(r"^Thread \d+ \(.*LWP (\d+)\)\)?:$", line)
        if m:
            current = int(m.group(1))
            assert current not in sections, f"LWP {current} twice:\n{out}"
            sections[current] = ""
        elif current is not None:
            sections[current] += line + "\n"
    return sections


def wait_until_catching(proc, signum: int, timeout: float = 30.0) -> None:
    """Wait until process `proc` has a handler for `signum` (SigCgt in its
    /proc status): snapcore's own start, after the interpreter's.  A signal
    sent before that lands in the interpreter's start-up, not in snapcore."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            status = Path(f"/proc/{proc.pid}/status").read_text()
        except FileNotFoundError:
            return  # already gone
        caught = int(next(x for x in status.splitlines() if x.startswith("SigCgt:")).split()[1],
                     16)
        if caught & (1 << (signum - 1)):
            return
        time.sleep(0.001)
    raise AssertionError(f"process {proc.pid} never installed a handler for signal {signum}")


@pytest.fixture
def tmpfs(tmp_path):
    """make(size) -> a new tmpfs of that size ("2m"), unmounted after the test:
    a filesystem with little room."""
    made: list[Path] = []

    def make(size: str) -> Path:
        mount = tmp_path / f"tmpfs{len(made)}"
        mount.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)],
                       check=True)
        made.append(mount)
        return mount

    yield make
    for mount in made:
        subprocess.run(["umount", "-l", str(mount)], check=True)


def cgroup_hierarchies() -> dict[str, Path]:
    """Where this host mounts each cgroup hierarchy (/proc/self/mounts): each v1
    controller, and a named hierarchy ("systemd" for name=systemd), -> its
    mount point; "unified" -> the v2 hierarchy.  A v2-only host has "unified"
    alone, a v1-only one no "unified", a hybrid one (systemd's) both."""
    controllers = {line.split()[0] for line in
                   Path("/proc/cgroups").read_text().splitlines()[1:] if line.strip()}
    found: dict[str, Path] = {}
    for line in Path("/proc/self/mounts").read_text().splitlines():
        _source, point, fstype, options = line.split()[:4]
        if fstype == "cgroup2":
            found.setdefault("unified", Path(point))
        elif fstype == "cgroup":
            for option in options.split(","):
                if option in controllers or option.startswith("name="):
                    found.setdefault(option.removeprefix("name="), Path(point))
    return found


def cgroup_root(controller: str) -> Path:
    """The root of `controller`'s hierarchy ("unified": v2's).  A host without
    it cannot have the case (a v1 memory limit on a v2-only host): skipped,
    saying so, on a developer's machine.  CI (.ci/run sets SNAPCORE_CI) runs
    on a host made to have every case: there it fails, never passes by skipping."""
    root = cgroup_hierarchies().get(controller)
    if root is None:
        kind = "v2 hierarchy" if controller == "unified" else f"v1 {controller} hierarchy"
        why = f"this host mounts no cgroup {kind}: the case cannot exist here"
        if os.environ.get("SNAPCORE_CI"):
            pytest.fail(f"{why}; CI needs a host that mounts it")
        pytest.skip(why)
    return root


@pytest.fixture
def cgroup():
    """make(controller, **files) -> a new cgroup under that controller's root
    (v1; "unified": the v2 hierarchy; the test skipped where the host has no
    such hierarchy), or `under` one made before.
    Removed after the test: thawed, its processes moved to the parent, rmdir."""
    made: list[Path] = []

    def make(controller: str, under: Path | None = None, **files) -> Path:
        parent = under or cgroup_root(controller)
        path = parent / f"snapcore-test-{os.getpid()}-{len(made)}"
        path.mkdir()
        made.append(path)
        for name, value in files.items():
            (path / name.replace("__", ".")).write_text(str(value))
        return path

    yield make
    for path in reversed(made):
        if (path / "freezer.state").exists():
            (path / "freezer.state").write_text("THAWED")
        end = time.monotonic() + 10
        while True:
            for pid in (path / "cgroup.procs").read_text().split():
                try:
                    (path.parent / "cgroup.procs").write_text(pid)
                except OSError:
                    pass  # it exited meanwhile
            try:
                path.rmdir()
                break
            except OSError:  # EBUSY: a process forked into it just now
                assert time.monotonic() < end, f"cannot remove {path}"
                time.sleep(0.02)


@pytest.fixture
def core_pattern():
    """Set core_pattern/core_uses_pid for one test, and always put them back."""
    files = [Path("/proc/sys/kernel/core_pattern"), Path("/proc/sys/kernel/core_uses_pid")]
    saved = [f.read_text() for f in files]

    def set_pattern(pattern: str, uses_pid: bool = False):
        files[0].write_text(pattern + "\n")
        files[1].write_text("1\n" if uses_pid else "0\n")

    yield set_pattern
    for f, text in zip(files, saved):
        f.write_text(text)


@pytest.fixture
def file_core_pattern(core_pattern):
    """core_pattern a plain file name ("core") for one test, whatever the
    host's: the kernel's writer then writes a file on any host (where the
    host pipes cores to a crash handler, apport or systemd-coredump, it would
    hand the snapshot to it: exit 9), and `--writer auto` chooses the kernel
    as it does on a host that writes files.  For every test that asks for the
    kernel's writer, or whose point is the writer auto picks."""
    core_pattern("core")
