"""Where cache settings come from: arguments > environment > config file > defaults."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import hashsync
from hashsync._threads import TRANSFERS
from hashsync._units import parse_duration, parse_size
from hashsync.errors import InvalidArgument

__all__ = [
    "DEFAULT_MAX_SIZE_BYTES",
    "caches_dir",
    "num_workers",
    "max_size_bytes",
    "offline",
    "setting",
]

#: 128 GiB, FiftyOne's media cache default.
DEFAULT_MAX_SIZE_BYTES = 128 * 2**30

T = TypeVar("T")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"", "0", "false", "no", "off"}


def setting(
    argument: T | None,
    env: str,
    configured: object,
    default: T,
    parse: Callable[[str], T],
) -> T:
    """The first of ``argument``, ``$env`` (parsed), ``configured`` (parsed), ``default``.

    Raises:
        InvalidArgument: The environment variable does not parse; the message names it.
    """
    if argument is not None:
        return argument
    raw = os.environ.get(env)
    if raw is not None and raw.strip():
        try:
            return parse(raw.strip())
        except (ValueError, InvalidArgument) as exc:
            raise InvalidArgument(f"${env}={raw!r}: {exc}") from None
    if configured is not None:
        return parse(str(configured))
    return default


def parse_bool(text: str) -> bool:
    """``1/true/yes/on`` or ``0/false/no/off`` (any case)."""
    value = text.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise InvalidArgument(f"expected a boolean (1/0, true/false), got {text!r}")


def parse_workers(text: str) -> int:
    """A positive worker count."""
    value = int(text)
    if value < 1:
        raise InvalidArgument(f"num_workers must be at least 1, not {value}")
    return value


def parse_max_age(text: str) -> float | None:
    """Seconds (``90``, ``30m``, ``1h``), or ``none``/``inf`` for never re-checking."""
    if text.strip().lower() in ("none", "inf", "never"):
        return None
    return float(parse_duration(text))


def max_size_bytes(argument: int | None, configured: object = None) -> int:
    """The byte budget: argument, ``$HASHSYNC_CACHE_SIZE_BYTES``, config, 128 GiB."""
    if argument is not None and (not isinstance(argument, int) or isinstance(argument, bool)):
        raise InvalidArgument(f"max_size_bytes must be a whole number of bytes, not {argument!r}")
    value = setting(
        argument, "HASHSYNC_CACHE_SIZE_BYTES", configured, DEFAULT_MAX_SIZE_BYTES, parse_size
    )
    if value < 0:
        raise InvalidArgument(f"max_size_bytes must not be negative, not {value}")
    return int(value)


def num_workers(argument: int | None, configured: object = None) -> int:
    """Parallel downloads: argument, ``$HASHSYNC_NUM_WORKERS``, config, else 64 (network-bound)."""
    if argument is not None and argument < 1:
        raise InvalidArgument(f"num_workers must be at least 1, not {argument}")
    return setting(argument, "HASHSYNC_NUM_WORKERS", configured, TRANSFERS, parse_workers)


def offline() -> bool:
    """Whether ``$HASHSYNC_OFFLINE`` asks for cached data only."""
    return setting(None, "HASHSYNC_OFFLINE", None, False, parse_bool)


def caches_dir() -> Path:
    """``$HASHSYNC_CACHE_DIR/caches`` (by default ``~/.cache/hashsync/caches``)."""
    return Path(hashsync.default_cache_dir()) / "caches"
