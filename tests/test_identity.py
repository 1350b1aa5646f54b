"""One program, as the operator means it, for the rate limit and the lock.

Real processes that retitle themselves as redis, PostgreSQL and nginx do
(tests/targets/title.c): the key is the command line the program was exec'd
with, read from the process that made the exec, never a title that changes
with each query, never NUL padding, and two masters of one executable with
different arguments are two programs.
"""

from __future__ import annotations

import hashlib
import json
import os
import select
import subprocess
from pathlib import Path

import pytest


from snapcore.engine.ratelimit import program
from snapcore.errors import ExitCode
from snapcore.linux import procfs

from conftest import compile_target, run_snapcore, snap_json


@pytest.fixture(scope="session")
def title_exe(build_dir):
    return compile_target(build_dir, "title")


class Titled:
    """A title.c process: `retitle`, `fork` (a child without exec), `retitle_child`."""

    def __init__(self, exe: Path, pad: str, *args: str):
        self.proc = subprocess.Popen([str(exe), pad, *args], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, cwd="/")
        self.pending = b""  # read from the pipe, not yet a whole line
        self.pid = int(self._line().split()[1])
        self.children: list[int] = []

    def _line(self) -> str:
        # The child and the parent write to one pipe: lines, read unbuffered.
        while b"\n" not in self.pending:
            ready, _, _ = select.select([self.proc.stdout], [], [], 30)
            assert ready, "title target did not answer"
            self.pending += os.read(self.proc.stdout.fileno(), 4096)
        line, self.pending = self.pending.split(b"\n", 1)
        return line.decode() + "\n"

    def _say(self, text: str) -> str:
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()
        return self._line()

    def retitle(self, text: str) -> None:
        assert self._say(f"t {text}") == "done\n"

    def fork(self, title: str) -> int:
        said = sorted([self._say(f"f {title}"), self._line()])  # in either order
        assert said[1] == "done\n", said  # the child has its title
        child = int(said[0].split()[1])
        self.children.append(child)
        return child

    def retitle_child(self, text: str) -> None:
        assert self._say(f"c {text}") == "done\n"

    def assert_unharmed(self) -> None:
        for pid in [self.pid, *self.children]:
            status = Path(f"/proc/{pid}/status").read_text(errors="replace")
            fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
            assert fields["State"][0] not in "tTZ", (pid, fields["State"])
            assert fields["TracerPid"].strip() == "0", pid
        assert self.proc.poll() is None

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


@pytest.fixture
def titled(title_exe):
    started = []

    def start(pad: str, *args: str) -> Titled:
        started.append(Titled(title_exe, pad, *args))
        return started[-1]
    yield start
    for t in started:
        t.stop()


def key(pid: int) -> str:
    return program(procfs.read(pid))


def cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode()


@pytest.mark.parametrize("pad", ["nul", "space"])
def test_a_retitled_process_is_named_by_its_title_trimmed(titled, title_exe, out_dir, pad):
    # redis: the argv area overwritten with "redis-server *:6379" and padding.
    server = titled(pad, "--port", "6379")
    server.retitle("redis-like *:6379")
    assert "\0" in cmdline(server.pid) or "   " in cmdline(server.pid)  # the padding is there
    assert key(server.pid) == f"redis-like *:6379 ({title_exe})"
    code, doc = snap_json("--max-per-hour", "1", "-o", str(out_dir), str(server.pid))
    assert code == 0, doc
    assert doc["target"]["program"] == f"redis-like *:6379 ({title_exe})"
    refused = run_snapcore("--max-per-hour", "1", "-o", str(out_dir), str(server.pid))
    assert refused.returncode == ExitCode.RATE_LIMITED, refused.stderr
    assert "of redis-like *:6379 (" in refused.stderr
    assert "\0" not in refused.stderr and "  " not in refused.stderr
    server.assert_unharmed()


def test_a_forked_child_is_its_masters_program_whatever_its_title(titled, out_dir):
    # PostgreSQL: the postmaster keeps its command line, each backend shows a
    # title that changes with each query: one program, the postmaster's.
    master = titled("nul", "-D", "/srv/cluster-a")
    backend = master.fork("postgres: app app [local] idle")
    assert key(backend) == key(master.pid) == cmdline(master.pid).rstrip("\0").replace(
        "\0", " ")
    code, doc = snap_json("--max-per-hour", "2", "-o", str(out_dir), str(backend))
    assert code == 0 and doc["target"]["program"] == key(master.pid), doc
    master.retitle_child("postgres: app app [local] COMMIT")
    assert key(backend) == key(master.pid)
    code, doc = snap_json("--max-per-hour", "2", "-o", str(out_dir), str(backend))
    assert code == 0, doc
    code, doc = snap_json("--max-per-hour", "2", "-o", str(out_dir), str(master.pid))
    assert code == ExitCode.RATE_LIMITED, doc  # two of the cluster's program this hour
    master.assert_unharmed()


def test_workers_of_two_masters_are_two_programs(titled, title_exe, out_dir):
    # nginx: two masters of one executable with different arguments, each
    # retitled, each with a worker titled alike: two programs, not one.
    masters = [titled("nul", "-c", f"/etc/site-{n}.conf") for n in "ab"]
    workers = []
    for n, master in zip("ab", masters):
        master.retitle(f"nginx: master process {title_exe} -c /etc/site-{n}.conf")
        workers.append(master.fork("nginx: worker process"))
    assert key(workers[0]) != key(workers[1])
    assert [key(w) for w in workers] == [key(m.pid) for m in masters]
    for worker in workers:
        code, doc = snap_json("--max-per-hour", "1", "-o", str(out_dir), str(worker))
        assert code == 0, doc
    code, doc = snap_json("--max-per-hour", "1", "-o", str(out_dir), str(masters[0].pid))
    assert code == ExitCode.RATE_LIMITED, doc
    state = json.loads((out_dir / ".snapcore" / "state.json").read_text())
    assert sorted(state) == sorted(key(m.pid) for m in masters)
    for master in masters:
        master.assert_unharmed()


def test_the_lock_is_the_programs_whatever_the_title(titled, out_dir):
    # One snapshot at a time per program: a backend's lock is its master's.
    from snapcore.engine.ratelimit import RateLimiter
    master = titled("nul", "-D", "/srv/cluster-b")
    backend = master.fork("postgres: checkpointer")
    with RateLimiter(out_dir, 4).exclusive(key(master.pid), master.pid):
        proc = run_snapcore("-o", str(out_dir), str(backend))
    assert proc.returncode == ExitCode.BUSY, proc.stderr
    name = hashlib.sha256(key(master.pid).encode()).hexdigest()[:16]
    assert (out_dir / ".snapcore" / f"lock-{name}").exists()
    master.assert_unharmed()
