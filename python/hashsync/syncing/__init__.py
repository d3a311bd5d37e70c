"""Syncs, in layers: each module imports only those below it.

- :mod:`~hashsync.syncing.result`: :class:`SyncResult` and :class:`TransferEvent`.
- :mod:`~hashsync.syncing.rules`: include/exclude rules and the overlap check.
- :mod:`~hashsync.syncing.single`: the single-machine runner (list, diff, transfer, delete).
- :mod:`~hashsync.syncing.segmented`: a sync cut into segments, each run by the single runner.
- :mod:`~hashsync.syncing.on_dask`: those segments as Dask tasks (the ``dask`` extra).
- :mod:`~hashsync.syncing.api`: :func:`sync`, which checks the options and picks the runner.
"""

from hashsync.syncing.api import SEGMENTED_ABOVE, sync
from hashsync.syncing.result import SyncResult, TransferEvent
from hashsync.syncing.rules import FilterRules, check_overlap, make_rules
from hashsync.syncing.single import Compare, plan_sync, resolve_storage

__all__ = [
    "SEGMENTED_ABOVE",
    "Compare",
    "FilterRules",
    "SyncResult",
    "TransferEvent",
    "check_overlap",
    "make_rules",
    "plan_sync",
    "resolve_storage",
    "sync",
]
