"""Numbers for the preflight: how much memory the copy-on-write child may
cost, and how much room the filesystem has.  How big the core will be is
core/dumprules.core_size: the rule the writers follow.  What the machine
has (meminfo, overcommit): the preflight's facts (linux/facts.py)."""

from __future__ import annotations

import os

from snapcore.linux.maps import Vma


def cow_worst_case(maps: list[Vma]) -> int:
    """What the child may cost if the target rewrites every private page it holds."""
    return sum(m.rss for m in maps if m.perms[1] == "w" and m.perms[3] == "p"
               and "dd" not in m.flags)


def private_writable_size(maps: list[Vma]) -> int:
    """What fork() charges against the commit limit (vm.overcommit_memory=2)."""
    return sum(m.size for m in maps if m.perms[1] == "w" and m.perms[3] == "p")


def free_space(path: str) -> tuple[int, int]:
    """Bytes available to an unprivileged writer, and the filesystem's size."""
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize
