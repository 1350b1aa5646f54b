"""Sizes and durations, parsed from the command line and printed for people."""

from __future__ import annotations

import re

_UNITS = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text: str) -> int:
    """'512M', '2G', '1048576' -> bytes."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGTB]?)(?:I?B)?\s*", text.upper())
    if not m:
        raise ValueError(f"not a size: {text!r} (try 512M or 2G)")
    return int(float(m.group(1)) * _UNITS[m.group(2)])


def human(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return str(n)


_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> float:
    """'7d', '12h', '30m', '90s', '2w' -> seconds."""
    text = text.strip().lower()
    if text and text[-1] in _DURATION_UNITS and text[:-1].replace(".", "", 1).isdigit():
        return float(text[:-1]) * _DURATION_UNITS[text[-1]]
    if text.replace(".", "", 1).isdigit():
        return float(text)
    raise ValueError(f"not a duration: {text!r} (try 7d, 12h or 30m)")
