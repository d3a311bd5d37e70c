"""Sharded sync and tree hashing on Dask: see :mod:`hashsync.syncing.on_dask`.

Kept as the public name of :func:`tree_hash` on a Dask cluster (``hashsync[dask]``).
"""

from hashsync.syncing.on_dask import dask_client, plan_segments, sync_on_dask, tree_hash

__all__ = ["dask_client", "plan_segments", "sync_on_dask", "tree_hash"]
