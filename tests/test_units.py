"""The fast layer: no root, no ptrace, no compiled target (`pytest -m unit`).

core_pattern expansion, core size estimates, prune planning, sizes and
durations, the notes rewrite on a core built here, the rate limiter's state,
and the shape of the package itself: the engine never imports click or rich,
no import cycle, no module over 300 lines, no engine/linux function over 60, no
command-line flag named below the command line.
"""

from __future__ import annotations

import ast
import json
import os
import re
import struct
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile

from snapcore import units
from snapcore.core import dumprules, notes, records, store
from snapcore.core.core_pattern import CorePattern, expand
from snapcore.core.recordshape import CoreFile, RecordData
from snapcore.engine import estimate
from snapcore.engine.ratelimit import RateLimiter
from snapcore.linux import arch
from snapcore.linux.maps import Vma

pytestmark = pytest.mark.unit
PACKAGE = Path(__file__).parent.parent / "snapcore"


# core_pattern

@pytest.mark.parametrize("pattern, uses_pid, want", [
    ("core", False, "core"),
    ("core", True, "core.77"),  # core_uses_pid appends the namespace pid
    ("core.%p", True, "core.77"),  # ... unless the pattern has %p
    ("/var/crash/%e.%P.%s.%u", False, "/var/crash/my[[]app].1234.6.1000"),  # a glob
    ("/c/%t-%d-%q", False, "/c/*-*-*"),  # known only to the kernel: a glob
    ("/c/%E", False, "/c/!usr!bin!app"),
    ("/c/100%%", False, "/c/100%"),
])
def test_core_pattern_expansion(pattern, uses_pid, want):
    got = expand(CorePattern(pattern, uses_pid), pid=1234, uid=1000, gid=1000,
                 comm="my[app]", exe="/usr/bin/app", soft_limit=(1 << 64) - 1, ns_pid=77)
    assert got == want


def test_core_pattern_kinds():
    assert CorePattern("|/usr/lib/systemd/systemd-coredump %P", False).kind == "pipe"
    assert CorePattern("|/usr/share/apport/apport -p%p", False).handler == \
        "/usr/share/apport/apport"
    assert CorePattern("/var/crash/core", False).kind == "absolute"
    assert CorePattern("core.%p", False).kind == "relative"


# core size (fs/coredump.c: vma_dump_size)

_NEXT_AT = [1 << 40]  # where the next made-up mapping starts


def _mapping(perms, rss, *, inode=0, path="", offset=0, flags=(), anonymous=None, size=None,
             swap=0):
    size = rss if size is None else size
    if anonymous is None:  # what smaps shows: anonymous memory's resident pages are
        anonymous = 0 if inode else rss  # Anonymous (shmem's are not, but count alike)
    _NEXT_AT[0] += size + (1 << 20)  # apart, and nowhere in this process: nothing to read there
    start = _NEXT_AT[0]
    return Vma(start, start + size, perms, offset, inode, path, rss=rss, swap=swap,
               anonymous=anonymous, flags={"rd", *flags, *(("sh",) if perms[3] == "s" else ())})


def test_core_size_follows_the_kernel_rules():
    """The rule on mappings that do not exist (this process's pid, nothing
    mapped there: no file facts, no data runs, ELF magic unread, so a clean
    file mapping's first page counts).  tests/test_shapes.py holds the same
    rule to real cores."""
    page = arch.PAGE_SIZE
    maps = [
        _mapping("rw-p", 100 * page),  # anonymous private: dumped (bit 0)
        _mapping("rw-p", 50 * page, flags=("dd",)),  # MADV_DONTDUMP: never
        _mapping("rw-s", 10 * page),  # anonymous shared: bit 1
        _mapping("r--p", 30 * page, inode=5, path="/lib/x.so"),  # file private, clean:
        # only its first page, as an ELF header (bit 4)
        _mapping("rw-p", 3 * page, inode=5, path="/lib/x.so", offset=page, size=8 * page,
                 anonymous=2 * page),  # written private file pages: dumped whole with
        # bit 0, the pages never read in included (read from the file)
        _mapping("rw-p", 5 * page, size=1000 * page, swap=3 * page),  # a reserve: holes
        # but for the pages touched, resident or swapped
    ]
    headers = page * 2  # 6 mappings, one thread, two files: 5.1 KiB, on a page
    assert dumprules.core_size(os.getpid(), maps, 1, 0x33) == (
        (100 + 10 + 1 + 8 + 1000) * page + headers,  # apparent
        (100 + 10 + 1 + 8 + 8) * page + headers, 0)  # allocated
    assert dumprules.core_size(os.getpid(), maps, 1, 0x00) == (headers, headers, 0)
    assert estimate.cow_worst_case(maps) == 108 * page


