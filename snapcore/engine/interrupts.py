"""Stop requests (Ctrl-C, SIGTERM, SIGHUP) while snapcore is putting things back.

Inside a stop window the engine blocks these signals outright (stops.signals_held).
During the cleanup after a failure or an interruption — killing the child,
reaping it from the target — a second request must not abort the cleanup
either: the command layer's handler asks `in_cleanup()`, and instead of
raising it records the request (and tells the operator it is waiting).
"""

from __future__ import annotations

import contextlib
import sys

_depth = 0
_pending = False


def in_cleanup() -> bool:
    return _depth > 0


def remember() -> None:
    global _pending
    _pending = True


@contextlib.contextmanager
def cleanup():
    """Run a block that must finish; a stop request during it takes effect after."""
    global _depth, _pending
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        if _depth == 0 and _pending:
            _pending = False
            if sys.exc_info()[0] is None:
                raise KeyboardInterrupt
