"""The target's control groups (v1 and v2): limits a snapshot must respect.

/proc/PID/cgroup lists one line per hierarchy: "N:controllers:path" for v1,
"0::path" for v2.  Limits apply along the path, so each is read for the
target's cgroup and every ancestor, and the tightest wins.
"""

from __future__ import annotations

import os

ROOT = "/sys/fs/cgroup"
_UNLIMITED = 1 << 62  # v1 writes "no limit" as a huge number, v2 as "max"


def paths(pid: int) -> dict[str, str]:
    """controller -> directory of the target's cgroup ("" key: the v2 one)."""
    found: dict[str, str] = {}
    with open(f"/proc/{pid}/cgroup") as f:
        for line in f:
            _n, controllers, path = line.rstrip("\n").split(":", 2)
            if controllers == "":
                found[""] = os.path.join(ROOT, "unified" if os.path.isdir(
                    f"{ROOT}/unified") else "", path.lstrip("/"))
            for name in controllers.split(","):
                if name:
                    found[name] = os.path.join(ROOT, name, path.lstrip("/"))
    return found


def systemd_unit(pid: int) -> str | None:
    """The systemd service the process runs in (`redis-server.service`), from
    the path systemd gives each unit's cgroup (v2, or v1's name=systemd
    hierarchy): the innermost `*.service` component.  None outside one."""
    try:
        with open(f"/proc/{pid}/cgroup") as f:
            lines = [line.rstrip("\n").split(":", 2) for line in f]
    except OSError:
        return None
    for _n, controllers, path in sorted(lines, key=lambda l: l[1] != "name=systemd"):
        if controllers in ("", "name=systemd"):
            units = [part for part in path.split("/") if part.endswith(".service")]
            if units:
                return units[-1]
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


def _tightest(pid: int, controller: str, limit_file: str,
              usage_file: str) -> tuple[str, int] | None:
    """(file naming the limit, limit - usage) of the tightest cgroup on the way up."""
    try:
        base = paths(pid).get(controller)
    except OSError:
        return None
    if base is None:
        return None
    top = os.path.join(ROOT, controller or ("unified" if os.path.isdir(f"{ROOT}/unified")
                                            else ""))
    best = None
    for directory in _ancestors(base, top):
        limit = _number(_read(os.path.join(directory, limit_file)))
        usage = _number(_read(os.path.join(directory, usage_file)))
        if limit is None or usage is None:
            continue
        room = limit - usage
        if best is None or room < best[1]:
            best = (os.path.join(directory, limit_file), room)
    return best


def memory_headroom(pid: int) -> tuple[str, int] | None:
    """Bytes left below the memory limit of the target's cgroup (v2 memory.max,
    v1 memory.limit_in_bytes), with the file that sets it; None: no limit."""
    found = [h for h in (_tightest(pid, "", "memory.max", "memory.current"),
                         _tightest(pid, "memory", "memory.limit_in_bytes",
                                   "memory.usage_in_bytes")) if h]
    return min(found, key=lambda h: h[1]) if found else None


def anon_bytes(limit_file: str) -> int | None:
    """Anonymous memory charged to the cgroup whose limit is `limit_file`, its
    descendants included (v2 memory.stat anon, v1 total_rss): what the copies
    a copy-on-write child causes add to.  Page cache (the core being written
    goes there too) is left out: the kernel reclaims it under the limit."""
    text = _read(os.path.join(os.path.dirname(limit_file), "memory.stat"))
    if text is None:
        return None
    stats = dict(line.split() for line in text.splitlines() if len(line.split()) == 2)
    value = stats.get("anon", stats.get("total_rss"))
    return int(value) if value is not None else None


def tasks_headroom(pid: int) -> tuple[str, int] | None:
    """Tasks left below pids.max of the target's cgroup (v1 or v2)."""
    found = [h for h in (_tightest(pid, "", "pids.max", "pids.current"),
                         _tightest(pid, "pids", "pids.max", "pids.current")) if h]
    return min(found, key=lambda h: h[1]) if found else None


def frozen(pid: int) -> str | None:
    """The cgroup that freezes the target (v1 freezer.state FROZEN/FREEZING, v2
    cgroup.events "frozen 1"), or None.  A frozen task never reaches a ptrace
    stop: snapcore would only wait out its timeout."""
    try:
        found = paths(pid)
    except OSError:
        return None
    v1 = found.get("freezer")
    if v1 and _read(os.path.join(v1, "freezer.state")) in ("FROZEN", "FREEZING"):
        return v1
    v2 = found.get("")
    events = _read(os.path.join(v2, "cgroup.events")) if v2 else None
    if events and "frozen 1" in events.splitlines():
        return v2
    return None
