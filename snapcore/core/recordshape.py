"""The record beside every core, as a model: each field with its type and
its default (`RecordData`).  `to_json` is what snapcore writes; `from_json`
reads what any snapcore wrote.  `shape_problem` says, from the same model,
why a JSON document is no record this snapcore can read (hand-edited,
truncated, another program's): it is skipped, never a reason for the others
to go unread.  The schema, field by field: man/snapcore.1, RECORD.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
import types
import typing
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

CORE_SUFFIXES = (".core", ".core.zst")

# The record's schema.  Raised when a field changes its meaning or type, never
# for a field added (a reader that does not know it keeps it: `unknown`).  A
# record without "version" was written before the field existed: version 1.
VERSION = 1

_RECORD_NAME = re.compile(r"\d{8}T\d{6}\.\d{3}Z_.*_\d+\.json")
# taken_at, core and core.file must be there; any other field may be missing
# (older records lack some) and then reads as its default below.
_REQUIRED = ("taken_at", "core", "core.file")


class _Model:
    """A JSON object as a dataclass.  Every default is the field's own (the one
    place a missing key is given a value).  Keys this snapcore does not know
    (a newer one's) are kept in `unknown` and written back after the known
    ones: `info --json` shows the whole record, and nothing is lost if a
    record is ever rewritten."""

    unknown: dict

    @classmethod
    def from_json(cls, data: dict) -> typing.Any:
        hints, known, unknown = _hints(typing.cast(type, cls)), {}, {}
        for key, value in data.items():
            if key in hints:
                known[key] = _read(hints[key], value)
            else:
                unknown[key] = value
        return typing.cast(typing.Any, cls)(**known, unknown=unknown)  # a dataclass below

    def to_json(self) -> dict:
        out = {f.name: _written(getattr(self, f.name))
               for f in dataclasses.fields(typing.cast(typing.Any, self))
               if f.name != "unknown"}
        return {**out, **self.unknown}


def _kept() -> dict:
    return field(default_factory=dict, repr=False, compare=False)


@dataclass
class Thread(_Model):
    tid: int | None = None  # the target's thread id
    name: str | None = None  # its name (comm)
    core_lwp: int | None = None  # the LWP the core names it by: its id in its pid namespace
    child_tid: int | None = None  # the child's thread that stood for it (the kernel's writer)
    unknown: dict = _kept()


@dataclass
class Target(_Model):
    pid: int | None = None
    name: str | None = None
    exe: str | None = None  # the target's own name for its executable
    cmdline: list[str] | None = None  # less the empty arguments a rewritten argv leaves
    build_id: str | None = None  # the executable's GNU build-id, hex
    started_at: str | None = None  # ISO 8601, UTC
    user: str | None = None
    uid: int | None = None
    program: str | None = None  # what the rate limit counts (ratelimit.program)
    unknown: dict = _kept()


@dataclass
class CoreFile(_Model):
    file: str = ""  # the core's name, beside the record
    size: int | None = None  # bytes, as stored
    allocated: int | None = None  # bytes on disk (a sparse core's holes take none)
    compressed: bool | None = None  # zstandard (.core.zst)
    unknown: dict = _kept()


@dataclass
class Writer(_Model):
    name: str | None = None  # "kernel" or "snapcore"
    reason: str | None = None  # why that writer
    unknown: dict = _kept()


@dataclass
class RecordData(_Model):
    """A record's fields in the order written (the JSON keys are what scripts
    read: never renamed)."""

    version: int = VERSION
    snapcore_version: str | None = None
    taken_at: str = ""  # ISO 8601, UTC, "Z"
    reason: str | None = ""  # the operator's (--reason)
    trigger: str | None = ""  # the condition that fired it (watch)
    target: Target = field(default_factory=Target)
    threads: list[Thread] = field(default_factory=list)  # the core's order, main first
    pause_ms: float | None = None  # how long the target was stopped
    dump_seconds: float | None = None
    priority_steps: list[dict] = field(default_factory=list)  # the dump's priority raised
    core: CoreFile = field(default_factory=CoreFile)
    core_estimate: int | None = None  # the preflight's guess at `allocated`
    core_estimate_apparent: int | None = None  # ... and at the size with holes
    regions_missing: list[dict] = field(default_factory=list)  # MADV_DONTFORK, WIPEONFORK
    writer: Writer = field(default_factory=Writer)
    notes: list[str] = field(default_factory=list)
    kernel: str | None = None  # uname -r
    hostname: str | None = None
    unknown: dict = _kept()

    @property
    def taken_at_seconds(self) -> float:
        return datetime.fromisoformat(self.taken_at.replace("Z", "+00:00")).timestamp()


@functools.cache
def _hints(cls: type) -> dict:
    return {name: tp for name, tp in typing.get_type_hints(cls).items() if name != "unknown"}


def _model(tp):
    """The model a field holds (a nested object), else None."""
    return tp if isinstance(tp, type) and issubclass(tp, _Model) else None


def _options(tp) -> tuple:
    """The types a field's annotation allows (`int | None`: int and None)."""
    union = isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union
    return typing.get_args(tp) if union else (tp,)


