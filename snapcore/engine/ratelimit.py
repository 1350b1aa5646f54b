"""At most N snapshots per target per hour, and one at a time per target.

A cron job looping every minute must not hammer a server.  State lives under
the output directory (`.snapcore/`), shared by concurrent snapcore runs and
guarded by flock(2): `state.json` holds the times of recent snapshots per
program (see `program`), and `lock-<hash>` is held for the whole of one snapshot.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import time
from pathlib import Path

from snapcore.core import safefs
from snapcore.errors import AlreadyTraced, SnapcoreError, Stage
from snapcore.linux import cgroups, execargs, procfs
from snapcore.linux.procfs import Target
from snapcore.linux.proctext import readable

WINDOW = 3600.0


class RateLimiter:
    """The state lives in `.snapcore/` of the output directory, which may be a
    sticky one others write too: the directory must be snapcore's own (never
    a symlink), and its files are opened without following a name
    (core/safefs.py)."""

    def __init__(self, output_dir: Path, max_per_hour: int, clock=time.time):
        self.output_dir = Path(output_dir)
        self.dir = self.output_dir / ".snapcore"
        self.max_per_hour = max_per_hour
        self.clock = clock

    def _open(self, name: str, create: bool, write: bool = True):
        """`.snapcore/NAME`, a file of snapcore's own, as a file object;
        FileNotFoundError when it (or .snapcore) is missing and not to be made."""
        if create:
            self.output_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        out = os.open(self.output_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            state_dir = safefs.own_dir(out, ".snapcore", self.dir, create)
        finally:
            os.close(out)
        try:
            fd = safefs.open_own(state_dir, name, self.dir / name,
                                 os.O_RDWR if write else os.O_RDONLY, create)
        finally:
            os.close(state_dir)
        return os.fdopen(fd, "r+" if write else "r")

    def _parse(self, text: str) -> dict:
        try:
            state = json.loads(text or "{}")
            if not isinstance(state, dict):
                raise ValueError("not a JSON object")
        except ValueError as exc:
            # Never start counting again from nothing: that would lift the limit.
            raise ValueError(f"{self.dir / 'state.json'} is corrupt ({exc})") from None
        return state

    @contextlib.contextmanager
    def _locked_state(self, create: bool = True):
        with self._open("state.json", create) as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            f.seek(0)
            state = self._parse(f.read())
            yield state
            f.seek(0)
            f.truncate()
            f.write(json.dumps(state))

    def recent(self, key: str) -> list[float]:
        """The times of `key`'s snapshots in the last hour, read and never
        written: a check or a question (watch's next moment) changes nothing;
        only `record`, after a snapshot, prunes what is older.  The shared
        lock waits out a `record` half way through its rewrite."""
        now = self.clock()
        try:
            with self._open("state.json", create=False, write=False) as f:
                fcntl.flock(f, fcntl.LOCK_SH)
                state = self._parse(f.read())
        except FileNotFoundError:
            return []
        return [t for t in state.get(key, []) if now - t < WINDOW]

    def next_allowed(self, key: str, recent: list[float] | None = None) -> float | None:
        """None when a snapshot is allowed now, else the time it will be
        (`recent`: the times `recent(key)` gave, when already read)."""
        if self.max_per_hour <= 0:
            return None
        times = sorted(self.recent(key) if recent is None else recent)
        if len(times) < self.max_per_hour:
            return None
        return times[-self.max_per_hour] + WINDOW

    def record(self, key: str) -> None:
        now = self.clock()
        with self._locked_state() as state:
            state[key] = [t for t in state.get(key, []) if now - t < WINDOW] + [now]

    @contextlib.contextmanager
    def exclusive(self, key: str, pid: int):
        """Hold the per-target lock for one snapshot; refuse when another run holds it."""
        name = hashlib.sha256(key.encode()).hexdigest()[:16]
        with self._open(f"lock-{name}", create=True) as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                    raise
                raise AlreadyTraced(f"busy: another snapcore is snapshotting {label(key)} right "
                                    "now", "wait for it to finish", pid=pid,
                                    stage=Stage.PREFLIGHT) from None
            yield


def program(target: Target, membership: cgroups.Membership | None = None) -> str:
    """What an operator calls one program, which the rate limit and the lock
    count: its systemd service where it runs under one (whatever its pid
    after a restart), else its command line as it was exec'd, read from the
    process that made the exec it runs (a PostgreSQL backend or an nginx
    worker is its master's program, whatever title it shows: linux/execargs.py).
    A process that rewrote its own argv area keeps nothing of it: its title
    then, trimmed.  The executable is added when the command line does not
    name it: the executable alone would lump every Python or Java service of
    a host together, and name a symlinked one (redis-server) after its
    target (redis-check-rdb).  `membership`: the target's cgroups as the
    preflight read them (else read now)."""
    unit = (membership or cgroups.Membership(target.pid)).systemd_unit()
    if unit:
        return unit
    image = execargs.leader(target.pid)
    words = image.argv if image.argv is not None else image.title.split(b"\0")
    line = readable(" ".join(w.decode(errors="replace").strip() for w in words if w.strip()))
    exe = target.exe.removesuffix(" (deleted)")  # upgraded on disk: the same program
    if not line:
        return exe or f"pid {target.pid}"
    first = (words[0].decode(errors="replace") if image.argv else "")
    return line if not exe or first == exe else f"{line} ({exe})"


def next_snapshot(pid: int, output_dir: Path, max_per_hour: int) -> float | None:
    """When the rate limit next allows a snapshot of pid's program; None: now,
    or not known here (the snapshot's own check then says why)."""
    try:
        return RateLimiter(output_dir, max_per_hour).next_allowed(program(procfs.read(pid)))
    except (SnapcoreError, OSError, ValueError):
        return None


def label(program_name: str) -> str:
    """A program's name for a one-line message: a JVM's command line runs to
    kilobytes."""
    return program_name if len(program_name) <= 60 else program_name[:59] + "…"


def time_text(when: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(when))
