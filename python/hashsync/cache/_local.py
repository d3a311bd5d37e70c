"""LocalCache: a local directory of files the program puts there, kept within a byte budget."""

from __future__ import annotations

import errno
import os
from pathlib import Path

from hashsync.cache._api import WriteableCache
from hashsync.cache._indexed import Inbox, IndexedCache, file_to_put
from hashsync.errors import NotFound
from hashsync.storage.local import LocalStorage, receive_file

__all__ = ["LocalCache"]


class LocalCache(IndexedCache, WriteableCache):
    """A local directory of files put there by the program, kept within a byte budget.

    Args:
        storage: The directory (a LocalStorage, or a path for a SimpleLocalStorage).
        max_size_bytes: Byte budget (default ``$HASHSYNC_CACHE_SIZE_BYTES``, else 128 GiB);
            least recently used entries are evicted after every insertion.
        shared: A cache its group writes (multi-user machines): directories group-writable
            and sticky, entries of other users hashed before they are served. Otherwise the
            directory must be the user's alone (``PermissionDenied`` if others can write it).
        dedup: Store identical content once, through hard links.
    """

    def __init__(
        self,
        storage: LocalStorage | str | os.PathLike[str],
        *,
        max_size_bytes: int | None = None,
        shared: bool = False,
        dedup: bool = True,
    ) -> None:
        super().__init__(storage, max_size_bytes=max_size_bytes, shared=shared, dedup=dedup)

    def get(self, key: str) -> Path:
        """Return the path of ``key``'s entry.

        Raises:
            NotFound: Nothing was put under ``key`` (or it was evicted, or altered on disk).
        """
        path = self._path(key)
        entry = self._intact(key, path)
        if entry is None:
            self._count("misses")
            raise NotFound(errno.ENOENT, f"key {key!r} is not in {self!r}")
        return self._hit(entry, path)

    def put(self, key: str, file: str | os.PathLike[str]) -> Path:
        """Copy ``file`` into the cache as ``key`` (atomically); return the entry's path.

        Raises:
            NotFound: ``file`` does not exist.
            FileChanged: ``file`` changed while it was copied.
            InvalidArgument: It is larger than the whole budget.
        """
        path = self._path(key)
        source = file_to_put(file)
        inbox = Inbox(self, key, "put")
        receive_file(inbox, key, source)
        return path

    def delete(self, key: str) -> None:
        """Remove ``key``'s entry.

        Raises:
            NotFound: The key is not in the cache.
        """
        self._path(key)
        if self.index.remove(key) is None:
            raise NotFound(errno.ENOENT, f"key {key!r} is not in {self!r}")
