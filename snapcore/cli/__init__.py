"""The command layer: click commands, options, rendering and exit codes.

The only layer that prints, and the only one that names a command-line flag.
Importing it registers every command on the `cli` group.
"""

from snapcore.cli import check, reading, snap, stacks, tools, watch  # noqa: F401  (they register)
from snapcore.cli.app import cli, main

__all__ = ["cli", "main"]
