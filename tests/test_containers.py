"""Containers under a real OCI runtime: podman with runc.

The images are built here, with no registry: a Debian root filesystem from
debootstrap (cached under CACHE between runs), imported as the base, and
the repository's own Containerfile on top of it for snapcore's image (the
image docs/kubernetes.md tells users to build).  The targets are this
suite's C programs, bind-mounted read-only at /t (the base image has the
host's glibc: both are Debian bookworm), reporting to /report.

Without podman, runc or debootstrap the tests fail (never skip): .ci/run
installs them.  Every test leaves the target unharmed: alive, not stopped, untraced, no
child it did not have, no zombie, no line in its own logs.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from snapcore.errors import ExitCode

from conftest import compile_target

pytestmark = pytest.mark.slow  # a real container runtime and images: minutes

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path("/var/cache/snapcore-tests")
# The base: what the targets need (nginx) and what snapcore's image needs
# (python3, python3-venv, gdb, tar, procps), so that its build installs
# nothing from the network.  gdb comes after debootstrap, whose own resolver
# fails on it.
PACKAGES = "nginx-light,python3,python3-venv,procps,tar"
LATER = ("gdb",)
# crun refuses this machine's hybrid cgroup layout; root here lacks
# CAP_SYS_RESOURCE, so the default ulimits (above the hard ones) are refused.
PODMAN = ("podman", "--runtime", "runc")
RUN = (*PODMAN, "run", "--ulimit", "nofile=1024:20000", "--ulimit", "nproc=4096:4096")
WHEELS = ("click", "psutil", "rich", "python-ptrace", "zstandard", "setuptools", "pystack")


def podman(*args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run([*PODMAN, *args], capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode:
        raise AssertionError(f"podman {' '.join(args)}: exit {proc.returncode}: {proc.stderr}")
    return proc


@pytest.fixture(scope="session")
def runtime():
    """A test that skipped would prove nothing: without the runtime they fail."""
    missing = [tool for tool in ("podman", "runc", "debootstrap") if not shutil.which(tool)]
    assert not missing, (f"no container runtime here ({', '.join(missing)} missing): "
                         "apt-get install podman runc debootstrap (.ci/run does)")


@pytest.fixture(scope="session")
def base_image(runtime) -> str:
    key = hashlib.sha256(f"{PACKAGES} {LATER}".encode()).hexdigest()[:12]
    tag = f"localhost/snapcore-test-base:{key}"
    if podman("image", "exists", tag, check=False).returncode == 0:
        return tag
    CACHE.mkdir(parents=True, exist_ok=True)
    rootfs = CACHE / f"rootfs-{key}"
    if not (rootfs / ".complete").exists():
        shutil.rmtree(rootfs, ignore_errors=True)
        subprocess.run(["debootstrap", "--variant=minbase", f"--include={PACKAGES}",
                        "bookworm", str(rootfs)], check=True, capture_output=True,
                       timeout=900)
        shutil.copy("/etc/resolv.conf", rootfs / "etc/resolv.conf")
        subprocess.run(["chroot", str(rootfs), "env", "DEBIAN_FRONTEND=noninteractive",
                        "apt-get", "install", "-y", "-q", "--no-install-recommends", *LATER],
                       check=True, capture_output=True, timeout=900)
        subprocess.run(["chroot", str(rootfs), "apt-get", "clean"], check=True)
        (rootfs / ".complete").touch()
    tar = subprocess.Popen(["tar", "-C", str(rootfs), "--exclude=./.complete", "-c", "."],
                           stdout=subprocess.PIPE)
    subprocess.run([*PODMAN, "import", "-", tag], stdin=tar.stdout, check=True,
                   capture_output=True, timeout=600)
    assert tar.wait() == 0
    return tag


@pytest.fixture(scope="session")
def snapcore_image(base_image, tmp_path_factory) -> str:
    """The repository's Containerfile, built on the base, offline (wheels/)."""
    context = tmp_path_factory.mktemp("context")
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split()
    for name in files:
        if (ROOT / name).is_file():
            (context / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, context / name)
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "-d",
                    str(context / "wheels"), "--only-binary=:all:", "--python-version", "3.11",
                    "--platform", "manylinux2014_x86_64", "--platform", "any", *WHEELS],
                   check=True, capture_output=True, timeout=600)
    tag = "localhost/snapcore-test:latest"
    podman("build", "-q", "--build-arg", f"BASE={base_image}", "-f",
           str(context / "Containerfile"), "-t", tag, str(context), timeout=900)
    return tag


