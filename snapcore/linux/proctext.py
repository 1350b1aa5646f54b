"""/proc as text, whatever bytes a process put there.

A process names itself (prctl PR_SET_NAME, its comm) and writes its own
argv: neither need be UTF-8, and a path in maps or cgroup need not be
either.  Every /proc text file is read here with the bytes that are not
UTF-8 kept as surrogate escapes, as os.readlink and os.listdir give them
(a path still opens as the same bytes); `readable` makes a name fit to show.
"""

from __future__ import annotations

COMM_BYTES = 15  # TASK_COMM_LEN - 1: what the kernel keeps of a name


def proc_open(path: str):
    """A /proc file open for reading text, a line at a time."""
    return open(path, encoding="utf-8", errors="surrogateescape")


def proc_text(path: str) -> str:
    with proc_open(path) as f:
        return f.read()


def readable(text: str, limit: int | None = None) -> str:
    """A name for people, logs and JSON: each byte that is not UTF-8 shown as
    U+FFFD (as ps shows a `?`).  With `limit`, no more than that many bytes
    in UTF-8, whole characters: a comm so shown still fits in a comm (the
    child is named after it, and core_pattern's %e is the child's comm)."""
    shown = text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    while limit is not None and len(shown.encode()) > limit:
        shown = shown[:-1]
    return shown