# prune planning

def _record(tmp_path, name, exe, age, size, now):
    sidecar = tmp_path / f"{name}.json"
    sidecar.write_bytes(b"x" * 10)
    core = tmp_path / f"{name}.core"
    core.write_bytes(b"x" * size)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now - age)) + "Z"
    data = RecordData.from_json({"taken_at": stamp, "target": {"exe": exe}})
    return records.Record(sidecar, core, data)


def test_prune_plan_keep_age_and_total(tmp_path):
    now = time.time()
    found = [_record(tmp_path, f"a{i}", "/bin/a", i * 3600, 100, now) for i in range(4)] + \
            [_record(tmp_path, "b0", "/bin/b", 10, 100, now)]
    found.sort(key=lambda r: r.taken_at, reverse=True)
    names = lambda rs: sorted(r.core.stem for r in rs)  # noqa: E731
    assert names(records.plan_prune(found, keep=2, now=now)) == ["a2", "a3"]
    assert names(records.plan_prune(found, older_than=2.5 * 3600, now=now)) == ["a3"]
    # each snapshot weighs 110 bytes: the oldest go until the rest fit
    assert names(records.plan_prune(found, max_total=330, now=now)) == ["a2", "a3"]
    assert names(records.plan_prune(found, max_total=329, now=now)) == ["a1", "a2", "a3"]


# the record

# A record as snapcore wrote it before records had a version: its own
# write_sidecar, a real snapshot (snapcore's writer, --compress, --reason).
BEFORE_VERSION = Path(__file__).parent / "records" / "written-before-version.json"


def test_a_record_written_before_the_version_reads_back_whole(tmp_path):
    written = json.loads(BEFORE_VERSION.read_text())
    assert "version" not in written
    (tmp_path / BEFORE_VERSION.name).write_text(BEFORE_VERSION.read_text())
    (tmp_path / written["core"]["file"]).write_bytes(b"x" * written["core"]["size"])
    skipped: list[str] = []
    found = records.records(tmp_path, skipped)
    assert skipped == [] and len(found) == 1
    record = found[0]
    assert record.core == tmp_path / written["core"]["file"]
    assert records.core_problem(record) is None
    data = record.data
    assert data.version == 1 and data.reason == "INC-4711 slow" and data.trigger == ""
    assert (data.target.pid, data.target.name, data.target.cmdline) == \
        (22228, "sleep", ["sleep", "600"])
    assert [(t.tid, t.name) for t in data.threads] == [(22228, "sleep")]
    assert data.core.compressed is True and data.writer.name == "snapcore"
    assert record.target_key == "sleep 600 (/usr/bin/sleep)"
    assert record.taken_at == datetime.fromisoformat("2026-12-05T20:39:30.551956+00:00")\
        .timestamp()
    # Written again, it is the same document, keys in the same order, and its version.
    again = data.to_json()
    assert list(again) == ["version", *written] and again.pop("version") == 1
    assert json.dumps(again) == json.dumps(written)


def test_a_record_missing_fields_reads_with_the_defaults():
    data = RecordData.from_json({"taken_at": "2026-01-01T00:00:00Z",
                                 "core": {"file": "a.core"}})
    assert (data.version, data.reason, data.trigger, data.threads, data.notes) == \
        (1, "", "", [], [])
    assert (data.target.pid, data.target.exe, data.core.size, data.writer.name) == \
        (None, None, None, None)
    assert data == RecordData(taken_at="2026-01-01T00:00:00Z",
                              core=CoreFile(file="a.core"))


