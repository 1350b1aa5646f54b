"""A snapshot's stacks, kept beside it once read (NAME.stacks.json, the
core/stackmodel.Stacks document `stacks --json` prints), so that `info`
shows them without running the reader again: a JVM's take ten seconds of
jhsdb, and the reader may be gone by the time someone asks."""

from __future__ import annotations

import json
import os
from pathlib import Path

from snapcore.core import records, safefs
from snapcore.core.stackmodel import Stacks
from snapcore.errors import SnapcoreError


def keep(core: Path, stacks: Stacks) -> str | None:
    """Keep STACKS beside CORE's snapshot; why they could not be (a full
    disk: the stacks were read all the same, a warning), else None."""
    try:
        records.write_json(records.stacks_path(records.sidecar_path(core)), stacks.to_dict(),
                           "the stacks")
    except (OSError, SnapcoreError) as exc:
        return (f"the stacks are not kept beside {core.name}: "
                f"{getattr(exc, 'strerror', None) or exc}")
    return None


def kept(record: records.Record) -> Stacks | None:
    """The stacks kept with RECORD's snapshot, or None: none kept, or a file
    at their name that is not snapcore's (another user's, a link, a FIFO: the
    same rule as for records) or not a stacks document."""
    path = records.stacks_path(record.sidecar)
    try:
        trusted = {os.geteuid(), os.stat(path.parent).st_uid}
    except OSError:
        return None
    data = safefs.read_own(path, trusted)
    if data is None:
        return None
    try:
        return Stacks.from_dict(json.loads(data))
    except (ValueError, TypeError, KeyError):
        return None
