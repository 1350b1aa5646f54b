"""Stop requests (Ctrl-C, SIGTERM, SIGHUP) while snapcore is putting things back.

Inside a stop window the engine blocks these signals outright (stops.signals_held).
During the cleanup after a failure or an interruption — killing the child,
reaping it from the target — a second request must not abort the cleanup
either: the command layer's handler asks `in_cleanup()`, and instead of
raising it records the request (and tells the operator it is waiting).

A request raised as KeyboardInterrupt can also land where Python cannot raise
it (a weakref callback of the import system, a __del__: "Exception ignored
in ..."): the command layer then records it with `request()`, and the engine
acts on it at its next safe point (`check()`).  Whether the engine is at work
on a target (`engaged()`) tells the command layer whether it may simply end.
"""

from __future__ import annotations

import contextlib
import sys

_depth = 0
_pending = False
_engaged = 0
_requested = False


def in_cleanup() -> bool:
    return _depth > 0


def remember() -> None:
    global _pending
    _pending = True


def pending() -> bool:
    """A stop request is recorded, to take effect once the cleanup is done."""
    return _pending


def engaged() -> bool:
    return _engaged > 0


@contextlib.contextmanager
def engage():
    """The engine is at work on a target: a stop request must unwind through
    its clean-up, never end the process where it stands."""
    global _engaged
    _engaged += 1
    try:
        yield
    finally:
        _engaged -= 1


def request() -> None:
    """A stop request that could not be raised where it landed."""
    global _requested
    _requested = True


def check() -> None:
    """A safe point: act on a recorded stop request."""
    global _requested
    if _requested and not in_cleanup():
        _requested = False
        raise KeyboardInterrupt


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