def test_a_record_keeps_the_fields_it_does_not_know():
    written = json.loads(BEFORE_VERSION.read_text())
    written["from_a_newer_snapcore"] = {"x": [1]}
    written["target"]["cgroup"] = "/system.slice/x.service"
    written["threads"][0]["cpu"] = 3
    assert records.shape_problem(written) is None
    again = RecordData.from_json(written).to_json()
    assert again["from_a_newer_snapcore"] == {"x": [1]}
    assert again["target"]["cgroup"] == "/system.slice/x.service"
    assert again["threads"][0]["cpu"] == 3


def test_a_record_of_a_newer_version_or_the_wrong_types_is_not_read():
    written = json.loads(BEFORE_VERSION.read_text())
    assert records.shape_problem(dict(written, version=1)) is None
    assert "newer snapcore" in records.shape_problem(dict(written, version=2))
    assert records.shape_problem(dict(written, version="1")) == \
        "'version' is \"1\", not a number"
    assert records.shape_problem(dict(written, writer="kernel")) == \
        "'writer' is \"kernel\", not an object"
    threads = [dict(written["threads"][0], tid="x")]
    assert records.shape_problem(dict(written, threads=threads)) == \
        "'threads[0].tid' is \"x\", not a number or null"
    core = dict(written["core"], compressed=1)
    assert records.shape_problem(dict(written, core=core)) == \
        "'core.compressed' is 1, not true or false or null"


# sizes and durations

def test_units_round_trip():
    assert units.parse_size("512M") == 512 << 20
    assert units.parse_size("2G") == 2 << 30
    assert units.parse_size("1.5KiB") == 1536
    assert units.parse_duration("7d") == 7 * 86400
    assert units.parse_duration("90") == 90
    assert units.human(3 << 30) == "3.0 GiB"
    for bad in ("", "lots", "-1G"):
        with pytest.raises(ValueError):
            units.parse_size(bad)
    with pytest.raises(ValueError):
        units.parse_duration("7 days")


# the notes rewrite, on a core built here

def _note(n_type: int, desc: bytes) -> bytes:
    name = b"CORE\0"
    pad = lambda b: b + b"\0" * (-len(b) % 4)  # noqa: E731
    return struct.pack("<III", len(name), len(desc), n_type) + pad(name) + pad(desc)


def _core(path: Path, tids: list[int], pid: int) -> None:
    """A minimal x86_64 ELF core: one PT_NOTE (an NT_PRSTATUS per thread, an
    NT_PRPSINFO) and one PT_LOAD of a page."""
    prstatus = [bytearray(336) for _ in tids]
    for desc, tid in zip(prstatus, tids):
        struct.pack_into("<i", desc, arch.PRSTATUS_PID_OFFSET, tid)
    prpsinfo = bytearray(136)
    struct.pack_into("<i", prpsinfo, arch.PRPSINFO_PID_OFFSET, pid)
    note = b"".join(_note(arch.NT_PRSTATUS, bytes(d)) for d in prstatus) + \
        _note(arch.NT_PRPSINFO, bytes(prpsinfo))
    phoff, phnum = 64, 2
    note_at = phoff + 56 * phnum
    load_at = (note_at + len(note) + 4095) & ~4095
    head = b"\x7fELF\x02\x01\x01" + b"\0" * 9 + struct.pack(
        "<HHIQQQIHHHHHH", 4, arch.ELF_MACHINE, 1, 0, phoff, 0, 0, 64, 56, phnum, 0, 0, 0)
    phdrs = struct.pack("<IIQQQQQQ", 4, 0, note_at, 0, 0, len(note), 0, 4) + \
        struct.pack("<IIQQQQQQ", 1, 6, load_at, 0x400000, 0, 4096, 4096, 4096)
    data = head + phdrs + note
    path.write_bytes(data + b"\0" * (load_at - len(data)) + b"\xaa" * 4096)


