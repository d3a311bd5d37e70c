"""The abstract cache API: :class:`Cache`, :class:`WriteableCache` and :class:`CacheStats`."""

from __future__ import annotations

import abc
import contextlib
import datetime
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import hashsync
from hashsync._threads import run_on_threads
from hashsync.errors import InvalidArgument
from hashsync.storage.base import reporting_progress

__all__ = ["Cache", "CacheStats", "WriteableCache"]


@dataclass(frozen=True)
class CacheStats:
    """What a cache holds and how it has been used.

    Attributes:
        files: Entries in the cache.
        bytes: Bytes they take on disk (content shared by several keys counts once).
        max_bytes: The byte budget (None for a cache that holds no copies).
        hits: ``get`` calls served from the cache, by every process using its directory.
        misses: ``get`` calls that had to fetch.
        evictions: Entries removed to stay within the budget.
    """

    files: int
    bytes: int
    max_bytes: int | None
    hits: int
    misses: int
    evictions: int


class Cache(abc.ABC):
    """Files by key, as local paths; subclasses decide where the files come from.

    A cache is a context manager (``with`` closes it) and pickles (for multiprocessing pools
    and Dask workers): what it holds lives on disk, and clients are rebuilt on the other side.
    """

    num_workers: int = 1

    @abc.abstractmethod
    def get(self, key: str) -> Path:
        """Return a local path holding ``key``'s current content, fetching it if needed.

        Raises:
            NotFound: No tier has the key (or, offline, it is not cached).
        """

    def open(self, key: str, mode: str = "r", **kwargs: Any) -> IO[Any]:
        """Open ``key``'s cached file for reading (``"r"`` or ``"rb"``).

        Raises:
            InvalidArgument: ``mode`` would write: cached files are read-only.
            NotFound: As :meth:`get`.
        """
        if any(c in mode for c in "wax+"):
            raise InvalidArgument(f"cached files are read-only; cannot open with mode {mode!r}")
        return open(self.get(key), mode, **kwargs)  # noqa: SIM115 - the caller owns it

    def get_hash(self, key: str) -> str:
        """The hash (S3 ETag, as :meth:`Storage.get_hash`) of the content :meth:`get` serves."""
        return hashsync.etag(self.get(key))

    def get_last_modified(self, key: str) -> datetime.datetime:
        """When the served content was last modified at its source (UTC)."""
        ns = self.get(key).stat().st_mtime_ns
        return datetime.datetime.fromtimestamp(ns / 1e9, tz=datetime.UTC)

    def get_many(self, keys: Iterable[str], *, progress: bool = True) -> list[Path]:
        """:meth:`get` many keys on :attr:`num_workers` threads; paths in the keys' order.

        A byte progress bar is drawn on stderr when it is a terminal and ``progress`` is on.

        Raises:
            HashsyncError: The first key that failed (the others still complete).
        """
        keys = list(keys)
        if not keys:
            return []
        self._check_spellings(keys)
        from hashsync._progress import byte_counter, byte_progress, quiet

        with byte_progress(f"fetching {len(keys)} files", enabled=progress) as bar:
            moved = byte_counter(bar)

            def one(key: str) -> Path:
                with reporting_progress(moved):
                    return self.get(key)

            if bar is quiet:
                one = self.get  # no bar drawn: no byte counting per chunk either

            workers = max(1, min(self.num_workers, len(keys)))
            if workers == 1:
                return [one(k) for k in keys]
            return run_on_threads(one, keys, workers)

    def _check_spellings(self, keys: list[str]) -> None:
        """Raise NameCollision when two of ``keys`` would be one file of this cache.

        Only caches that keep entries under their keys' names can collide; others have none.
        """
        return None

    @abc.abstractmethod
    def stats(self) -> CacheStats:
        """Counts of entries, bytes and uses."""

    @abc.abstractmethod
    def clear(self) -> None:
        """Remove every entry that is not pinned."""

    @contextlib.contextmanager
    def pin(self, keys: Iterable[str]) -> Iterator[None]:
        """Within the block, the entries of ``keys`` are never evicted (by any process)."""
        yield

    def close(self) -> None:  # noqa: B027 - a hook; most caches hold nothing to close
        """Release connections and flush counters; the files stay."""

    def __enter__(self) -> Cache:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class WriteableCache(Cache):
    """A cache that files can be put into and deleted from."""

    @abc.abstractmethod
    def put(self, key: str, file: str | os.PathLike[str]) -> Path:
        """Copy the local ``file`` into the cache as ``key``; return the entry's path."""

    @abc.abstractmethod
    def delete(self, key: str) -> None:
        """Remove ``key`` from the cache (and, for a synchronized cache, from its remote).

        Raises:
            NotFound: The key is not there.
        """
