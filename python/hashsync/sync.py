"""The sync engine: make a destination hold what a source holds, deciding by content.

``sync`` lists both sides, diffs them (:func:`hashsync.diff`), copies what is new or changed in
parallel and, if asked, deletes what only the destination has. With the default
``compare="checksum"`` a file whose content changed is copied even when its size is the same and
its mtime is older than the destination's — the case ``aws s3 sync`` and ``s5cmd sync`` skip.

Digests are cheap on both sides: local files get S3 ETags (with the storage's part size,
8 MiB by default) from the hash state cache, so unchanged files are not read; S3 objects bring
their ETags in the listing, so no request per object is needed. An ETag made with another part
size is checked by part-size inference on the local file.
"""

from __future__ import annotations

import concurrent.futures as cf
import datetime
import os
import queue
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import hashsync
from hashsync._native import filter_paths
from hashsync.errors import (
    FileChanged,
    HashsyncError,
    InvalidArgument,
    NotADirectory,
    NotFound,
    describe,
)
from hashsync.storage import (
    LocalStorage,
    PartitioningLocalStorage,
    ReadWriteStorage,
    S3Storage,
    SimpleLocalStorage,
    Storage,
    TemporaryLocalStorage,
    open_storage,
)
from hashsync.storage.base import reporting_progress

__all__ = ["Compare", "SyncResult", "TransferEvent", "plan_sync", "resolve_storage", "sync"]

Compare = Literal["checksum", "size-mtime", "size"]
FilterRules = list[tuple[str, str]]

# Never transfer hashsync's own in-flight files (atomic-write temporaries, key locks).
_INTERNAL_RULES: FilterRules = [
    ("exclude", "*.hashsync-tmp-*"),
    ("exclude", "*.hashsync-lock"),
]
# Enough to keep a store busy with small objects; large ones are also split into parts.
_DEFAULT_WORKERS = 16


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
        delete_suppressed: True when ``delete`` was asked but skipped because a transfer failed.
        dry_run: Nothing was changed; the lists say what would have been.
        seconds: Wall-clock duration.
    """

    transferred: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    skipped: int = 0
    bytes_transferred: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    scan_errors: list[tuple[str, str]] = field(default_factory=list)
    delete_suppressed: bool = False
    dry_run: bool = False
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """True when nothing failed and nothing was skipped for errors."""
        return not self.failed and not self.scan_errors and not self.delete_suppressed

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dictionary (what ``hashsync sync --json`` prints)."""
        return {
            "transferred": self.transferred,
            "deleted": self.deleted,
            "skipped": self.skipped,
            "bytes_transferred": self.bytes_transferred,
            "failed": [{"key": k, "reason": r} for k, r in self.failed],
            "scan_errors": [{"path": p, "reason": r} for p, r in self.scan_errors],
            "delete_suppressed": self.delete_suppressed,
            "dry_run": self.dry_run,
            "seconds": round(self.seconds, 3),
        }