def test_notes_rewrite_names_the_targets_threads(tmp_path):
    _core(tmp_path / "core", [501, 502, 503], 501)
    core = store.open_core("core", tmp_path, 0, {os.getuid()})
    assert core is not None
    try:
        layout = notes.check_core(core, 501)
        assert layout.prstatus_pids == [501, 502, 503] and layout.prpsinfo_pid == 501
        notes.rename_threads(core, layout, {501: 1, 502: 7, 503: 9}, 1)
    finally:
        core.close()
    with open(tmp_path / "core", "rb") as f:
        seen = [int.from_bytes(n["n_desc"][32:36], "little")
                for s in ELFFile(f).iter_segments() if s["p_type"] == "PT_NOTE"
                for n in s.iter_notes() if n["n_type"] == "NT_PRSTATUS"]
    assert seen == [1, 7, 9]


def test_a_truncated_or_foreign_core_is_refused(tmp_path):
    _core(tmp_path / "core", [501], 501)
    with open(tmp_path / "core", "r+b") as f:
        f.truncate(1000)  # the PT_LOAD's data is gone
    core = store.open_core("core", tmp_path, 0, {os.getuid()})
    try:
        with pytest.raises(Exception, match="truncated"):
            notes.check_core(core, 501)
        with pytest.raises(Exception, match="does not describe the snapshot"):
            notes.check_core(core, 999)
    finally:
        core.close()


