"""Where :func:`hashsync.sync` lived before :mod:`hashsync.syncing`; kept for imports of it."""

from hashsync.syncing.api import sync
from hashsync.syncing.result import SyncResult, TransferEvent
from hashsync.syncing.single import Compare, plan_sync, resolve_storage

__all__ = ["Compare", "SyncResult", "TransferEvent", "plan_sync", "resolve_storage", "sync"]
