"""Parsing and printing byte sizes (``8MiB``, ``5M``, ``1.5GB``) and durations (``24h``)."""

from __future__ import annotations

import re

_UNITS = {
    "": 1,
    "b": 1,
    "k": 1024,
    "kb": 1000,
    "kib": 1024,
    "m": 1024**2,
    "mb": 1000**2,
    "mib": 1024**2,
    "g": 1024**3,
    "gb": 1000**3,
    "gib": 1024**3,
    "t": 1024**4,
    "tb": 1000**4,
    "tib": 1024**4,
}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


def parse_size(text: str | int) -> int:
    """Parses a byte count such as ``8388608``, ``8MiB``, ``8M`` (binary) or ``8MB`` (decimal).

    Raises:
        ValueError: The text is not a size.
    """
    if isinstance(text, int):
        return text
    m = _SIZE.match(text)
    unit = m.group(2).lower() if m else None
    if not m or unit not in _UNITS:
        raise ValueError(f"{text!r} is not a size (examples: 8388608, 8MiB, 8M, 100MB)")
    value = float(m.group(1)) * _UNITS[unit]
    if value >= 2**63:
        raise ValueError(f"{text!r} is too large (at most 8 EiB)")
    return int(value)


def format_size(n: float) -> str:
    """Formats a byte count with a binary unit, e.g. ``1.5 GiB``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w)?\s*$", re.IGNORECASE)
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> float:
    """Parses a duration such as ``90`` (seconds), ``30m``, ``24h``, ``7d`` or ``2w``.

    Raises:
        ValueError: The text is not a duration.
    """
    m = _DURATION.match(text)
    if not m:
        raise ValueError(f"{text!r} is not a duration (examples: 90, 30m, 24h, 7d)")
    seconds = float(m.group(1)) * _SECONDS[(m.group(2) or "s").lower()]
    if seconds > 1000 * 365 * 86400:
        raise ValueError(f"{text!r} is too long (at most 1000 years)")
    return seconds
