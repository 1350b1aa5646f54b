"""userfaultfd as /proc shows it: which memory is registered with one, and
what each descriptor asked for (include/uapi/linux/userfaultfd.h)."""

from __future__ import annotations

import os

EVENT_FORK = 0x2  # UFFD_FEATURE_EVENT_FORK: a fork waits until the monitor reads it
REGISTERED = ("um", "uw", "ui")  # VmFlags: missing, write-protect, minor faults


def features(pid: int) -> list[int]:
    """The features of each userfaultfd the process holds a descriptor of
    (fdinfo "API:\tAPI:FEATURES:IOCTLS", fs/userfaultfd.c: userfaultfd_show_fdinfo)."""
    found: list[int] = []
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return found
    for fd in fds:
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") != "anon_inode:[userfaultfd]":
                continue
            with open(f"/proc/{pid}/fdinfo/{fd}") as f:
                for line in f:
                    if line.startswith("API:"):
                        found.append(int(line.split()[1].split(":")[1], 16))
        except (OSError, ValueError, IndexError):
            continue
    return found
