"""LocalReadOnlyCache: files served in place from a local or mounted storage, never copied."""

from __future__ import annotations

import datetime
import errno
from pathlib import Path

from hashsync.cache._api import Cache, CacheStats
from hashsync.errors import InvalidArgument, NotFound, PermissionDenied, UnsafePath
from hashsync.storage.base import Storage
from hashsync.storage.local import FilesystemStorage, link_below

__all__ = ["LocalReadOnlyCache"]


class LocalReadOnlyCache(Cache):
    """Files served in place from a local or mounted storage, without copying.

    The shared read-only tier of a cluster (a network share every machine mounts): nothing
    is written, nothing counts against a budget, and ``clear`` refuses.

    Args:
        storage: A storage with local paths (``LocalStorage`` or ``ReadOnlyFilesystemStorage``).
    """

    def __init__(self, storage: Storage) -> None:
        if not isinstance(storage, FilesystemStorage):
            raise InvalidArgument(
                f"LocalReadOnlyCache serves files in place and needs a local storage, "
                f"not {storage!r}"
            )
        self.storage: FilesystemStorage = storage
        self._hits = 0
        self._misses = 0

    def __repr__(self) -> str:
        return f"LocalReadOnlyCache({self.storage!r})"

    def get(self, key: str) -> Path:
        """Return the storage's path of ``key``.

        Raises:
            NotFound: The storage has no such file.
        """
        path: Path = self.storage.path(key)
        where = link_below(self.storage.root, path)
        if where is not None:
            raise UnsafePath(
                errno.ELOOP,
                f"refusing to serve {key!r} from {self.storage!r}: {where!r} is a symbolic "
                "link (it may lead outside the storage)",
            )
        if not self.storage.exists(key):
            self._misses += 1
            raise NotFound(errno.ENOENT, f"key {key!r} not found in {self.storage!r}")
        self._hits += 1
        return path

    def get_hash(self, key: str) -> str:
        """The storage's hash of ``key``."""
        return self.storage.get_hash(key)

    def get_last_modified(self, key: str) -> datetime.datetime:
        """The storage's last-modified time of ``key``."""
        return self.storage.get_last_modified(key)

    def stats(self) -> CacheStats:
        """Files and bytes in the storage; hits and misses of this object."""
        files = size = 0
        for info in self.storage.list(hashes=False):
            files += 1
            size += info.size
        return CacheStats(files, size, None, self._hits, self._misses, 0)

    def clear(self) -> None:
        """Refuse: a read-only cache's files are not hashsync's to delete.

        Raises:
            PermissionDenied: Always.
        """
        raise PermissionDenied(errno.EACCES, f"{self!r} is read-only; nothing was removed")