def _read(tp, value):
    for option in _options(tp):
        if _model(option) and isinstance(value, dict):
            return option.from_json(value)
        if typing.get_origin(option) is list and isinstance(value, list):
            item = typing.get_args(option)[0]
            return [item.from_json(v) if _model(item) and isinstance(v, dict) else v
                    for v in value]
    return value


def _written(value):
    if isinstance(value, _Model):
        return value.to_json()
    if isinstance(value, list):
        return [_written(v) for v in value]
    return value


# What JSON gives for each type a field may have.
_JSON = {str: (str,), int: (int,), float: (int, float), bool: (bool,), list: (list,),
         dict: (dict,), type(None): (type(None),)}
_WORDS = {str: "a string", int: "a number", float: "a number", bool: "true or false",
          list: "a list", dict: "an object", type(None): "null"}


def _kinds(tp) -> tuple:
    kinds: tuple = ()
    for option in _options(tp):
        kinds += (dict,) if _model(option) else _JSON[typing.get_origin(option) or option]
    return kinds


def _problem(cls, data: dict, at: str) -> str | None:
    """The first field of `data` whose JSON is not what model `cls` holds."""
    for name, tp in _hints(cls).items():
        key = at + name
        if name not in data:
            if key in _REQUIRED:
                return f"no {key!r}"
            continue
        value, kinds = data[name], _kinds(tp)
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            words = " or ".join(dict.fromkeys(_WORDS[k] for k in kinds))
            return f"{key!r} is {json.dumps(value)[:40]}, not {words}"
        problem = _inner_problem(tp, value, key)
        if problem:
            return problem
    return None


def _inner_problem(tp, value, key: str) -> str | None:
    """What is wrong inside an object or a list field."""
    for option in _options(tp):
        if _model(option) and isinstance(value, dict):
            return _problem(option, value, key + ".")
        if typing.get_origin(option) is list and isinstance(value, list):
            item = typing.get_args(option)[0]
            if _model(item):
                for i, v in enumerate(value):
                    if not isinstance(v, dict):
                        return f"{key!r} holds something other than objects"
                    if problem := _problem(item, v, f"{key}[{i}]."):
                        return problem
            elif not all(isinstance(v, _JSON[item]) for v in value):
                return f"{key!r} holds something other than {_WORDS[item].split()[-1]}s"
    return None


def shape_problem(data) -> str | None:
    """What makes `data` no record snapcore can read, in words; None if it is one."""
    if not isinstance(data, dict):
        return f"a JSON {type(data).__name__}, not an object"
    problem = _problem(RecordData, data, "")
    if problem:
        return problem
    name = data["core"]["file"]
    if Path(name).name != name or not name.endswith(CORE_SUFFIXES):
        return f"'core.file' is {json.dumps(name)[:40]}, not a core's name beside it"
    try:
        _ = RecordData(taken_at=data["taken_at"]).taken_at_seconds  # parsed, or ValueError
    except ValueError:
        return f"'taken_at' is {json.dumps(data['taken_at'])[:40]}, not a time"
    if data.get("version", VERSION) > VERSION:
        # A newer snapcore changed what a field means: better unread than misread.
        return (f"record version {data['version']}, of a newer snapcore (this one reads "
                f"version {VERSION})")
    return None


def looks_like_ours(sidecar: Path) -> bool:
    stem = sidecar.name[:-len(".json")]
    return bool(_RECORD_NAME.fullmatch(sidecar.name)) or any(
        (sidecar.parent / (stem + suffix)).exists() for suffix in CORE_SUFFIXES)
