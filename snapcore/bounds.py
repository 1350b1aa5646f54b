"""The range of every number snapcore takes, by the name of its setting.

The command line checks each numeric option against these before anything
is touched (cli/options.py: Bounded), and the engine checks its settings
again when they are made (engine/request.Request, the watch's):
a library caller bypasses the command line, and a nan, an infinity or a
number past what the kernel's calls take would otherwise reach the engine's
waits (signal.sigtimedwait refuses them, with the target's threads held).
"""

from __future__ import annotations

import math

from snapcore.errors import BadInput, Stage

_TIB = 1 << 40
_DAY = 86400

# setting -> (lowest, highest, kind): integers where both bounds are ints.
# kind says how a bound is written: seconds, a size, a duration, a count...
RANGES = {
    # The threads that did stop wait, stopped, for the others meanwhile.
    "timeout": (0.01, 60.0, "seconds"),
    "dump_deadline": (0.0, float(_DAY), "seconds"),
    "max_dump_time": (0.0, float(_DAY), "seconds"),
    "compress_ratio": (1.0, 100.0, "ratio"),
    "max_per_hour": (0, 3600, "count"),
    "min_free": (0, 1024 * _TIB, "size"),
    "min_free_percent": (0.0, 100.0, "percent"),
    "interval": (0.01, 3600.0, "seconds"),
    "hold": (0.0, float(_DAY), "seconds"),
    "cooldown": (0.0, float(_DAY), "seconds"),
    "cpu": (0.0, 100000.0, "percent"),  # of one CPU: up to 1000 CPUs' worth
    "cpu_below": (0.0, 100000.0, "percent"),
    "rss": (0, 1024 * _TIB, "size"),
    "rss_below": (0, 1024 * _TIB, "size"),
    "threads": (1, 1 << 22, "count"),  # PID_MAX_LIMIT: no more tasks than pids
    "fds": (1, 1 << 30, "count"),  # fs.nr_open's ceiling
    "count": (1, 1000, "count"),
    "since": (0.0, 36500.0 * _DAY, "duration"),
    "older_than": (0.0, 36500.0 * _DAY, "duration"),
    "max_total": (0, 1024 * _TIB, "size"),
    "keep": (0, 100000, "count"),
}


def _shown(value: float, kind: str) -> str:
    if kind == "size":
        return f"{value // _TIB}T" if value >= _TIB else str(value)
    if kind == "duration":
        return f"{value / _DAY:g}d" if value >= _DAY else f"{value:g}s"
    if float(value).is_integer():
        return str(int(value))
    return str(value)


def span(setting: str) -> str:
    """The range as the help, README and man page write it: `0.01 to 60`."""
    low, high, kind = RANGES[setting]
    return f"{_shown(low, kind)} to {_shown(high, kind)}"


def integer(setting: str) -> bool:
    low, high, _ = RANGES[setting]
    return isinstance(low, int) and isinstance(high, int)


def describe(setting: str) -> str:
    """What a valid value is, in words: `a whole number from 0 to 3600`."""
    kind = RANGES[setting][2]
    what = {"size": "a size", "duration": "a duration", "percent": "a percentage",
            "seconds": "a number of seconds"}.get(kind, "a whole number" if integer(setting)
                                                     else "a number")
    return f"{what} from {span(setting)}"


def check(setting: str, value):
    """`value`, when it is a finite number in the setting's range; else a
    BadInput naming the setting, the value and the range."""
    low, high, _ = RANGES[setting]
    wanted = int if integer(setting) else (int, float)
    if isinstance(value, bool) or not isinstance(value, wanted) \
            or not (math.isfinite(value) and low <= value <= high):
        raise BadInput(f"invalid {setting} {value!r}", f"give {describe(setting)}",
                       stage=Stage.USAGE, setting=setting)
    return value


def min_free(spec: str) -> str:
    """A min_free setting: a size (2G) or a percentage of the filesystem
    (10%), each in its range; the spec itself when it is one."""
    from snapcore.units import parse_size
    text = spec.strip() if isinstance(spec, str) else ""
    try:
        if text.endswith("%"):
            check("min_free_percent", float(text[:-1]))
        else:
            check("min_free", parse_size(text))
    except (ValueError, BadInput):
        raise BadInput(f"invalid min_free {spec!r}", "give a size from "
                       f"{span('min_free')} (2G) or a percentage of the filesystem from "
                       f"{span('min_free_percent')} (10%)", stage=Stage.USAGE,
                       setting="min_free") from None
    return spec