class Container:
    """A container running one of the targets; its main process's host pid."""

    def __init__(self, image: str, name: str, command: list[str], report_dir: Path,
                 build_dir: Path, options: tuple = ()):
        self.name = name
        self.report_dir = report_dir
        podman("rm", "-f", name, check=False)
        podman(*RUN[len(PODMAN):], "-d", "--name", name, "-v", f"{build_dir}:/t:ro",
               "-v", f"{report_dir}:/report", *options, image, *command)
        self.pid = int(podman("inspect", "-f", "{{.State.Pid}}", name).stdout)

    def report(self, name: str = "target.txt") -> list[str]:
        path = self.report_dir / name
        return path.read_text().splitlines() if path.exists() else []

    def wait_for_beats(self, more_than: int = 0, name: str = "target.txt") -> int:
        end = time.monotonic() + 15
        while True:
            beats = sum(1 for x in self.report(name) if x.startswith("hb "))
            if beats > more_than:
                return beats
            assert time.monotonic() < end, f"no heartbeat: {self.report(name)}"
            time.sleep(0.05)

    def remove(self) -> None:
        podman("rm", "-f", "-t", "0", self.name, check=False)


@pytest.fixture
def containers(tmp_path, build_dir):
    made: list[Container] = []
    report_dir = tmp_path / "report"
    report_dir.mkdir()
    report_dir.chmod(0o777)

    def start(image: str, command: list[str], options: tuple = ()) -> Container:
        name = f"snapcore-test-{os.getpid()}-{len(made)}"
        made.append(Container(image, name, command, report_dir, build_dir, options))
        return made[-1]

    yield start
    for c in made:
        c.remove()


@pytest.fixture(scope="session")
def victim_in(build_dir):
    return compile_target(build_dir, "victim").name


@pytest.fixture(scope="session")
def reaper_in(build_dir):
    return compile_target(build_dir, "reaper").name


def unharmed(pid: int, children: set[int] | None = None) -> list[str]:
    """What is wrong with process `pid` (host pid) now: stopped, traced, dead,
    a child or zombie it did not have."""
    try:
        proc = psutil.Process(pid)
        if proc.status() in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD):
            return [f"{pid} died"]
        problems = []
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                status = Path(f"/proc/{pid}/task/{tid}/status").read_text()
            except OSError:
                continue
            if "TracerPid:\t0\n" not in status:
                problems.append(f"thread {tid} traced")
            if "\nState:\tt" in status or "\nState:\tT" in status:
                problems.append(f"thread {tid} stopped")
        now = {c.pid for c in proc.children()}
        if now != (children or set()):
            problems.append(f"children {sorted(now)}, had {sorted(children or set())}")
        return problems
    except psutil.NoSuchProcess:
        return [f"{pid} is gone"]


def settled(pid: int, children: set[int] | None = None) -> list[str]:
    end = time.monotonic() + 5
    while True:
        problems = unharmed(pid, children)
        if not problems or time.monotonic() > end:
            return problems
        time.sleep(0.05)


def snap_from_host(pid: int, out_dir: Path, *args: str) -> tuple[int, dict, str]:
    proc = subprocess.run([sys.executable, "-m", "snapcore", "--json", "--max-per-hour", "0",
                           "-o", str(out_dir), *args, str(pid)],
                          capture_output=True, text=True, timeout=300)
    return proc.returncode, json.loads(proc.stdout) if proc.stdout else {}, proc.stderr


def violations(container: Container, name: str = "target.txt") -> list[str]:
    return [x for x in container.report(name) if x.startswith("VIOLATION")]


