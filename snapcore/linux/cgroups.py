"""The target's control groups (v1 and v2): limits a snapshot must respect.

/proc/PID/cgroup lists one line per hierarchy: "N:controllers:path" for v1,
"0::path" for v2.  Limits apply along the path, so each is read for the
target's cgroup and every ancestor, and the tightest wins.
"""

from __future__ import annotations

import os
import re
from functools import cached_property

from snapcore.linux.proctext import proc_open

PROC = "/proc"

_UNLIMITED = 1 << 62  # v1 writes "no limit" as a huge number, v2 as "max"


def _parts(path: str) -> list[str]:
    return [part for part in path.split("/") if part]


def _unescape(text: str) -> str:
    """A mountinfo field: space, tab, newline and backslash come as \\ooo."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), text)


def _mounts(proc: str = PROC) -> dict[str, list[tuple[str, list[str]]]]:
    """hierarchy ("" for v2, else each v1 controller or name=X) -> every
    (mount point, the mount's root) of it.  The kernel shows a cgroup mount's
    root, like /proc/PID/cgroup's paths, relative to the reader's cgroup
    namespace root (kernel/cgroup: cgroup_show_path): "/../.." for a
    hierarchy mounted outside snapcore's cgroup namespace."""
    found: dict[str, list[tuple[str, list[str]]]] = {}
    with proc_open(f"{proc}/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fields, fs = left.split(), right.split()
            if len(fields) < 5 or len(fs) < 3 or fs[0] not in ("cgroup", "cgroup2"):
                continue
            for key in ([""] if fs[0] == "cgroup2" else fs[2].split(",")):
                found.setdefault(key, []).append((_unescape(fields[4]),
                                                  _parts(_unescape(fields[3]))))
    return found


def _locate(path: str, mounts: list[tuple[str, list[str]]]) -> tuple[str, str] | None:
    """(directory, mount point) of a cgroup named as /proc/PID/cgroup names it;
    None when no mount here reaches it: a path above snapcore's cgroup
    namespace ("/../x") under a mount made inside it, or no mount at all."""
    parts = _parts(path)
    for point, root in mounts:
        rest = parts[len(root):]
        if parts[:len(root)] == root and ".." not in rest:
            directory = os.path.join(point, *rest)
            if os.path.isdir(directory):
                return directory, point
    return None


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def _number(text: str | None) -> int | None:
    if text is None or text == "max":
        return None
    value = int(text)
    return None if value >= _UNLIMITED else value


def _ancestors(directory: str, top: str):
    while True:
        yield directory
        if os.path.normpath(directory) == os.path.normpath(top) or directory in ("/", ""):
            return
        directory = os.path.dirname(directory)


class Membership:
    """The target's cgroups as snapcore sees them: the target's
    /proc/PID/cgroup and snapcore's mountinfo, each read once when first
    needed, and each cgroup file at most once (one preflight sees one
    moment's limits and usage).  A read that fails (the target gone) leaves
    nothing: no cgroup, so no limit and nothing hidden.  The dump's
    controller reads usage live instead (anon_bytes)."""

    def __init__(self, pid: int, proc: str = PROC):
        self.pid, self.proc = pid, proc
        self._files: dict[str, str | None] = {}

    @cached_property
    def lines(self) -> list[tuple[str, str]]:
        """(controllers, path) per hierarchy: "" for v2's controllers."""
        try:
            with proc_open(f"{self.proc}/{self.pid}/cgroup") as f:
                return [(parts[1], parts[2]) for parts in
                        (line.rstrip("\n").split(":", 2) for line in f) if len(parts) == 3]
        except OSError:
            return []

    @cached_property
    def mounts(self) -> dict[str, list[tuple[str, list[str]]]]:
        try:
            return _mounts(self.proc)
        except OSError:
            return {}

    @cached_property
    def located(self) -> dict[str, tuple[str, str] | None]:
        """controller ("" : v2) -> (directory of the target's cgroup, the mount
        point above it), or None when snapcore cannot reach that cgroup."""
        found: dict[str, tuple[str, str] | None] = {}
        for controllers, path in self.lines:
            for name in (controllers.split(",") if controllers else [""]):
                found[name] = _locate(path, self.mounts.get(name, []))
        return found

    def read(self, directory: str, name: str) -> str | None:
        path = os.path.join(directory, name)
        if path not in self._files:
            self._files[path] = _read(path)
        return self._files[path]

    def paths(self) -> dict[str, str | None]:
        """controller -> directory of the target's cgroup ("" key: the v2 one);
        None for a cgroup snapcore cannot reach."""
        return {name: where[0] if where else None for name, where in self.located.items()}

    def hidden(self, controller: str) -> str | None:
        """The target's /proc/PID/cgroup entry for the hierarchy that carries
        `controller` (its v1 one, else the v2 one) when that cgroup lies outside
        snapcore's cgroup namespace ("/.." on its path), or is mounted here but
        not found: its limits cannot be read, and "no limit" would mean nothing.
        None when it is seen (or when that hierarchy is not mounted at all)."""
        v1 = [(c, p) for c, p in self.lines if controller in c.split(",")]
        v2 = [(c, p) for c, p in self.lines if c == ""]
        if not (v1 or v2):
            return None
        controllers, path = (v1 or v2)[0]
        key = controller if v1 else ""
        if self.located.get(key) is not None or not (".." in _parts(path)
                                                     or self.mounts.get(key)):
            return None
        return f"{controllers or '0:'}:{path}"

    def systemd_unit(self) -> str | None:
        """The systemd service the process runs in (`redis-server.service`), from
        the path systemd gives each unit's cgroup (v2, or v1's name=systemd
        hierarchy): the innermost `*.service` component.  None outside one."""
        for controllers, path in sorted(self.lines, key=lambda line: line[0] != "name=systemd"):
            if controllers in ("", "name=systemd"):
                units = [part for part in path.split("/") if part.endswith(".service")]
                if units:
                    return units[-1]
        return None

    def _tightest(self, controller: str, limit_file: str,
                  usage_file: str) -> tuple[str, int] | None:
        """(file naming the limit, limit - usage) of the tightest cgroup on the way up."""
        where = self.located.get(controller)
        if where is None:
            return None
        best = None
        for directory in _ancestors(*where):
            limit = _number(self.read(directory, limit_file))
            usage = _number(self.read(directory, usage_file))
            if limit is None or usage is None:
                continue
            if best is None or limit - usage < best[1]:
                best = (os.path.join(directory, limit_file), limit - usage)
        return best

    def memory_headroom(self) -> tuple[str, int] | None:
        """Bytes left below the memory limit of the target's cgroup (v2
        memory.max, v1 memory.limit_in_bytes), with the file that sets it;
        None: no limit."""
        found = [h for h in (self._tightest("", "memory.max", "memory.current"),
                             self._tightest("memory", "memory.limit_in_bytes",
                                            "memory.usage_in_bytes")) if h]
        return min(found, key=lambda h: h[1]) if found else None

    def tasks_headroom(self) -> tuple[str, int] | None:
        """Tasks left below pids.max of the target's cgroup (v1 or v2)."""
        found = [h for h in (self._tightest("", "pids.max", "pids.current"),
                             self._tightest("pids", "pids.max", "pids.current")) if h]
        return min(found, key=lambda h: h[1]) if found else None

    def oom_group(self) -> tuple[str, tuple[str, int] | None] | None:
        """The lowest cgroup on the target's v2 path with memory.oom.group 1
        (kubelet sets it on every container), with the tightest (limit file,
        room) at or above it; None without one.

        An OOM kill walks from the victim's cgroup up to the cgroup whose limit
        was hit (the root for the machine's own OOM) and kills every task of the
        highest one there with oom.group set (mm/memcontrol.c:
        mem_cgroup_get_oom_group): the snapshot child lives in the target's
        cgroup, so an OOM under any limit at or above that cgroup, or of the
        machine, takes the target with the child whatever their oom_score_adj."""
        where = self.located.get("")
        if where is None:
            return None
        group, tightest = None, None
        for directory in _ancestors(*where):
            if group is None and self.read(directory, "memory.oom.group") == "1":
                group = directory
            limit = _number(self.read(directory, "memory.max"))
            usage = _number(self.read(directory, "memory.current"))
            if group is None or limit is None or usage is None:
                continue
            if tightest is None or limit - usage < tightest[1]:
                tightest = (os.path.join(directory, "memory.max"), limit - usage)
        return (group, tightest) if group else None

    def frozen(self) -> str | None:
        """The cgroup that freezes the target (v1 freezer.state FROZEN/FREEZING,
        v2 cgroup.events "frozen 1"), or None.  A frozen task never reaches a
        ptrace stop: snapcore would only wait out its timeout."""
        found = self.paths()
        v1 = found.get("freezer")
        if v1 and self.read(v1, "freezer.state") in ("FROZEN", "FREEZING"):
            return v1
        v2 = found.get("")
        events = self.read(v2, "cgroup.events") if v2 else None
        if events and "frozen 1" in events.splitlines():
            return v2
        return None


def anon_bytes(limit_file: str) -> int | None:
    """Anonymous memory charged to the cgroup whose limit is `limit_file`, its
    descendants included (v2 memory.stat anon, v1 total_rss): what the copies
    a copy-on-write child causes add to.  Page cache (the core being written
    goes there too) is left out: the kernel reclaims it under the limit.
    Read live, at each of the dump controller's looks (engine/controller.py)."""
    text = _read(os.path.join(os.path.dirname(limit_file), "memory.stat"))
    if text is None:
        return None
    stats = dict(line.split() for line in text.splitlines() if len(line.split()) == 2)
    value = stats.get("anon", stats.get("total_rss"))
    return int(value) if value is not None else None
