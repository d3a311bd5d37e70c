"""Local copies of remote files that never go stale, never corrupt, and stay in budget.

Seed 001's classes with seed 003's behaviour:

- :class:`LocalReadOnlyCache` serves files in place from a local or mounted storage;
- :class:`LocalCache` holds files the program puts there;
- :class:`CopyToLocalCache` copies files in from a list of tiers (a shared network share
  first, then S3, ...), revalidating them against their source;
- :class:`SynchronizedRemoteAndLocalCache` writes to a remote and a local copy at once.

Entries appear at their key's path in the local storage, are published only after their size
and hash were verified (temporary file, then rename), count against one byte budget shared by
every process using the directory (least recently used evicted first), and identical content
is stored once (hard links). :func:`get_cache` builds the caches a YAML config file names;
:func:`local_path` and :func:`download_many` give local paths for URLs.

Example:
    >>> from hashsync.cache import LocalCache
    >>> from hashsync.storage import TemporaryLocalStorage
    >>> import pathlib, tempfile
    >>> with TemporaryLocalStorage() as where, LocalCache(where) as cache:
    ...     src = pathlib.Path(tempfile.mkdtemp()) / "stats.json"
    ...     _ = src.write_text("{}")
    ...     cache.get(str(cache.put("stats.json", src).name)).read_text()
    '{}'
"""

from hashsync.cache._api import Cache, CacheStats, WriteableCache
from hashsync.cache._config import ConfigError, get_cache
from hashsync.cache._local import LocalCache
from hashsync.cache._readonly import LocalReadOnlyCache
from hashsync.cache._tiers import CopyToLocalCache, SynchronizedRemoteAndLocalCache
from hashsync.cache._urls import download_many, local_path

__all__ = [
    "Cache",
    "CacheStats",
    "ConfigError",
    "CopyToLocalCache",
    "LocalCache",
    "LocalReadOnlyCache",
    "SynchronizedRemoteAndLocalCache",
    "WriteableCache",
    "download_many",
    "get_cache",
    "local_path",
]