def test_pid_1_of_a_container_from_the_host(base_image, containers, victim_in, tmp_path):
    target = containers(base_image, [f"/t/{victim_in}", "sleep", "/report/target.txt"])
    beats = target.wait_for_beats()
    code, doc, err = snap_from_host(target.pid, tmp_path / "cores")
    assert code == 0, err
    assert doc["thread_map"][0]["core_lwp"] == 1, doc["thread_map"]  # as the container sees it
    target.wait_for_beats(beats + 2)
    assert settled(target.pid) == [] and violations(target) == []
    assert {x.split()[1] for x in target.report() if x.startswith("hb ")} == {"1"}
    # gdb, through the record and /proc/PID/root, opens it with the container's
    # own executable.
    proc = subprocess.run([sys.executable, "-m", "snapcore", "stacks", "--core",
                           doc["core"]["path"]], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "nanosleep" in proc.stdout, proc.stdout + proc.stderr


def test_nginx_worker_under_nginx_as_pid_1(base_image, containers, tmp_path):
    target = containers(base_image, ["nginx", "-g", "daemon off; error_log /report/error.log;"])
    end = time.monotonic() + 15
    while not psutil.Process(target.pid).children():
        assert time.monotonic() < end, "nginx started no worker"
        time.sleep(0.05)
    workers = {c.pid for c in psutil.Process(target.pid).children()}
    worker = min(workers)
    for _ in range(3):
        code, doc, err = snap_from_host(worker, tmp_path / "cores")
        assert code == 0, err
    assert settled(worker) == [] and settled(target.pid, workers) == []
    log = target.report("error.log")
    assert [x for x in log if "exited on signal" in x or "[alert]" in x] == [], log


@pytest.mark.parametrize("mode", ["log", "never"])
def test_a_worker_under_a_reaping_or_never_reaping_pid_1(base_image, containers, victim_in,
                                                       reaper_in, mode, tmp_path):
    target = containers(base_image, [f"/t/{reaper_in}", mode, "/report/reaper.txt",
                                     f"/t/{victim_in}", "sleep", "/report/target.txt"])
    beats = target.wait_for_beats()
    worker = psutil.Process(target.pid).children()[0].pid
    code, doc, err = snap_from_host(worker, tmp_path / "cores")
    assert code == 0, err
    target.wait_for_beats(beats + 2)
    assert settled(worker) == [] and settled(target.pid, {worker}) == []
    assert [x for x in target.report("reaper.txt") if x.startswith("reaped")] == []
    assert violations(target) == []


def test_a_privileged_sidecar_sharing_the_pid_namespace(base_image, snapcore_image,
                                                        containers, victim_in, tmp_path):
    target = containers(base_image, [f"/t/{victim_in}", "sleep", "/report/target.txt"])
    beats = target.wait_for_beats()
    out = tmp_path / "cores"
    out.mkdir()
    started = time.monotonic()
    proc = subprocess.run([*RUN, "--rm", "--privileged", "--pid", f"container:{target.name}",
                           "-v", f"{out}:/out", snapcore_image, "snapcore", "--json",
                           "--max-per-hour", "0", "-o", "/out", "1"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert (out / Path(doc["core"]["path"]).name).is_file(), doc
    print(f"sidecar: pause {doc['pause_ms']} ms, core in {time.monotonic() - started:.1f} s")
    target.wait_for_beats(beats + 2)
    assert settled(target.pid) == [] and violations(target) == []


@pytest.mark.parametrize("caps", [(), ("SYS_PTRACE",), ("SYS_PTRACE", "SYS_ADMIN")])
def test_a_confined_sidecar_is_refused_with_the_reason(base_image, snapcore_image, containers,
                                                       victim_in, caps):
    target = containers(base_image, [f"/t/{victim_in}", "sleep", "/report/target.txt"])
    beats = target.wait_for_beats()
    adds = [x for cap in caps for x in ("--cap-add", cap)]
    proc = subprocess.run([*RUN, "--rm", *adds, "--pid", f"container:{target.name}",
                           snapcore_image, "snapcore", "--max-per-hour", "0", "1"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == ExitCode.UNSUPPORTED, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "seccomp=unconfined" in lines[0] and "--profile=sysadmin" in lines[0], lines
    if "SYS_ADMIN" not in caps:
        assert "CAP_SYS_ADMIN" in lines[0], lines
    target.wait_for_beats(beats + 2)
    assert settled(target.pid) == [] and violations(target) == []


def test_a_restricted_sidecar_is_refused_permission(base_image, snapcore_image, containers,
                                                    victim_in):
    """kubectl debug --profile=restricted: not root, every capability dropped."""
    target = containers(base_image, [f"/t/{victim_in}", "sleep", "/report/target.txt"])
    beats = target.wait_for_beats()
    proc = subprocess.run([*RUN, "--rm", "--user", "65534", "--cap-drop", "ALL", "--pid",
                           f"container:{target.name}", snapcore_image, "snapcore",
                           "--max-per-hour", "0", "1"], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == ExitCode.PERMISSION, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "SYS_PTRACE" in proc.stderr
    target.wait_for_beats(beats + 2)
    assert settled(target.pid) == [] and violations(target) == []


def test_an_unconfined_sidecar_warns_it_cannot_see_the_limits(base_image, snapcore_image,
                                                              containers, victim_in, tmp_path):
    """SYS_PTRACE, SYS_ADMIN and no seccomp profile: the snapshot is taken, and
    from its own cgroup namespace the sidecar cannot see the target's memory
    limit: the memory and tasks checks warn instead of saying ok."""
    target = containers(base_image, [f"/t/{victim_in}", "fat", "/report/target.txt"],
                        ("--memory", "256m"))
    beats = target.wait_for_beats()
    out = tmp_path / "cores"
    out.mkdir()
    proc = subprocess.run([*RUN, "--rm", "--cap-add", "SYS_PTRACE", "--cap-add", "SYS_ADMIN",
                           "--security-opt", "seccomp=unconfined", "--pid",
                           f"container:{target.name}", "-v", f"{out}:/out", snapcore_image,
                           "snapcore", "--json", "--max-per-hour", "0", "-o", "/out", "1"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    checks = {c["name"]: c for c in json.loads(proc.stdout)["checks"]}
    for name in ("memory", "tasks"):
        assert checks[name]["verdict"] == "warn", checks[name]
        assert "cannot see the target's cgroup limits" in checks[name]["reason"], checks[name]
    target.wait_for_beats(beats + 2)
    assert settled(target.pid) == [] and violations(target) == []


@pytest.mark.parametrize("tmpfs", [True, False])
def test_a_read_only_root_filesystem(base_image, containers, victim_in, tmpfs, tmp_path):
    """podman's --read-only mounts tmpfs at /tmp and /var/tmp (the kernel's
    core is staged there); without them (a distroless image's view) `auto`
    chooses snapcore's writer, which needs no place in the target's files."""
    target = containers(base_image, [f"/t/{victim_in}", "sleep", "/report/target.txt"],
                        ("--read-only", f"--read-only-tmpfs={str(tmpfs).lower()}"))
    beats = target.wait_for_beats()
    code, doc, err = snap_from_host(target.pid, tmp_path / "cores")
    assert code == 0, err
    assert doc["writer"]["name"] == ("kernel" if tmpfs else "snapcore"), doc["writer"]
    if not tmpfs:
        assert "writable place" in doc["writer"]["reason"], doc["writer"]
    target.wait_for_beats(beats + 2)
    assert settled(target.pid) == [] and violations(target) == []


def test_a_container_with_a_memory_limit(base_image, containers, victim_in, tmp_path):
    """The memory check reads the container's cgroup (v1 here) from the host."""
    target = containers(base_image, [f"/t/{victim_in}", "fat", "/report/target.txt"],
                        ("--memory", "64m", "--memory-swap", "64m"))
    beats = target.wait_for_beats()
    proc = subprocess.run([sys.executable, "-m", "snapcore", "check", "--json",
                           str(target.pid)], capture_output=True, text=True, timeout=120)
    checks = {c["name"]: c for c in json.loads(proc.stdout)["checks"]}
    cgroup = Path(f"/proc/{target.pid}/cgroup").read_text()
    container = next(x.split(":", 2)[2] for x in cgroup.splitlines() if ":memory:" in x)
    assert f"{container}/memory.limit_in_bytes" in checks["memory"]["reason"], checks["memory"]
    code, doc, err = snap_from_host(target.pid, tmp_path / "cores")
    assert code == 0, err
    target.wait_for_beats(beats + 2)
    assert settled(target.pid) == [] and violations(target) == []


ROOTLESS = "snapcore-rootless"  # a user made for the test, removed after it
SUBIDS = 300000  # its subordinate ids: /etc/subuid and /etc/subgid


@pytest.fixture(scope="session")
def rootless(base_image, tmp_path_factory):
    """An unprivileged user with subordinate ids, running podman rootless
    (a user namespace of its own; no cgroup delegation on this cgroup v1
    machine: cgroupfs manager), with the base image in its own storage.
    Removed afterwards, with its lines in /etc/subuid and /etc/subgid."""
    subprocess.run(["useradd", "-m", "-s", "/bin/sh", ROOTLESS], check=True)
    try:
        import pwd
        account = pwd.getpwnam(ROOTLESS)
        for path in ("/etc/subuid", "/etc/subgid"):
            with open(path, "a") as f:
                f.write(f"{ROOTLESS}:{SUBIDS}:65536\n")
        runtime_dir = Path(f"/run/user/{account.pw_uid}")
        runtime_dir.mkdir(parents=True, exist_ok=True)
        os.chown(runtime_dir, account.pw_uid, account.pw_gid)
        runtime_dir.chmod(0o700)
        command = ["runuser", "-u", ROOTLESS, "--", "env", f"XDG_RUNTIME_DIR={runtime_dir}",
                   f"HOME={account.pw_dir}", *PODMAN, "--cgroup-manager", "cgroupfs"]
        tar = tmp_path_factory.mktemp("rootless") / "base.tar"
        subprocess.run(["podman", "save", "--format", "docker-archive", "-o", str(tar),
                        base_image], check=True, capture_output=True, timeout=600)
        with open(tar, "rb") as archive:  # root's file: the user reads it on stdin
            subprocess.run([*command, "load"], stdin=archive, check=True,
                           capture_output=True, timeout=600)
        yield command, (account.pw_uid, account.pw_gid)
    finally:
        end = time.monotonic() + 10  # its podman's pause process and conmons
        while subprocess.run(["pkill", "-KILL", "-u", ROOTLESS]).returncode == 0 and \
                time.monotonic() < end:
            time.sleep(0.2)
        subprocess.run(["userdel", "-r", "-f", ROOTLESS], capture_output=True)
        for path in ("/etc/subuid", "/etc/subgid"):
            lines = Path(path).read_text().splitlines(keepends=True)
            Path(path).write_text("".join(x for x in lines if not x.startswith(ROOTLESS + ":")))


@pytest.mark.parametrize("confined", [True, False])
def test_a_rootless_container(rootless, base_image, victim_in, build_dir, tmp_path, confined):
    """Snapshotted by root on the host, and by the user who runs it (its own
    process in a user namespace it owns).  The user lacks CAP_SYS_ADMIN, so a
    target under the runtime's default seccomp profile is refused, saying so;
    one without filters is taken."""
    from helpers import in_fork

    from snapcore.engine.request import Request
    from snapcore.engine.snapshot import take
    from snapcore.errors import SnapcoreError
    command, (uid, gid) = rootless
    report = Path(tempfile.mkdtemp(prefix="snapcore-rootless-"))  # the user must reach it
    report.chmod(0o777)
    name = f"snapcore-rootless-{os.getpid()}"
    options = [] if confined else ["--security-opt", "seccomp=unconfined"]
    proc = subprocess.run([*command, "run", "-d", "--name", name, "--network", "none",
                           "--ulimit", "nofile=1024:20000", "--ulimit", "nproc=4096:4096",
                           "-v", f"{build_dir}:/t:ro", "-v", f"{report}:/report", *options,
                           base_image, f"/t/{victim_in}", "sleep", "/report/target.txt"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    try:
        pid = int(subprocess.run([*command, "inspect", "-f", "{{.State.Pid}}", name],
                                 check=True, capture_output=True, text=True).stdout)
        target = Container.__new__(Container)
        target.report_dir, target.pid = report, pid
        beats = target.wait_for_beats()
        assert os.stat(f"/proc/{pid}").st_uid == uid  # its root is the user outside
        code, doc, err = snap_from_host(pid, tmp_path / "cores")
        assert code == 0, err
        assert doc["thread_map"][0]["core_lwp"] == 1, doc["thread_map"]

        shared = Path(tempfile.mkdtemp(prefix="snapcore-rootless-"))
        shared.chmod(0o1777)

        def work():
            try:
                snap = take(pid, Request(output_dir=shared / "cores", max_per_hour=0))
                return {"core": str(snap.core_path), "uid": snap.core_path.stat().st_uid}
            except SnapcoreError as exc:
                return {"error": exc.one_line(), "code": int(exc.exit_code)}

        try:
            result = in_fork(work, user=(uid, gid))
        finally:
            shutil.rmtree(shared, ignore_errors=True)
        if confined:
            assert result.get("code") == ExitCode.UNSUPPORTED, result
            assert "CAP_SYS_ADMIN" in result["error"], result
        else:
            assert "core" in result, result
            assert result["uid"] == uid, result
        target.wait_for_beats(beats + 2)
        assert settled(pid) == [] and violations(target) == []
    finally:
        subprocess.run([*command, "rm", "-f", "-t", "0", name], capture_output=True)
        shutil.rmtree(report, ignore_errors=True)