def test_a_symlink_or_a_hard_link_is_never_taken_for_the_core(tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("x")
    (tmp_path / "core").symlink_to(secret)
    rejected: list[str] = []
    assert store.open_core("core", tmp_path, 0, {os.getuid()}, rejected) is None
    assert rejected == ["core is a symlink"]
    (tmp_path / "core").unlink()
    os.link(secret, tmp_path / "core")
    rejected.clear()
    assert store.open_core("core", tmp_path, 0, {os.getuid()}, rejected) is None
    assert rejected == ["core: it has 2 links"]


# the rate limiter's state

def test_rate_limit_with_a_fake_clock(tmp_path):
    now = [1_000_000.0]
    limiter = RateLimiter(tmp_path, max_per_hour=4, clock=lambda: now[0])
    for _ in range(4):
        assert limiter.next_allowed("/usr/sbin/x") is None
        limiter.record("/usr/sbin/x")
        now[0] += 60
    assert limiter.next_allowed("/usr/sbin/x") == 1_000_000.0 + 3600
    assert limiter.next_allowed("/usr/sbin/other") is None
    now[0] = 1_000_000.0 + 3600.5
    assert limiter.next_allowed("/usr/sbin/x") is None
    assert RateLimiter(tmp_path, 0, clock=lambda: now[0]).next_allowed("/usr/sbin/x") is None


def test_a_corrupt_rate_limit_state_is_never_a_fresh_start(tmp_path):
    limiter = RateLimiter(tmp_path, max_per_hour=4)
    limiter.record("/usr/sbin/x")
    (tmp_path / ".snapcore" / "state.json").write_text("{not json")
    with pytest.raises(ValueError, match="corrupt"):
        limiter.next_allowed("/usr/sbin/x")


# the shape of the package

def _modules(root: Path = PACKAGE) -> dict[str, Path]:
    """Every module by its dotted name; a package by its own name (its __init__)."""
    return {".".join(p.relative_to(root.parent).with_suffix("").parts)
            .removesuffix(".__init__"): p for p in root.rglob("*.py")}


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Every module `name` imports, wherever the statement stands: at the top,
    behind `if TYPE_CHECKING:`, inside a function body (a deferred import is
    still an arrow between modules).  Relative imports are resolved against
    the module's package; `from P import X` names P.X when X is a module."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            for alias in node.names:
                full = f"{module}.{alias.name}"
                found.add(full if full in modules else module)
    return found


def _graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    """Module -> the package's modules it imports."""
    modules = _modules(root)
    return {name: {d for d in _imports(name, path, modules) if d in modules and d != name}
            for name, path in modules.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle in the graph, as a path back to its start, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node, path):
        state[node] = 1
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                return path[path.index(dep):] + [dep]
            if dep not in state:
                found = visit(dep, path + [dep])
                if found:
                    return found
        state[node] = 2
        return None

    for name in sorted(graph):
        if name not in state:
            found = visit(name, [name])
            if found:
                return found
    return None


LAYERS = {"snapcore.cli": 3, "snapcore.engine": 2, "snapcore.core": 1, "snapcore.linux": 0}


def _layer(module: str) -> int | None:
    """A module's layer (its folder), None for the package's own modules."""
    return LAYERS.get(".".join(module.split(".")[:2]))


def _upward(graph: dict[str, set[str]]) -> list[str]:
    """Every arrow that points up a layer, or from the package's own modules
    (errors, units, bounds: beneath every layer) into one.  __main__ starts
    the command layer: above them all."""
    upward = []
    for name, deps in sorted(graph.items()):
        mine = _layer(name)
        for dep in sorted(deps):
            theirs = _layer(dep)
            if name != "snapcore.__main__" and theirs is not None and \
                    (mine is None or theirs > mine):
                upward.append(f"{name} -> {dep}")
    return upward


def test_the_import_walk_sees_every_kind_of_import(tmp_path):
    """The walk itself, on a package made here: column-0 imports alone are not
    the graph (the store <-> notes cycle hid behind TYPE_CHECKING once, and an
    import in a function body is an arrow all the same)."""
    pkg = tmp_path / "snapcore"
    for folder in ("core", "linux", "engine"):
        (pkg / folder).mkdir(parents=True)
    files = {
        "__init__": "", "errors": "", "core/__init__": "", "linux/__init__": "",
        "engine/__init__": "", "engine/e": "", "core/c": "", "core/d": "",
        "core/a": "from typing import TYPE_CHECKING\n"
                  "if TYPE_CHECKING:\n    from snapcore.core.b import B\n"
                  "def f():\n    from . import c\n    import snapcore.core.d\n",
        "core/b": "from snapcore.core import a\n",
        "linux/l": "def f():\n    from ..engine import e\n",
    }
    for module, text in files.items():
        (pkg / f"{module}.py").write_text(text)
    graph = _graph(pkg)
    assert graph["snapcore.core.a"] == {"snapcore.core.b", "snapcore.core.c",
                                        "snapcore.core.d"}
    assert _cycle(graph) == ["snapcore.core.a", "snapcore.core.b", "snapcore.core.a"]
    assert _upward(graph) == ["snapcore.linux.l -> snapcore.engine.e"]


def test_the_engine_imports_neither_click_nor_rich():
    code = ("import sys, snapcore.engine.snapshot, snapcore.engine.preflight; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('click', 'rich')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=PACKAGE.parent)
    assert out.stdout.strip() == "[]"
    # Nor does any module below cli/, in a function body or behind TYPE_CHECKING:
    # only cli/ (and __main__, which starts it) may.
    modules = _modules()
    naming = [f"{name} imports {dep}" for name, path in modules.items()
              if not name.startswith(("snapcore.cli", "snapcore.__main__"))
              for dep in _imports(name, path, modules) if dep.split(".")[0] in ("click", "rich")]
    assert naming == []


def _said(path: Path):
    """(line, text) of each string a module says, less its docstrings."""
    tree = ast.parse(path.read_text())
    docs = {id(node.body[0].value) for node in ast.walk(tree)
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef,
                                 ast.AsyncFunctionDef))
            and node.body and isinstance(node.body[0], ast.Expr)}
    # An element of a list or tuple is an argument of another program's
    # command line (jhsdb's --core), not something snapcore says.
    argv = {id(element) for node in ast.walk(tree) if isinstance(node, (ast.List, ast.Tuple))
            for element in node.elts}
    return [(node.lineno, node.value) for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str)
            and id(node) not in docs and id(node) not in argv]


