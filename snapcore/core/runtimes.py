"""Which runtime a process runs, from what it maps and what it executes.

Read from the core's own list of mapped files (NT_FILE, written by either
writer: the same note the kernel writes) and its executable, so that a
snapshot and a core read later are recognised alike:
  python  libpython3.X.so mapped, or the executable is python3.X (Debian's
          /usr/bin/python3.11 links the interpreter in statically)
  java    libjvm.so mapped: the JDK is the one around it (lib/server/libjvm.so),
          whose jhsdb matches the VM (the Serviceability Agent reads the VM's
          own structures and refuses another build)
  go      the executable has Go's build information (the .go.buildinfo
          section, "\\xff Go buildinf:"), whatever its name
  node    libnode.so mapped or the executable is node: recognised, no reader
  native  anything else
"""

from __future__ import annotations

import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path

LANGS = ("auto", "native", "python", "java", "go")
GO_MAGIC = b"\xff Go buildinf:"


@dataclass(frozen=True)
class Runtime:
    lang: str  # native, python, java, go, node
    version: str = ""  # the runtime's, as far as its files say
    home: str = ""  # java: the JDK's home; python: the libpython or interpreter file


def recognise(files: list[str], exe_name: str | None, exe: str | int | None) -> Runtime:
    """The runtime of a process that mapped FILES and runs EXE_NAME, opened
    as EXE (a path, or a descriptor on the very file)."""
    for name in files:
        base = os.path.basename(name)
        if base == "libjvm.so":
            home = java_home(name)
            return Runtime("java", java_version(home) if home else "", home or "")
    for name in files:
        m = re.match(r"libpython(\d+\.\d+)", os.path.basename(name))
        if m:
            return Runtime("python", m.group(1), name)
    exe_name = exe_name or (files[0] if files else "")
    m = re.fullmatch(r"python(\d+\.\d+)", os.path.basename(exe_name))
    if m:
        return Runtime("python", m.group(1), exe_name)
    version = go_version(exe) if exe is not None else None
    if version is not None:
        return Runtime("go", version)
    if any(os.path.basename(n).startswith("libnode.so") for n in files) \
            or os.path.basename(exe_name) == "node":
        return Runtime("node")
    return Runtime("native")


def java_home(libjvm: str) -> str | None:
    """The JDK around libjvm.so: the first directory above it with bin/java
    (JDK 9+: HOME/lib/server/libjvm.so; 8: HOME/jre/lib/amd64/server/)."""
    for parent in Path(libjvm).parents:
        if (parent / "bin" / "java").exists():
            return str(parent)
    return None


def java_version(home: str) -> str:
    try:
        text = (Path(home) / "release").read_text(errors="replace")
    except OSError:
        return ""
    m = re.search(r'^JAVA_VERSION="([^"]*)"', text, re.M)
    return m.group(1) if m else ""


def go_version(exe: str | int) -> str | None:
    """The Go version a binary was built with (go1.19.8), from its build
    information; None when it is not a Go binary.  Go 1.18+ writes the
    version inline after the 32-byte header (flag bit 2); older ones point
    at runtime.buildVersion, whose string is in the data: "go" and digits."""
    path = f"/proc/self/fd/{exe}" if isinstance(exe, int) else exe
    try:
        with open(path, "rb") as f:
            data = _section(f, b".go.buildinfo")
    except OSError:
        return None
    if data is None or not data.startswith(GO_MAGIC):
        return None
    if data[15] & 2:
        size, at = _uvarint(data, 32)
        return data[at:at + size].decode(errors="replace")
    return "go (before 1.18)"


def _section(f, wanted: bytes) -> bytes | None:
    """The contents of section WANTED of a 64-bit ELF file, or None."""
    head = f.read(64)
    if len(head) < 64 or head[:4] != b"\x7fELF" or head[4] != 2:
        return None
    shoff, = struct.unpack_from("<Q", head, 40)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", head, 58)
    if not shoff or shnum == 0 or shnum > 4096:
        return None
    f.seek(shoff)
    table = f.read(shentsize * shnum)
    sections = [struct.unpack_from("<IIQQQQ", table, i * shentsize) for i in range(shnum)]
    _n, _t, _fl, _a, str_off, str_size = sections[shstrndx]
    f.seek(str_off)
    names = f.read(str_size)
    for name_at, _type, _flags, _addr, offset, size in sections:
        if names[name_at:names.find(b"\0", name_at)] == wanted:
            f.seek(offset)
            return f.read(min(size, 1 << 16))
    return None


def _uvarint(data: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    while at < len(data):
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            break
        shift += 7
    return value, at
