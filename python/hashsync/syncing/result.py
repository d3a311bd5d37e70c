"""What a sync reports: one event per finished file, and the result of the whole run."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["SyncResult", "TransferEvent"]


@dataclass(frozen=True)
class TransferEvent:
    """One finished transfer or deletion, passed to ``on_event``.

    Attributes:
        action: ``"upload"``, ``"download"``, ``"copy"`` or ``"delete"``.
        key: The key (relative path).
        size: Bytes moved (0 for deletions).
        error: Why it failed, or None.
    """

    action: str
    key: str
    size: int
    error: str | None = None


@dataclass
class SyncResult:
    """What a sync did (or, with ``dry_run``, would do).

    Attributes:
        transferred: Keys copied to the destination.
        deleted: Keys deleted from the destination.
        skipped: Files already the same on both sides.
        bytes_transferred: Bytes copied.
        failed: ``(key, reason)`` for each transfer or deletion that failed.
        scan_errors: ``(path, reason)`` for entries that could not be listed or hashed.
        skipped_keys: ``(key, reason)`` for source entries that exist but are never
            transferred (remote objects named like hashsync's temporary files).
        skipped_links: Symbolic links of a local source that were not followed
            (``follow_symlinks=False``): not transferred, and what the destination holds at
            or below them is never deleted. Skipping them was asked for, so they do not
            make :attr:`ok` false.
        delete_suppressed: True when ``delete`` was asked but nothing was deleted because it
            was not safe: a transfer failed, the source could not be read completely, or the
            deletions exceeded ``max_delete``. ``delete_suppressed_reason`` says which.
        delete_suppressed_reason: Why deletion was suppressed, or None.
        dry_run: Nothing was changed; the lists say what would have been.
        seconds: Wall-clock duration.
    """

    transferred: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    skipped: int = 0
    bytes_transferred: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    scan_errors: list[tuple[str, str]] = field(default_factory=list)
    skipped_keys: list[tuple[str, str]] = field(default_factory=list)
    skipped_links: list[str] = field(default_factory=list)
    delete_suppressed: bool = False
    delete_suppressed_reason: str | None = None
    dry_run: bool = False
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """True when nothing failed and nothing was skipped for errors."""
        return (
            not self.failed
            and not self.scan_errors
            and not self.skipped_keys
            and not self.delete_suppressed
        )

    def add(self, part: SyncResult) -> None:
        """Add what ``part`` (a slice of the same sync: a segment, a Dask task) did."""
        self.transferred.extend(part.transferred)
        self.bytes_transferred += part.bytes_transferred
        self.skipped += part.skipped
        self.failed.extend(part.failed)
        self.scan_errors.extend(part.scan_errors)
        self.skipped_keys.extend(part.skipped_keys)
        self.skipped_links.extend(part.skipped_links)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dictionary (what ``hashsync sync --json`` prints)."""
        return {
            "transferred": self.transferred,
            "deleted": self.deleted,
            "skipped": self.skipped,
            "bytes_transferred": self.bytes_transferred,
            "failed": [{"key": k, "reason": r} for k, r in self.failed],
            "scan_errors": [{"path": p, "reason": r} for p, r in self.scan_errors],
            "skipped_keys": [{"key": k, "reason": r} for k, r in self.skipped_keys],
            "skipped_links": self.skipped_links,
            "delete_suppressed": self.delete_suppressed,
            "delete_suppressed_reason": self.delete_suppressed_reason,
            "dry_run": self.dry_run,
            "seconds": round(self.seconds, 3),
        }