class _Counter:
    """A byte counter that storage worker threads add to."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.value = 0

    def add(self, n: int) -> None:
        with self._lock:
            self.value += n


def _default_workers() -> int:
    value = os.environ.get("HASHSYNC_NUM_WORKERS", "").strip()
    if value:
        try:
            n = int(value)
        except ValueError:
            raise InvalidArgument(f"HASHSYNC_NUM_WORKERS={value!r} is not a number") from None
        if n >= 1:
            return n
    return _DEFAULT_WORKERS


def resolve_storage(
    spec: str | os.PathLike[str] | Storage,
    *,
    role: Literal["source", "destination"],
    endpoint_url: str | None = None,
) -> Storage:
    """Turns a path, URL or Storage into a Storage, checking local paths first.

    A local source must be an existing directory; a local destination may be missing (it is
    created) but must not be a file.

    Raises:
        NotFound: A local source does not exist.
        NotADirectory: A local path is a file.
        InvalidArgument: An unknown URL scheme.
    """
    if isinstance(spec, Storage):
        return spec
    text = os.fspath(spec)
    scheme, sep, rest = text.partition("://")
    if not sep or scheme == "file":
        path = Path(rest if sep else text).expanduser()
        if path.exists() and not path.is_dir():
            raise NotADirectory(20, f"the {role} is a file, not a directory", str(path))
        if role == "source" and not path.exists():
            raise NotFound(2, f"the {role} directory does not exist", str(path))
        return SimpleLocalStorage(path)
    options: dict[str, Any] = {}
    if endpoint_url and scheme == "s3":
        options["endpoint_url"] = endpoint_url
    return open_storage(text, **options)


def _scannable_root(storage: Storage) -> Path | None:
    # Partitioned storages hide keys behind hashed directories; list them through the API.
    if isinstance(storage, LocalStorage) and not isinstance(storage, PartitioningLocalStorage):
        return storage.root
    root = getattr(storage, "root", None)
    if root is not None and not isinstance(storage, PartitioningLocalStorage):
        return Path(root)
    return None


def _to_ns(when: datetime.datetime) -> int:
    return int(when.timestamp() * 1_000_000_000) if when else 0


def list_side(
    storage: Storage,
    *,
    rules: FilterRules,
    compare: Compare,
    progress: Callable[[int, int], object] | None = None,
) -> hashsync.Listing | list[hashsync.FileEntry]:
    """Lists one side of a sync as FileEntry records (a Listing for local directories).

    Local directories are scanned in Rust with ETag digests from the hash state cache; other
    storages are listed through :meth:`Storage.list`, whose hashes are ETags.
    """
    rules = list(rules) + _INTERNAL_RULES
    root = _scannable_root(storage)
    if root is not None:
        if not root.exists():
            return []
        part_size = getattr(storage, "part_size", hashsync.DEFAULT_PART_SIZE)
        state = getattr(storage, "hash_state", True)
        state_dir = getattr(storage, "hash_state_dir", None)
        return hashsync.scan(
            root,
            algorithm="etag" if compare == "checksum" else None,
            part_size=part_size,
            filters=rules,
            state=state,
            state_dir=state_dir,
            progress=progress,
        )
    infos = list(storage.list(""))
    # The scanner's own include/exclude rule, so local and remote sides filter alike.
    keep = filter_paths([info.key for info in infos], rules)
    return [
        hashsync.FileEntry(info.key, info.size, _to_ns(info.last_modified), info.hash)
        for info, kept in zip(infos, keep, strict=True)
        if kept
    ]


def _rules(
    include: str | Iterable[str] | None,
    exclude: str | Iterable[str] | None,
    filters: Sequence[tuple[str, str]] | None,
) -> FilterRules:
    def as_list(v: str | Iterable[str] | None) -> list[str]:
        if v is None:
            return []
        return [v] if isinstance(v, str) else list(v)

    if filters is not None:
        if include is not None or exclude is not None:
            raise InvalidArgument("give either filters= or include=/exclude=, not both")
        rules = [(str(k), str(p)) for k, p in filters]
        bad = [k for k, _ in rules if k not in ("include", "exclude")]
        if bad:
            raise InvalidArgument(f"filter kind must be 'include' or 'exclude', not {bad[0]!r}")
        return rules
    return [("exclude", p) for p in as_list(exclude)] + [("include", p) for p in as_list(include)]


def plan_sync(
    source: Storage,
    destination: Storage,
    *,
    rules: FilterRules,
    compare: Compare = "checksum",
    progress: Callable[[int, int], object] | None = None,
) -> tuple[hashsync.Plan, Any, Any]:
    """Lists both sides and diffs them; returns ``(plan, source_listing, destination_listing)``."""
    if compare not in ("checksum", "size-mtime", "size"):
        raise InvalidArgument(f"unknown comparison {compare!r}; valid: checksum, size-mtime, size")
    src = list_side(source, rules=rules, compare=compare, progress=progress)
    dst = list_side(destination, rules=rules, compare=compare, progress=progress)
    return hashsync.diff(src, dst, compare=compare), src, dst


def _action(source: Storage, destination: Storage) -> str:
    if isinstance(destination, LocalStorage):
        return "copy" if isinstance(source, LocalStorage) else "download"
    if isinstance(source, LocalStorage):
        return "upload"
    return "copy"


def _transfer_one(source: Storage, destination: Storage, key: str) -> None:
    if isinstance(destination, LocalStorage):
        source.copy(key, destination)
        return
    if not isinstance(destination, ReadWriteStorage):
        raise InvalidArgument(f"{destination!r} is read-only and cannot be a sync destination")
    if isinstance(source, LocalStorage):
        for attempt in range(2):
            try:
                destination.copy_from(key, source)
                return
            except FileChanged:
                # Written to while it was uploaded: the upload was abandoned; try once more,
                # then report it rather than leave a torn object behind.
                if attempt:
                    raise
        return
    if isinstance(source, S3Storage) and isinstance(destination, S3Storage):
        destination.copy_object_from(source, key)
        return
    with TemporaryLocalStorage() as staging:
        source.copy(key, staging)
        destination.copy_from(key, staging)


def sync(
    source: str | os.PathLike[str] | Storage,
    destination: str | os.PathLike[str] | Storage,
    *,
    delete: bool = False,
    dry_run: bool = False,
    include: str | Iterable[str] | None = None,
    exclude: str | Iterable[str] | None = None,
    filters: Sequence[tuple[str, str]] | None = None,
    compare: Compare = "checksum",
    workers: int | None = None,
    progress: Callable[[int, int], object] | None = None,
    endpoint_url: str | None = None,
    on_event: Callable[[TransferEvent], object] | None = None,
    on_plan: Callable[[hashsync.Plan], object] | None = None,
) -> SyncResult:
    """Makes ``destination`` hold the files of ``source``, deciding by content.

    Args:
        source: A local directory, ``s3://bucket/prefix``, ``http(s)://...`` or a Storage.
        destination: The same kinds; must be writable. A missing local directory is created.
        delete: Delete destination files the source does not have. Runs after all transfers,
            and not at all if any transfer failed (``SyncResult.delete_suppressed``).
        dry_run: Only report what would be transferred and deleted.
        include: Patterns to include (``aws s3 sync`` globs; see :func:`hashsync.scan`).
        exclude: Patterns to exclude. Excludes apply first, so an include always wins.
        filters: ``[("exclude", "*"), ("include", "*.txt")]``: rules in your own order, the
            last match winning, exactly like a sequence of ``--exclude``/``--include``.
        compare: ``"checksum"`` (content; default), ``"size-mtime"`` (the ``aws s3 sync``
            rule) or ``"size"``.
        workers: Files transferred at once (default ``HASHSYNC_NUM_WORKERS`` or 16).
        progress: ``progress(done_bytes, total_bytes)``, called from this thread while hashing
            and after each finished transfer.
        endpoint_url: Endpoint for ``s3://`` URLs (else ``AWS_ENDPOINT_URL(_S3)``).
        on_event: Called from this thread with a :class:`TransferEvent` per finished file.
        on_plan: Called with the :class:`hashsync.Plan` once both sides are compared, before
            anything is transferred.

    Returns:
        What was transferred, deleted, skipped and failed.

    Raises:
        NotFound: The source does not exist (local directory or bucket).
        NotADirectory: A local side is a file.
        PermissionDenied: The store refused the credentials.
        StorageUnavailable: A store could not be reached.
        InvalidArgument: Bad options.
    """
    started = time.monotonic()
    rules = _rules(include, exclude, filters)
    src = resolve_storage(source, role="source", endpoint_url=endpoint_url)
    dst = resolve_storage(destination, role="destination", endpoint_url=endpoint_url)
    workers = workers if workers is not None else _default_workers()
    if workers < 1:
        raise InvalidArgument("workers must be at least 1")

    plan, src_listing, dst_listing = plan_sync(
        src, dst, rules=rules, compare=compare, progress=progress
    )
    if on_plan is not None:
        on_plan(plan)
    result = SyncResult(skipped=plan.unchanged, dry_run=dry_run)
    for listing in (src_listing, dst_listing):
        result.scan_errors.extend(getattr(listing, "errors", []))
    to_copy = plan.copy_entries()
    to_delete = plan.delete

    if dry_run:
        result.transferred = [e.path for e in to_copy]
        result.bytes_transferred = plan.copy_bytes
        result.deleted = list(to_delete) if delete else []
        result.seconds = time.monotonic() - started
        return result

    if to_copy and not isinstance(dst, ReadWriteStorage):
        raise InvalidArgument(f"{dst!r} is read-only and cannot be a sync destination")
    action = _action(src, dst)
    total = plan.copy_bytes
    if progress is not None:
        progress(0, total)

    # Largest first: big files start early and small ones fill the gaps at the end.
    to_copy.sort(key=lambda e: e.size, reverse=True)
    stop = threading.Event()
    moved = _Counter()

    def run(entry: hashsync.FileEntry) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        with reporting_progress(moved.add):
            _transfer_one(src, dst, entry.path)

    done_queue: queue.SimpleQueue[cf.Future[None]] = queue.SimpleQueue()
    with cf.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="hashsync-sync") as pool:
        futures: dict[cf.Future[None], hashsync.FileEntry] = {}
        for e in to_copy:
            fut = pool.submit(run, e)
            futures[fut] = e
            # A completion queue, not cf.wait(): waiting on the whole pending set costs
            # O(pending) per wake-up, which is quadratic over 20,000 files.
            fut.add_done_callback(done_queue.put)
        remaining = len(futures)
        try:
            while remaining:
                try:
                    finished = [done_queue.get(timeout=0.1)]
                except queue.Empty:
                    finished = []
                while len(finished) < remaining:
                    try:
                        finished.append(done_queue.get_nowait())
                    except queue.Empty:
                        break
                for fut in finished:
                    remaining -= 1
                    entry = futures[fut]
                    exc = fut.exception()
                    if exc is None:
                        result.transferred.append(entry.path)
                        result.bytes_transferred += entry.size
                        event = TransferEvent(action, entry.path, entry.size)
                    elif isinstance(exc, KeyboardInterrupt):
                        raise exc
                    else:
                        result.failed.append((entry.path, describe(exc)))
                        event = TransferEvent(action, entry.path, entry.size, describe(exc))
                    if on_event is not None:
                        on_event(event)
                if progress is not None:
                    progress(min(moved.value, total), total)
        except BaseException:
            # Ctrl-C (or a callback's exception): start nothing new, let running transfers
            # finish cleanly (their temporary files are removed), then re-raise.
            stop.set()
            pool.shutdown(wait=True, cancel_futures=True)
            raise
    result.transferred.sort()

    if delete and to_delete:
        if result.failed:
            result.delete_suppressed = True
        else:
            assert isinstance(dst, ReadWriteStorage)
            for key in to_delete:
                try:
                    dst.delete(key)
                    result.deleted.append(key)
                    event = TransferEvent("delete", key, 0)
                except HashsyncError as exc:
                    result.failed.append((key, describe(exc)))
                    event = TransferEvent("delete", key, 0, describe(exc))
                if on_event is not None:
                    on_event(event)
    result.seconds = time.monotonic() - started
    return result
