"""The command layer: click commands, options, rendering and exit codes.

The only layer that prints, and the only one that names a command-line flag.
"""

from snapcore.cli.app import cli, main
from snapcore.cli import tools  # noqa: F401  (registers stacks, watch, list and prune)

__all__ = ["cli", "main"]
