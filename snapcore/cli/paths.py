"""The output directory's option type, one for every command that takes -o:
a name no Linux filesystem can hold (a part over NAME_MAX, the whole over
PATH_MAX) is a bad command line, said in one line, before anything looks
at it (it would surface as ENAMETOOLONG wherever it was first used)."""

from __future__ import annotations

import os
from pathlib import Path

import click

NAME_MAX = 255  # bytes in one name (limits.h), every Linux filesystem
PATH_MAX = 4096  # bytes in a path, its NUL included


class OutputDir(click.Path):
    def __init__(self) -> None:
        super().__init__(file_okay=False, path_type=Path)

    def convert(self, value, param, ctx):
        path = super().convert(value, param, ctx)
        if str(path) == "-":
            return path
        raw = os.fsencode(os.path.abspath(path))
        longest = max((len(part) for part in raw.split(b"/")), default=0)
        if longest > NAME_MAX:
            self.fail(f"{value!r} has a name of {longest} bytes: a file name holds at most "
                      f"{NAME_MAX}", param, ctx)
        if len(raw) >= PATH_MAX:
            self.fail(f"{value!r} is {len(raw)} bytes long: a path holds at most "
                      f"{PATH_MAX - 1}", param, ctx)
        return path


OUTPUT_DIR = OutputDir()
