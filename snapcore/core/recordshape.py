"""What a record must hold for list, info, debug and prune to read it: the
type of each field, a core's name beside it, a time.  A record of another
shape (hand-edited, truncated, another program's JSON) is skipped, never a
reason for the others to go unread."""

from __future__ import annotations

import json
import re
from datetime import datetime
from pathlib import Path

CORE_SUFFIXES = (".core", ".core.zst")

_RECORD_NAME = re.compile(r"\d{8}T\d{6}\.\d{3}Z_.*_\d+\.json")
_TEXT, _COUNT, _NUMBER = (str, type(None)), (int, type(None)), (int, float, type(None))
# What each field is, where a record has it (older ones lack some): what
# list, info, debug and prune read.  taken_at, core and core.file must be.
_FIELDS = {
    "taken_at": (str,), "core": (dict,), "core.file": (str,), "core.size": _COUNT,
    "core.allocated": _COUNT, "core.compressed": (bool, type(None)), "reason": _TEXT,
    "target": (dict,), "target.pid": _COUNT, "target.uid": _COUNT, "target.name": _TEXT,
    "target.exe": _TEXT, "target.program": _TEXT, "target.build_id": _TEXT,
    "target.user": _TEXT, "target.started_at": _TEXT, "target.cmdline": (list, type(None)),
    "threads": (list,), "notes": (list,), "priority_steps": (list,),
    "regions_missing": (list,), "pause_ms": _NUMBER, "dump_seconds": _NUMBER,
    "hostname": _TEXT, "kernel": _TEXT, "snapcore_version": _TEXT,
}
_REQUIRED = ("taken_at", "core", "core.file")


def shape_problem(data) -> str | None:
    """What makes `data` no record snapcore can read, in words; None if it is one."""
    if not isinstance(data, dict):
        return f"a JSON {type(data).__name__}, not an object"
    for key, kinds in _FIELDS.items():
        head, _, field = key.partition(".")
        within = data.get(head) if field else data
        if not isinstance(within, dict) or (field or head) not in within:
            if key in _REQUIRED:
                return f"no {key!r}"
            continue
        value = within[field or head]
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            return f"{key!r} is {json.dumps(value)[:40]}, not {_kinds(kinds)}"
    return _content_problem(data)


def _kinds(kinds: tuple) -> str:
    names = {str: "a string", int: "a number", float: "a number", bool: "true or false",
             list: "a list", dict: "an object", type(None): "null"}
    return " or ".join(dict.fromkeys(names[k] for k in kinds))


def _content_problem(data: dict) -> str | None:
    name = data["core"]["file"]
    if Path(name).name != name or not name.endswith(CORE_SUFFIXES):
        return f"'core.file' is {json.dumps(name)[:40]}, not a core's name beside it"
    try:
        datetime.fromisoformat(data["taken_at"].replace("Z", "+00:00")).timestamp()
    except ValueError:
        return f"'taken_at' is {json.dumps(data['taken_at'])[:40]}, not a time"
    lists = {"target.cmdline": (data.get("target") or {}).get("cmdline") or [],
             "notes": data.get("notes", [])}
    for key, items in lists.items():
        if not all(isinstance(item, str) for item in items):
            return f"{key!r} holds something other than strings"
    if not all(isinstance(t, dict) and isinstance(t.get("name"), _TEXT)
               for t in data.get("threads", [])):
        return "'threads' holds something other than threads (objects with a name)"
    return None


def looks_like_ours(sidecar: Path) -> bool:
    stem = sidecar.name[:-len(".json")]
    return bool(_RECORD_NAME.fullmatch(sidecar.name)) or any(
        (sidecar.parent / (stem + suffix)).exists() for suffix in CORE_SUFFIXES)
