"""Sinks: local places that receive a file atomically and verified.

Every download ends in a sink. A storage's :meth:`~hashsync.storage.Storage.copy` does not
open files in its destination itself: it hands the destination a *fill* function, and the
destination decides where the data goes and how it is published. A
:class:`~hashsync.storage.LocalStorage` renames the filled temporary file onto the key's path;
a cache hands it to its index (deduplication, size budget, access times); :class:`BytesSink`
keeps the content in memory for :meth:`~hashsync.storage.Storage.read_bytes`.

The contract between the two sides:

- the sink calls ``fill(tmp)`` once, with a path that does not exist yet, in the directory
  where the file will be published (so the final rename stays on one filesystem);
- ``fill`` creates that file, writes and verifies the whole content (raising
  :class:`~hashsync.errors.IntegrityError` if the data does not match what the source
  announced), may set its mtime, and may return the version it wrote as the source's
  :meth:`~hashsync.storage.Storage.get_hash` names it (caches record it);
- if ``fill`` raises, the sink removes the temporary file and changes nothing;
- otherwise the sink publishes the file under ``key`` atomically: a reader sees the old
  content or the new, never part of it.

Example:
    A sink that counts what it receives and keeps nothing::

        class Counting(Sink):
            def __init__(self):
                self.bytes = 0

            def receive(self, key, fill, *, check=None):
                with tempfile.TemporaryDirectory() as scratch:
                    tmp = Path(scratch) / "part"
                    fill(tmp)
                    self.bytes += tmp.stat().st_size
"""

from __future__ import annotations

import abc
import contextlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from hashsync.errors import InvalidArgument

__all__ = ["BytesSink", "Check", "Fill", "Sink", "as_sink"]

#: Writes the complete, verified file at the path it is given; may return its version.
Fill = Callable[[Path], object]
#: Called with the key's final path under the key's lock just before publishing; may raise
#: to cancel the write (conditional writes).
Check = Callable[[Path], None]


class Sink(abc.ABC):
    """A local place that receives files atomically and verified (see the module docs).

    Implemented by :class:`~hashsync.storage.LocalStorage` (and its subclasses), by the
    caches' entries and by :class:`BytesSink`. Storages write into any of them the same way,
    so a new kind of destination needs no change in any storage.
    """

    @abc.abstractmethod
    def receive(self, key: str, fill: Fill, *, check: Check | None = None) -> None:
        """Publish the file that ``fill`` writes under ``key``, atomically.

        Args:
            key: The key the file is published under.
            fill: Writes the file at the temporary path it is given (see the module docs).
            check: Called with the final path, under the key's lock, right before the
                file is published; raising cancels the write. Sinks that cannot hold a
                lock refuse it with :class:`~hashsync.errors.InvalidArgument`.

        Raises:
            InvalidArgument: The key cannot be published here.
            HashsyncError: Whatever ``fill`` or ``check`` raised; nothing was published.
        """


def as_sink(destination: object) -> Sink:
    """Return ``destination`` if it is a :class:`Sink`, else raise a clear error.

    Raises:
        InvalidArgument: ``destination`` is not a sink (a remote storage, a path, ...).
    """
    if not isinstance(destination, Sink):
        raise InvalidArgument(
            f"can only copy into a local destination (a LocalStorage or another Sink), "
            f"not {destination!r}"
        )
    return destination


class BytesSink(Sink):
    """A sink that keeps what it receives in memory, by key (for small objects).

    Args:
        max_size: Refuse (with :class:`~hashsync.errors.IntegrityError`) a file larger than
            this many bytes.
    """

    def __init__(self, max_size: int | None = None) -> None:
        self.max_size = max_size
        self.contents: dict[str, bytes] = {}

    def receive(self, key: str, fill: Fill, *, check: Check | None = None) -> None:
        """Run ``fill`` in a private temporary directory and keep the bytes under ``key``."""
        from hashsync.errors import IntegrityError

        if check is not None:
            raise InvalidArgument("a BytesSink holds no locks: it takes no check")
        with tempfile.TemporaryDirectory(prefix="hashsync-bytes-") as scratch:
            tmp = Path(scratch) / "content"
            try:
                fill(tmp)
                with open(tmp, "rb") as fh:
                    size = os.fstat(fh.fileno()).st_size
                    if self.max_size is not None and size > self.max_size:
                        raise IntegrityError(
                            f"{key!r} is {size} bytes, more than the {self.max_size} allowed"
                        )
                    data = fh.read()
            finally:
                with contextlib.suppress(FileNotFoundError):
                    tmp.unlink()
        self.contents[key] = data

    def __repr__(self) -> str:
        return f"BytesSink({len(self.contents)} keys)"