def test_below_the_command_line_settings_are_named_never_flags():
    """engine/, core/ and linux/ name the setting a hint is about (setting=,
    errors.SETTING); cli/render.FLAGS says which flag sets it."""
    import click

    import snapcore.cli  # noqa: F401  (registers every command)
    from snapcore.cli.app import cli
    from snapcore.cli.render import FLAGS
    flags = {opt for command in cli.commands.values() for p in command.params
             if isinstance(p, click.Option) for opt in p.opts + p.secondary_opts
             if opt.startswith("--")}
    named, settings = [], []
    for name, path in _modules().items():
        if not name.startswith(("snapcore.engine", "snapcore.core", "snapcore.linux")):
            continue
        for line, text in _said(path):
            named += [f"{name}:{line}: {flag}" for flag in flags
                      if re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", text)]
        settings += [(f"{name}:{node.lineno}", kw.value.value)
                     for node in ast.walk(ast.parse(path.read_text()))
                     if isinstance(node, ast.Call) for kw in node.keywords
                     if kw.arg == "setting" and isinstance(kw.value, ast.Constant)]
    assert named == []
    assert settings and [(where, s) for where, s in settings if s not in FLAGS] == []


def test_an_error_line_names_the_flag_where_its_hint_names_the_setting():
    from snapcore.cli.render import error_dict, error_line
    from snapcore.errors import SETTING, NotDumpable, OutputError
    missing = OutputError("no zstandard", f"snapshot without {SETTING}", setting="compress")
    assert error_line(missing) == "no zstandard: snapshot without --compress"
    assert error_dict(missing)["hint"] == "snapshot without --compress"
    assert missing.one_line() == "no zstandard: snapshot without compress"  # no command line
    full = OutputError("full", "free space", setting="min_free")
    assert error_line(full) == "full: free space (--min-free)"
    assert full.one_line() == "full: free space"
    assert error_line(NotDumpable("not dumpable")) == \
        "not dumpable: override: --force dumpable"


def test_no_import_cycle():
    # A package's __init__ importing its own modules is how it registers them:
    # none of them imports the package back.
    assert _cycle(_graph()) is None


def test_the_layers_point_down():
    """cli -> engine -> core -> linux, no arrow back up (docs/architecture.md)."""
    assert _upward(_graph()) == []


def test_modules_and_functions_stay_small():
    too_long = [f"{name}: {len(p.read_text().splitlines())} lines"
                for name, p in _modules().items() if len(p.read_text().splitlines()) > 300]
    assert too_long == []
    long_functions = []
    for name, path in _modules().items():
        if not name.startswith(("snapcore.engine", "snapcore.linux")):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > 60:
                    long_functions.append(f"{name}.{node.name}: {length} lines")
    assert long_functions == []


def test_every_planned_syscall_has_a_number():
    from snapcore.engine.checks_seccomp import planned_syscalls
    calls = planned_syscalls(threads=3)
    assert {name for _where, name, _args in calls} <= set(arch.NR)
    assert ("target", "clone") in {(where, name) for where, name, _ in calls}


def test_the_record_keeps_no_trailing_empty_arguments():
    assert records.command_line(["redis-server *:6379", "", "", ""]) == ["redis-server *:6379"]
    assert records.command_line(["prog", "", "x"]) == ["prog", "", "x"]  # a real empty arg
    assert records.command_line([]) == []


@pytest.mark.unit
@pytest.mark.parametrize("policy, nice, names", [
    ("normal", 0, ["idle", "nice 19", "nice 10", "nice 0"]),
    ("normal", 5, ["idle", "nice 19", "nice 10", "nice 5"]),
    ("batch", 19, ["idle", "nice 19"]),
    ("normal", -5, ["idle", "nice 19", "nice 10", "nice 0", "nice -5"]),
    ("idle", 0, ["idle"]),  # a target at SCHED_IDLE: its dump is never above it
])
def test_dump_priority_never_goes_above_the_target(policy, nice, names):
    from snapcore.engine.controller import ladder
    levels = ladder(policy, nice)
    assert [level.name for level in levels] == names
    # The kernel's default best-effort I/O level for each nice.
    assert all(level.io_level == (level.nice + 20) // 5 for level in levels[1:])


@pytest.mark.skipif(arch.NAME != "x86_64",
                    reason="x86_64's: arm64's glibc has no exit site (tests/test_arch_aarch64.py)")
def test_a_pending_restart_syscall_is_given_back_as_its_call():
    """A thread caught after the kernel rewound an interrupted call (rip at
    its `syscall`, rax restart_syscall's number) is given back by a landing
    as that call run again: rt_sigreturn ends the pending restart, which
    would return EINTR.  A call that returned that number (rip after its
    `syscall`), or one whose number is unknown, gets no landing."""
    from types import SimpleNamespace

    from snapcore.linux import landing, procstat, ptrace
    sites = landing.find(os.getpid(), procstat.read_status(os.getpid()))
    at = sites.restorer + arch.RESTORER_SYSCALL  # a `syscall` after a `mov`
    assert sites.restorer and sites.syscall_ret and sites.exit_at

    def thread(ip: int, nr: int, orig: int):
        regs = ptrace.Regs()
        setattr(regs, arch.REG_IP, ip)
        setattr(regs, arch.REG_NR, nr)
        setattr(regs, arch.REG_ORIG_NR, orig & ((1 << 64) - 1))
        return SimpleNamespace(regs=regs)

    restart = arch.NR["restart_syscall"]
    again = landing._own_registers(os.getpid(), thread(at, restart, 35))
    assert getattr(again, arch.REG_NR) == 35 and getattr(again, arch.REG_IP) == at
    assert landing._own_registers(os.getpid(), thread(at + 2, restart, 0)) is None
    assert landing._own_registers(os.getpid(), thread(at, restart, -1)) is None
    plain = thread(at + 2, 0, 0)
    assert landing._own_registers(os.getpid(), plain) is plain.regs


@pytest.mark.skipif(arch.NAME != "x86_64",
                    reason="x86_64's frame; arm64's: tests/test_arch_aarch64.py")
def test_a_signal_frame_runs_an_interrupted_call_again():
    from snapcore.linux import ptrace
    regs = ptrace.Regs()
    regs.rip, regs.rax, regs.orig_rax, regs.cs, regs.ss = 0x1002, (-516) & ((1 << 64) - 1), 35, \
        arch.USER_CS, 0x2B
    xstate = bytes(576)
    frame = arch.signal_frame(regs, 0x4000, xstate, 0x10000, 0x2000)
    assert int.from_bytes(frame[:8], "little") == 0x2000  # the restorer
    sigcontext = frame[8 + 40:8 + 40 + 256]
    rip, = struct.unpack_from("<Q", sigcontext, 16 * 8)
    rax, = struct.unpack_from("<Q", sigcontext, 13 * 8)
    assert (rip, rax) == (0x1000, 35)
    fpstate, = struct.unpack_from("<Q", sigcontext, 184)
    assert fpstate == 0x10000 + 448 and fpstate % 64 == 0
    mask, = struct.unpack_from("<Q", frame, 8 + 296)
    assert mask == 0x4000
    assert frame[448 + 464:448 + 468] == struct.pack("<I", 0x46505853)  # FP_XSTATE_MAGIC1
    assert frame[-4:] == struct.pack("<I", 0x46505845)  # FP_XSTATE_MAGIC2


@pytest.mark.unit
@pytest.mark.parametrize("how", ["remove_tree", "remove_tree_walking"])
def test_a_tree_is_removed_by_descriptor_never_following_a_link(tmp_path, how):
    """Python 3.10 has no shutil.rmtree(dir_fd=): the walk by descriptor that
    stands in for it removes the same, and leaves what a link points at."""
    from snapcore.core import safefs
    outside = tmp_path / "outside"
    (outside / "kept").mkdir(parents=True)
    (outside / "kept" / "file").write_text("x")
    tree = tmp_path / "base" / "tree"
    (tree / "a" / "b").mkdir(parents=True)
    (tree / "a" / "b" / "file").write_text("x")
    (tree / "file").write_text("x")
    (tree / "a" / "to-dir").symlink_to(outside / "kept")
    (tree / "to-file").symlink_to(outside / "kept" / "file")
    dir_fd = os.open(tmp_path / "base", os.O_RDONLY | os.O_DIRECTORY)
    try:
        getattr(safefs, how)("tree", dir_fd)
    finally:
        os.close(dir_fd)
    assert list((tmp_path / "base").iterdir()) == []
    assert (outside / "kept" / "file").read_text() == "x"
