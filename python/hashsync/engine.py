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

import bisect
import concurrent.futures as cf
import itertools
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
from hashsync._threads import run_on_threads
from hashsync.errors import (
    FileChanged,
    HashsyncError,
    InvalidArgument,
    describe,
)
from hashsync.storage import (
    ReadWriteStorage,
    Storage,
    open_storage,
)
from hashsync.storage.base import Segment, SyncListing, reporting_progress

__all__ = ["Compare", "SyncResult", "TransferEvent", "plan_sync", "resolve_storage", "sync"]

Compare = Literal["checksum", "size-mtime", "size"]
FilterRules = list[tuple[str, str]]

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


class _Counter:
    """A byte counter that storage worker threads add to."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.value = 0

    def add(self, n: int) -> None:
        with self._lock:
            self.value += n


# Sources with more entries than this are synced segment by segment (hashsync.segments).
SEGMENTED_ABOVE = 1_000_000


def _segmented_above() -> int:
    value = os.environ.get("HASHSYNC_SEGMENTED_ABOVE", "")
    return int(value) if value.isdigit() else SEGMENTED_ABOVE


def default_workers() -> int:
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
    """Turns a path, URL or Storage into a Storage through :func:`open_storage`.

    A local destination is not created here (a sync creates it once the source has been
    listed); a local path that is a file is refused.

    Raises:
        NotADirectory: A local path is a file.
        InvalidArgument: An empty path, or an unknown URL scheme.
    """
    if isinstance(spec, Storage):
        return spec
    text = os.fspath(spec)
    if not text.strip():
        # An unset shell variable ("$SRC") must not mean the current directory.
        raise InvalidArgument(f"the {role} is an empty path")
    scheme = text.partition("://")[0].lower() if "://" in text else None
    options: dict[str, Any] = {}
    if scheme in (None, "file"):
        options["create"] = False
    elif endpoint_url and scheme == "s3":
        options["endpoint_url"] = endpoint_url
    return open_storage(text, **options)


_PROBES = ("hashsync-overlap-probe", "hashsync-overlap-probe.d/x.bin")
_GLOB_CHARS = frozenset("*?[]\\")


def _same_file_ancestor(a: str, b: str) -> bool:
    """Whether the existing directory ``b`` (or an ancestor of it) is the directory ``a``.

    Catches what path strings cannot: bind mounts and hard-to-spot aliases of one directory.
    """
    try:
        target = os.stat(a)
    except OSError:
        return False
    path = Path(b)
    for candidate in (path, *path.parents):
        try:
            st = os.stat(candidate)
        except OSError:
            continue
        if (st.st_dev, st.st_ino) == (target.st_dev, target.st_ino):
            return True
    return False


def check_overlap(source: Storage, destination: Storage, rules: FilterRules) -> FilterRules:
    """Refuses a source and destination of which one lies inside the other.

    ``sync data/sub data --delete`` would delete the source itself, and ``sync data
    data/backup`` would copy its own output one level deeper on every run. Like rclone
    ("can't sync or move files on overlapping remotes") hashsync refuses, unless the filters
    exclude the nested part (``sync data data/backup --exclude 'backup/*'``); then the
    nested subtree is excluded from both listings whatever else the filters include.

    Returns:
        The rules to sync with: ``rules``, plus the exclusion of the nested part if any.

    Raises:
        InvalidArgument: The two overlap and the filters do not exclude the nested part.
    """
    a, b = source.location(), destination.location()
    if a is None or b is None or a[0] != b[0]:
        return rules
    (_, src_prefix), (_, dst_prefix) = a, b
    if src_prefix == dst_prefix:
        raise InvalidArgument(
            f"source and destination are the same place ({source!r} and {destination!r})"
        )
    if dst_prefix.startswith(src_prefix):
        inner, outer, which = dst_prefix[len(src_prefix) :], "source", "destination"
    elif src_prefix.startswith(dst_prefix):
        inner, outer, which = src_prefix[len(dst_prefix) :], "destination", "source"
    else:
        if a[0] == ("file",) and (
            _same_file_ancestor(src_prefix, dst_prefix)
            or _same_file_ancestor(dst_prefix, src_prefix)
        ):
            raise InvalidArgument(
                f"can't sync overlapping locations: {source!r} and {destination!r} are the "
                "same directory tree seen through different paths (a bind mount or alias)"
            )
        return rules
    refusal = InvalidArgument(
        f"can't sync overlapping locations: the {which} is inside the {outer} (at "
        f"{inner.rstrip('/')!r}); choose separate locations, or exclude it with "
        f"--exclude '{inner}*'"
    )
    probes = [inner + p for p in _PROBES]
    if any(c in _GLOB_CHARS for c in inner) or any(filter_paths(probes, rules)):
        raise refusal
    # The user excluded the nested part; make sure nothing under it is ever included again
    # (a later --include '*.txt' would otherwise pull the nested files back in).
    return [*rules, ("exclude", inner + "*")]


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


def _listing_options(
    source: Storage, compare: Compare, progress: Callable[[int, int], object] | None
) -> dict[str, Any]:
    # Both sides give digests of the source's kind (a hub's SHA-256, else S3 ETags), so a
    # local destination is hashed the way the source can be compared with.
    return {
        "checksum": compare == "checksum",
        "progress": progress,
        "algorithm": source.hash_algorithm,
    }


def plan_sync(
    source: Storage,
    destination: Storage,
    *,
    rules: FilterRules,
    compare: Compare = "checksum",
    progress: Callable[[int, int], object] | None = None,
    reap_temporaries: bool = False,
    segment: Segment | None = None,
    source_listing: SyncListing | None = None,
) -> tuple[hashsync.Plan, SyncListing, SyncListing]:
    """Lists both sides and diffs them; returns ``(plan, source_listing, destination_listing)``.

    Each side lists itself (:meth:`Storage.list_for_sync`), only ``segment`` if given; the
    source must exist. A ``source_listing`` made earlier is used instead of listing the source.
    """
    if compare not in ("checksum", "size-mtime", "size"):
        raise InvalidArgument(f"unknown comparison {compare!r}; valid: checksum, size-mtime, size")
    options = _listing_options(source, compare, progress)
    if segment is not None:
        options["segment"] = segment
    src = source_listing
    if src is None:
        src = source.list_for_sync(
            rules, must_exist=True, reap_temporaries=reap_temporaries, **options
        )
    dst = destination.list_for_sync(rules, reap_temporaries=reap_temporaries, **options)
    # aws s3 sync judges mtimes the other way round for downloads; so does hashsync.
    download = destination.is_local and not source.is_local
    plan = hashsync.diff(src.entries, dst.entries, compare=compare, download=download)
    return plan, src, dst


def _action(source: Storage, destination: Storage) -> str:
    if destination.is_local:
        return "copy" if source.is_local else "download"
    return "upload" if source.is_local else "copy"


def _transfer_one(source: Storage, destination: ReadWriteStorage, key: str) -> None:
    for attempt in range(2):
        try:
            destination.transfer_from(key, source)
            return
        except FileChanged:
            # Written to while it was read: the transfer was abandoned; try once more, then
            # report it rather than leave a torn copy behind.
            if attempt:
                raise


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
    progress: Callable[[int, int], object] | bool | None = None,
    endpoint_url: str | None = None,
    on_event: Callable[[TransferEvent], object] | None = None,
    on_plan: Callable[[hashsync.Plan], object] | None = None,
    allow_empty_source: bool = False,
    max_delete: int | None = None,
    scheduler: Any = None,
    on_segments: Callable[[int, int, int], object] | None = None,
    follow_symlinks: bool = True,
) -> SyncResult:
    """Makes ``destination`` hold the files of ``source``, deciding by content.

    Args:
        source: A local directory, ``s3://bucket/prefix``, ``http(s)://...`` or a Storage.
        destination: The same kinds; must be writable. A missing local directory is created.
        delete: Delete destination files the source does not have. Runs after all transfers,
            and not at all if any transfer failed, if any source entry could not be listed
            or hashed (its destination copy would look deletable), or if there are more than
            ``max_delete`` deletions (``SyncResult.delete_suppressed`` and its reason).
        dry_run: Only report what would be transferred and deleted.
        include: Patterns to include (``aws s3 sync`` globs; see :func:`hashsync.scan`).
        exclude: Patterns to exclude. Excludes apply first, so an include always wins.
        filters: ``[("exclude", "*"), ("include", "*.txt")]``: rules in your own order, the
            last match winning, exactly like a sequence of ``--exclude``/``--include``.
        compare: ``"checksum"`` (content; default), ``"size-mtime"`` (the ``aws s3 sync``
            rule: a size change, or for uploads and copies a source newer in whole seconds,
            for downloads a local file newer than the object) or ``"size"``.
        workers: Files transferred at once (default ``HASHSYNC_NUM_WORKERS`` or 16).
        progress: ``progress(done_bytes, total_bytes)``, called from this thread while hashing
            and after each finished transfer; ``True`` draws a byte progress bar on stderr
            (when it is a terminal); ``False`` or None, nothing.
        endpoint_url: Endpoint for ``s3://`` URLs (else ``AWS_ENDPOINT_URL(_S3)``).
        on_event: Called from this thread with a :class:`TransferEvent` per finished file.
        on_plan: Called with the :class:`hashsync.Plan` once both sides are compared, before
            anything is transferred.
        allow_empty_source: With ``delete``, a source that lists no files at all is refused
            (a wrong prefix or an unmounted disk would otherwise empty the destination);
            this allows it.
        max_delete: With ``delete``, delete nothing when more than this many files would be
            deleted (rclone's ``--max-delete``, all or nothing).
        scheduler: Run the sync sharded on Dask (``pip install hashsync[dask]``): a
            ``dask.distributed.Client``, a scheduler address (``"tcp://host:8786"``) or
            ``"local:N"`` for a local cluster of N worker processes. The key space is cut into
            segments (directories), each listed, compared and transferred by one task; the
            options, the result and the ``--delete`` rules are those of a local sync (see
            :mod:`hashsync.distributed`). ``on_event`` and ``on_plan`` are not called then.
        on_segments: With ``scheduler``, called as tasks finish with ``(segments done,
            segments planned, bytes transferred so far)``.
        follow_symlinks: Follow the symbolic links of a local source, to files and to
            directories (loops are detected and reported), as ``aws s3 sync`` does: a link is
            synced as the file it points to, a dangling one is an error for its key (and so
            suppresses ``delete``). ``False`` skips them, lists them in
            ``SyncResult.skipped_links`` and never deletes their destination copies. Decided
            when the source is listed: an entry swapped for a link afterwards is not read.
            Links in a local destination are never followed (nothing is written through one).

    Returns:
        What was transferred, deleted, skipped and failed.

    Raises:
        NotFound: The source does not exist (local directory or bucket).
        NotADirectory: A local side is a file.
        PermissionDenied: The store refused the credentials.
        StorageUnavailable: A store could not be reached.
        InvalidArgument: Bad options; source and destination overlap; an empty source with
            ``delete`` and without ``allow_empty_source``.
    """
    if isinstance(progress, bool):
        if not progress:
            progress = None
        else:
            from hashsync._progress import byte_progress

            with byte_progress("sync") as bar:
                return sync(
                    source,
                    destination,
                    delete=delete,
                    dry_run=dry_run,
                    include=include,
                    exclude=exclude,
                    filters=filters,
                    compare=compare,
                    workers=workers,
                    progress=bar,
                    endpoint_url=endpoint_url,
                    on_event=on_event,
                    on_plan=on_plan,
                    allow_empty_source=allow_empty_source,
                    max_delete=max_delete,
                    scheduler=scheduler,
                    on_segments=on_segments,
                    follow_symlinks=follow_symlinks,
                )
    elif progress is not None and not callable(progress):
        raise InvalidArgument(
            f"progress must be a callable progress(done, total), True or False, not {progress!r}"
        )
    rules = _rules(include, exclude, filters)
    src = resolve_storage(source, role="source", endpoint_url=endpoint_url)
    src = src.with_symlinks_followed(follow_symlinks)
    dst = resolve_storage(destination, role="destination", endpoint_url=endpoint_url)
    dst = dst.with_symlinks_followed(False)
    workers = workers if workers is not None else default_workers()
    if workers < 1:
        raise InvalidArgument("workers must be at least 1")
    if max_delete is not None and max_delete < 0:
        raise InvalidArgument("max_delete must be at least 0")
    if compare not in ("checksum", "size-mtime", "size"):
        raise InvalidArgument(f"unknown comparison {compare!r}; valid: checksum, size-mtime, size")
    rules = check_overlap(src, dst, rules)
    if scheduler is not None:
        from hashsync.distributed import sync_on_dask

        return sync_on_dask(
            src,
            dst,
            scheduler,
            rules=rules,
            delete=delete,
            dry_run=dry_run,
            compare=compare,
            workers=workers,
            progress=progress,
            allow_empty_source=allow_empty_source,
            max_delete=max_delete,
            on_segment=on_segments,
        )
    return sync_storages(
        src,
        dst,
        rules,
        delete=delete,
        dry_run=dry_run,
        compare=compare,
        workers=workers,
        progress=progress,
        on_event=on_event,
        on_plan=on_plan,
        allow_empty_source=allow_empty_source,
        max_delete=max_delete,
    )


def sync_storages(
    src: Storage,
    dst: Storage,
    rules: FilterRules,
    *,
    delete: bool = False,
    dry_run: bool = False,
    compare: Compare = "checksum",
    workers: int = _DEFAULT_WORKERS,
    progress: Callable[[int, int], object] | None = None,
    on_event: Callable[[TransferEvent], object] | None = None,
    on_plan: Callable[[hashsync.Plan], object] | None = None,
    allow_empty_source: bool = False,
    max_delete: int | None = None,
    segment: Segment | None = None,
    source_listing: SyncListing | None = None,
    on_listings: Callable[[hashsync.Plan, SyncListing, SyncListing], object] | None = None,
) -> SyncResult:
    """:func:`sync` between two storages whose options were already checked.

    With ``segment``, only that slice of the keys is synced: one task of a sharded sync, which
    learns the plan and both listings through ``on_listings``.
    """
    started = time.monotonic()
    if segment is None and source_listing is None and src.lists_by_level and dst.lists_by_level:
        # A huge source is synced segment by segment, so that the whole destination listing
        # never sits in memory next to the whole source listing.
        source_listing = src.list_for_sync(
            rules,
            must_exist=True,
            reap_temporaries=not dry_run,
            **_listing_options(src, compare, progress),
        )
        if len(source_listing.entries) > _segmented_above():
            from hashsync.segments import sync_in_segments

            result = sync_in_segments(
                src,
                dst,
                rules,
                source_listing,
                delete=delete,
                options={
                    "dry_run": dry_run,
                    "compare": compare,
                    "workers": workers,
                    "progress": progress,
                    "on_event": on_event,
                    "on_plan": on_plan,
                },
                allow_empty_source=allow_empty_source,
                max_delete=max_delete,
            )
            result.seconds = time.monotonic() - started
            return result
    result = SyncResult(dry_run=dry_run)
    # The source first: a destination is created only once the source is known to exist.
    plan, src_listing, dst_listing = plan_sync(
        src,
        dst,
        rules=rules,
        compare=compare,
        progress=progress,
        reap_temporaries=not dry_run,
        segment=segment,
        source_listing=source_listing,
    )
    if on_plan is not None:
        on_plan(plan)
    if on_listings is not None:
        on_listings(plan, src_listing, dst_listing)
    result.skipped = plan.unchanged
    result.skipped_keys.extend(src_listing.skipped)
    result.skipped_links.extend(src_listing.links_skipped)
    src_errors = src_listing.errors
    dst_errors = dst_listing.errors
    result.scan_errors.extend(src_errors + dst_errors)

    # Never overwrite what could not be seen: a destination entry that could not be read
    # (or a directory that could not be listed) keeps whatever it holds.
    unreadable = covering(where for where, _ in dst_errors)
    to_copy = []
    for e in plan.copy_entries():
        blocked = unreadable(e.path)
        if blocked is None:
            to_copy.append(e)
        else:
            result.failed.append(
                (e.path, f"not written: the destination entry {blocked!r} could not be read")
            )
    if compare == "checksum" and to_copy:
        to_copy, settled = settle_unmatched_etags(src, dst, to_copy, dst_listing, workers)
        result.skipped += settled
    to_delete = spare_links(plan.delete, src_listing.links_skipped) if delete else []
    # Keys of a filesystem destination in the way of a copy (a file where the source has a
    # directory, or the reverse) are removed before the transfers, with --delete only.
    replace_first: list[str] = []
    if dst.is_local and to_copy:
        may_replace = delete and (max_delete is None or len(to_delete) <= max_delete)
        to_copy, replace_first, refused = _resolve_conflicts(
            to_copy, dst_listing.entries, set(to_delete) if may_replace else set()
        )
        result.failed.extend(refused)
        replaced = set(replace_first)
        to_delete = [k for k in to_delete if k not in replaced]

    if delete and to_delete:
        result.delete_suppressed_reason = delete_refusal(
            src,
            dst,
            len(to_delete),
            source_entries=len(src_listing.entries),
            source_errors=len(src_errors),
            failed=len(result.failed),
            allow_empty_source=allow_empty_source,
            max_delete=max_delete,
        )
    result.delete_suppressed = result.delete_suppressed_reason is not None

    if dry_run:
        result.transferred = [e.path for e in to_copy]
        result.bytes_transferred = sum(e.size for e in to_copy)
        result.deleted = sorted(replace_first + ([] if result.delete_suppressed else to_delete))
        result.seconds = time.monotonic() - started
        return result

    if (to_copy or to_delete) and not isinstance(dst, ReadWriteStorage):
        raise InvalidArgument(f"{dst!r} is read-only and cannot be a sync destination")
    assert isinstance(dst, ReadWriteStorage) or not (to_copy or to_delete)
    if isinstance(dst, ReadWriteStorage):
        dst.prepare_destination()
    if replace_first:
        assert isinstance(dst, ReadWriteStorage)
        to_copy = _replace_in_the_way(dst, replace_first, to_copy, result, on_event)
    action = _action(src, dst)
    total = sum(e.size for e in to_copy)
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

    if isinstance(dst, ReadWriteStorage):
        # What killed runs of this host left behind (S3: unfinished multipart uploads).
        dst.reclaim_abandoned()
    if to_delete and not result.delete_suppressed and result.failed:
        result.delete_suppressed_reason = f"{len(result.failed)} transfers failed"
        result.delete_suppressed = True
    if to_delete and not result.delete_suppressed:
        assert isinstance(dst, ReadWriteStorage)
        for key, exc in zip(to_delete, dst.delete_many(to_delete), strict=True):
            if exc is None:
                result.deleted.append(key)
                event = TransferEvent("delete", key, 0)
            else:
                result.failed.append((key, describe(exc)))
                event = TransferEvent("delete", key, 0, describe(exc))
            if on_event is not None:
                on_event(event)
    result.seconds = time.monotonic() - started
    return result


def settle_unmatched_etags(
    src: Storage,
    dst: Storage,
    to_copy: list[hashsync.FileEntry],
    dst_listing: SyncListing,
    workers: int,
) -> tuple[list[hashsync.FileEntry], int]:
    """Drop the copies that the store shows to be unneeded; returns (rest, dropped).

    A multipart ETag made with a part size that inference cannot find (another tool's, or
    uneven parts) says nothing the diff can use, so it counts such a file as changed and
    every sync would copy it again. For those entries only (never for others), the store is
    asked for the object's whole-content CRC64NVME, else its real part sizes, else the
    size-and-mtime rule decides with a warning (see :mod:`hashsync._settle`).
    """
    from hashsync._settle import ask_store, by_size_and_mtime

    local, remote = (src, dst) if src.is_local else (dst, src)
    askable = hasattr(remote, "get_crc64nvme") and hasattr(local, "path")
    if src.is_local == dst.is_local or not askable:
        return to_copy, 0
    entries = dst_listing.entries
    # A store's listing is a plain list: index only the multipart entries, the only ones the
    # check can apply to (no dictionary of every object on each sync with changes).
    find = (
        entries.find
        if hasattr(entries, "find")
        else {e.path: e for e in entries if "-" in (e.digest or "")}.get
    )
    candidates = []
    for e in to_copy:
        other = find(e.path)
        if other is None or other.size != e.size:
            continue
        remote_etag = (other if src.is_local else e).digest or ""
        if "-" in remote_etag:
            candidates.append((e, other, remote_etag))
    if not candidates:
        return to_copy, 0

    def ask(candidate: tuple[hashsync.FileEntry, hashsync.FileEntry, str]) -> tuple[str, Any]:
        e, _, etag = candidate
        try:
            return ask_store(remote, local.path(e.path), e.path, etag, e.size)
        except (HashsyncError, OSError):
            return "copy", None  # as without the check

    answers = run_on_threads(ask, candidates, workers)
    same: set[str] = set()
    by_crc: list[tuple[hashsync.FileEntry, str]] = []
    weak: list[tuple[hashsync.FileEntry, hashsync.FileEntry]] = []
    for (e, other, _), (how, value) in zip(candidates, answers, strict=True):
        if how == "etag" and value:
            same.add(e.path)
        elif how == "crc":
            by_crc.append((e, value))
        elif how == "weak":
            weak.append((e, other))
    if by_crc:
        try:
            ours = hashsync.hash_files([local.path(e.path) for e, _ in by_crc], "crc64nvme")
        except (HashsyncError, OSError):
            ours = [None] * len(by_crc)  # copy them, as without the check
        same.update(
            e.path for (e, theirs), mine in zip(by_crc, ours, strict=True) if theirs == mine
        )
    same.update(by_size_and_mtime(weak, remote, download=dst.is_local))
    return [e for e in to_copy if e.path not in same], len(same)


def _resolve_conflicts(
    to_copy: list[hashsync.FileEntry], dst_entries: Any, deletable: set[str]
) -> tuple[list[hashsync.FileEntry], list[str], list[tuple[str, str]]]:
    """Split copies into a filesystem destination by whether something is in their way.

    ``f1/inner`` cannot be written where the destination has a file ``f1``, nor ``f1`` where
    it has a directory ``f1/`` (with files the listing saw). Both sides' listings say what
    the path must become, so what is in the way is not unseen: it is in the plan's deletions.
    A copy goes ahead when every key in its way is ``deletable`` (``--delete``).

    Returns:
        ``(copies to make, destination keys to delete first, (key, reason) refused)``.
    """
    paths = (
        dst_entries.paths()
        if isinstance(dst_entries, hashsync.Listing)
        else sorted(e.path for e in dst_entries)
    )
    if not paths:
        return to_copy, [], []

    def present(path: str) -> bool:
        i = bisect.bisect_left(paths, path)
        return i < len(paths) and paths[i] == path

    kept: list[hashsync.FileEntry] = []
    first: dict[str, None] = {}
    refused: list[tuple[str, str]] = []
    for e in to_copy:
        in_the_way: list[str] = []
        why = ""
        head = e.path
        while "/" in head:
            head = head.rpartition("/")[0]
            if present(head):
                in_the_way = [head]
                why = f"the destination has a file {head!r} where the source has a directory"
                break
        inside = e.path + "/"
        below = []
        for path in itertools.islice(paths, bisect.bisect_left(paths, inside), None):
            if not path.startswith(inside):
                break
            below.append(path)
        if below:
            in_the_way += below
            why = f"the destination has a directory {e.path!r} where the source has a file"
        if not in_the_way:
            kept.append(e)
        elif all(k in deletable for k in in_the_way):
            kept.append(e)
            first.update(dict.fromkeys(in_the_way))
        else:
            refused.append((e.path, f"{why}; not replaced without --delete (both kept)"))
    return kept, list(first), refused


def _replace_in_the_way(
    dst: ReadWriteStorage,
    keys: list[str],
    to_copy: list[hashsync.FileEntry],
    result: SyncResult,
    on_event: Callable[[TransferEvent], object] | None,
) -> list[hashsync.FileEntry]:
    """Delete the destination keys in the way of copies; returns the copies still possible."""
    failed: dict[str, str] = {}
    for key, exc in zip(keys, dst.delete_many(keys), strict=True):
        if exc is None:
            result.deleted.append(key)
        else:
            failed[key] = describe(exc)
        if on_event is not None:
            on_event(TransferEvent("delete", key, 0, None if exc is None else describe(exc)))
    result.failed.extend(failed.items())
    if not failed:
        return to_copy
    blocked = covering(failed)
    kept = []
    for e in to_copy:
        # Blocked by a file above it, or by a directory below it that could not be emptied.
        hit = blocked(e.path) or next((k for k in failed if k.startswith(e.path + "/")), None)
        if hit is None:
            kept.append(e)
        else:
            result.failed.append((e.path, f"not written: {hit!r} in its way could not be deleted"))
    return kept


def delete_refusal(
    src: Storage,
    dst: Storage,
    deletions: int,
    *,
    source_entries: int,
    source_errors: int,
    failed: int,
    allow_empty_source: bool,
    max_delete: int | None,
) -> str | None:
    """Why ``deletions`` deletions must not run, or None: the rules of ``--delete``.

    Raises:
        InvalidArgument: The source lists nothing at all (a wrong prefix, an unmounted disk)
            and ``allow_empty_source`` is not set.
    """
    if not allow_empty_source and source_entries == 0 and not source_errors:
        raise InvalidArgument(
            f"the source {src!r} lists no files, so --delete would delete all "
            f"{deletions} files of {dst!r}; check the source, or pass "
            "--allow-empty-source (allow_empty_source=True) if that is what you want"
        )
    if source_errors:
        return (
            f"{source_errors} source entries could not be listed or hashed, so their "
            "destination copies would look deletable"
        )
    if max_delete is not None and deletions > max_delete:
        return f"{deletions} files would be deleted, more than max_delete={max_delete}"
    if failed:
        return f"{failed} transfers failed"
    return None


def covering(paths: Iterable[str]) -> Callable[[str], str | None]:
    """A lookup: the one of ``paths`` that is a key itself or a directory above it, or None.

    ``""`` or ``"."`` among ``paths`` (the root) covers every key and is returned as ``"."``.
    """
    marked = {p.strip("/") for p in paths}

    def find(key: str) -> str | None:
        if not marked:
            return None
        if "" in marked or "." in marked:
            return "."
        candidate = key
        while True:
            if candidate in marked:
                return candidate
            candidate, sep, _ = candidate.rpartition("/")
            if not sep:
                return None

    return find


def spare_links(keys: Sequence[str], links_skipped: Sequence[str]) -> list[str]:
    """``keys`` less those at or below a source link that was not followed.

    A skipped link is not a missing file: the destination's copy of what it points to (or of
    what lies under a linked directory) is what the user has, not an extra to delete.
    """
    if not links_skipped:
        return list(keys)
    linked = covering(links_skipped)
    return [k for k in keys if linked(k) is None]
