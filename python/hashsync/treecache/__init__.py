"""Content-addressed remote caches of built directories (seed 000's remote cache, generalised).

See :class:`TreeCache`.
"""

from hashsync.treecache._treecache import TreeCache, TreeCacheStatus

__all__ = ["TreeCache", "TreeCacheStatus"]
