"""hashsync: keep files in step across local disk, S3 and HTTP, deciding by content hash.

The hashing core is Rust; every function here releases the GIL while it works. Syncs live in
:mod:`hashsync.syncing`, storages in :mod:`hashsync.storage`, errors in
:mod:`hashsync.errors`.

Example:
    >>> import hashsync
    >>> hashsync.hash_bytes(b"123456789", "crc32")
    'cbf43926'
"""

from typing import TYPE_CHECKING, Any

from hashsync._native import (
    ALGORITHMS,
    DEFAULT_PART_SIZE,
    FileEntry,
    Hasher,
    Listing,
    Plan,
    __version__,
    default_cache_dir,
    diff,
    etag,
    etag_matches,
    hash_bytes,
    hash_file,
    hash_files,
    match_etag,
    scan,
    tree_hash,
)
from hashsync.errors import HashsyncError
from hashsync.syncing import SyncResult, TransferEvent, plan_sync, sync

if TYPE_CHECKING:
    from hashsync.treecache import TreeCache, TreeCacheStatus

__all__ = [
    "ALGORITHMS",
    "DEFAULT_PART_SIZE",
    "FileEntry",
    "Hasher",
    "HashsyncError",
    "Listing",
    "Plan",
    "SyncResult",
    "TransferEvent",
    "TreeCache",
    "TreeCacheStatus",
    "__version__",
    "default_cache_dir",
    "diff",
    "etag",
    "etag_matches",
    "hash_bytes",
    "hash_file",
    "hash_files",
    "match_etag",
    "plan_sync",
    "scan",
    "sync",
    "tree_hash",
]


def __getattr__(name: str) -> Any:
    # TreeCache is imported on first use: every command pays for what `import hashsync`
    # loads, and most never touch it (about 15 ms of start-up).
    if name in ("TreeCache", "TreeCacheStatus"):
        from hashsync import treecache

        return getattr(treecache, name)
    raise AttributeError(f"module 'hashsync' has no attribute {name!r}")
