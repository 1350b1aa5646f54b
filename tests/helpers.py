"""What several test files share: reading cores and verdicts, waiting on /proc,
running snapcore on a pseudo-terminal."""

from __future__ import annotations

import ctypes
import fcntl
import json
import os
import pty
import re
import struct
import subprocess
import sys
import termios
import time
import traceback
from pathlib import Path

from elftools.elf.elffile import ELFFile

from snapcore.linux.procstat import read_stat
from conftest import run_snapcore


def prstatus_pids(core: Path) -> list[int]:
    """Thread ids in the core's NT_PRSTATUS notes, read with pyelftools (not snapcore)."""
    pids = []
    with open(core, "rb") as f:
        for segment in ELFFile(f).iter_segments():
            if segment["p_type"] != "PT_NOTE":
                continue
            for note in segment.iter_notes():
                if note["n_type"] == "NT_PRSTATUS":
                    # struct elf_prstatus: siginfo (12), cursig (2+2), sigpend (8),
                    # sighold (8), then pr_pid.
                    pids.append(int.from_bytes(note["n_desc"][32:36], "little"))
    return pids


def cores_in(directory: Path) -> list[str]:
    """The cores in an output directory (records and .snapcore/ state aside), sorted."""
    return sorted(p for p in os.listdir(directory) if p.endswith((".core", ".core.zst")))


def check_json(*args: str) -> tuple[int, dict]:
    proc = run_snapcore("check", "--json", *args)
    return proc.returncode, json.loads(proc.stdout)


def verdicts(doc: dict) -> dict[str, str]:
    return {c["name"]: c["verdict"] for c in doc["checks"]}


def process_state(pid: int, tid: int | None = None) -> str:
    """One letter, as ps shows it ("" once the process is gone)."""
    try:
        return read_stat(pid, tid).state
    except (FileNotFoundError, ProcessLookupError):
        return ""


def wait_until(predicate, what: str, timeout: float = 10.0) -> None:
    """Poll until predicate() is true; fail naming `what` after `timeout` s."""
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, f"timed out waiting until {what}"
        time.sleep(0.005)


def a_kernel_thread() -> int:
    """Some kernel thread's pid (PF_KTHREAD in its stat flags); kthreadd is
    pid 2 only in the initial pid namespace."""
    for entry in sorted(os.listdir("/proc"), key=lambda e: (len(e), e)):
        if entry.isdigit():
            try:
                if read_stat(int(entry)).kernel_thread:
                    return int(entry)
            except OSError:
                continue
    raise AssertionError("no kernel thread visible in /proc")


def on_terminal(*args: str, columns: int = 80) -> tuple[int, str]:
    """Run snapcore with stdin, stdout and stderr on a new pseudo-terminal."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    proc = subprocess.Popen([sys.executable, "-m", "snapcore", *args], stdin=slave,
                            stdout=slave, stderr=slave, cwd=Path(__file__).parent.parent,
                            start_new_session=True)
    os.close(slave)
    text = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:
            break  # the other side closed
        if not chunk:
            break
        text += chunk
    code = proc.wait(timeout=120)
    os.close(master)
    return code, re.sub(rb"\x1b\[[0-9;?]*[a-zA-Z]", b"", text).decode(errors="replace")


def in_fork(work, as_nobody: bool = False, user: tuple[int, int] | None = None):
    """work() in a forked copy of this process, and what it returns (JSON), or
    {"crash": traceback}.  Forked: the engine takes SIGCHLD for itself, and the
    interpreter lives under /root, where `nobody` could not import from (the
    modules work() needs are loaded already).  `as_nobody`: as that user;
    `user`: as that (uid, gid)."""
    if as_nobody:
        user = (65534, 65534)
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:
        try:
            if user:
                os.setgroups([])
                os.setgid(user[1])
                os.setuid(user[0])
                # A uid change leaves the process undumpable (its /proc files
                # root's): a user's own snapcore never is.  PR_SET_DUMPABLE 4.
                ctypes.CDLL(None, use_errno=True).prctl(4, 1, 0, 0, 0)
            try:
                result = work()
            except BaseException:
                result = {"crash": traceback.format_exc()}
            os.write(write_end, json.dumps(result).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as f:
        text = f.read()
    os.waitpid(child, 0)
    return json.loads(text)


def leftover_staging(directory: str) -> list[str]:
    """The staging directories in DIRECTORY that no running snapcore owns:
    one whose maker (the pid in .snapcore-staging-PID-...) is gone was left
    behind.  Another test run on the machine may be staging meanwhile: its
    directory carries its own live pid and is not a leftover of ours."""
    left = []
    for name in os.listdir(directory):
        if not name.startswith(".snapcore-staging-"):
            continue
        head = name[len(".snapcore-staging-"):].partition("-")[0]
        if not (head.isdigit() and os.path.exists(f"/proc/{head}")):
            left.append(name)
    return left
