"""Segments of a sync's key space: see :mod:`hashsync.syncing.segmented`."""

from hashsync.syncing.segmented import (
    SegmentOutcome,
    delete_keys,
    merge_outcomes,
    plan_segments,
    run_segments,
    select,
    sync_in_segments,
)

__all__ = [
    "SegmentOutcome",
    "delete_keys",
    "merge_outcomes",
    "plan_segments",
    "run_segments",
    "select",
    "sync_in_segments",
]
