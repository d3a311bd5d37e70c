"""The single-machine runner, the bottom layer of a sync: one run, on this machine.

:func:`sync_storages` lists both sides, diffs them (:func:`hashsync.diff`), copies what is
new or changed in parallel and, if asked, deletes what only the destination has. With the default
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import hashsync
from hashsync._threads import TRANSFERS, run_on_threads
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
from hashsync.storage.base import FilterRules, Segment, SyncListing, reporting_progress
from hashsync.syncing.folded import (
    destination_folding,
    pair_spellings,
    refuse_collisions,
    spare_written,
)
from hashsync.syncing.result import SyncResult, TransferEvent

__all__ = [
    "Compare",
    "RunOptions",
    "action_name",
    "comparable_algorithm",
    "covering",
    "default_workers",
    "delete_refusal",
    "listing_options",
    "plan_sync",
    "resolve_storage",
    "settle_other_digests",
    "settle_unmatched_etags",
    "spare_links",
    "sync_storages",
]

Compare = Literal["checksum", "size-mtime", "size"]

_DEFAULT_WORKERS = TRANSFERS
# At most this many server-side copies at once (the default before issue 26).
_SERVER_COPY_WORKERS = 16


class _Counter:
    """A byte counter that storage worker threads add to."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.value = 0

    def add(self, n: int) -> None:
        with self._lock:
            self.value += n


def default_workers() -> int:
    """Files transferred at once: ``HASHSYNC_NUM_WORKERS``, else 64.

    Raises:
        InvalidArgument: The variable is set but not a number.
    """
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
    storage_options: dict[str, Any] | None = None,
) -> Storage:
    """Turns a path, URL or Storage into a Storage through :func:`open_storage`.

    A local destination is not created here (a sync creates it once the source has been
    listed); a local path that is a file is refused. ``storage_options`` go to an ``s3://``
    storage; of them, ``anonymous`` to a ``gs://`` one too.

    Raises:
        NotADirectory: A local path is a file.
        InvalidArgument: An empty path, or an unknown URL scheme; options for a Storage
            object (give them to the storage).
    """
    if isinstance(spec, Storage):
        if storage_options:
            raise InvalidArgument(
                f"{', '.join(sorted(storage_options))} cannot be applied to {spec!r}, which is "
                "already a storage: give them to the storage instead"
            )
        return spec
    text = os.fspath(spec)
    if not text.strip():
        # An unset shell variable ("$SRC") must not mean the current directory.
        raise InvalidArgument(f"the {role} is an empty path")
    scheme = text.partition("://")[0].lower() if "://" in text else None
    options: dict[str, Any] = {}
    if scheme in (None, "file"):
        options["create"] = False
    elif scheme == "s3":
        if endpoint_url:
            options["endpoint_url"] = endpoint_url
        options.update(storage_options or {})
    elif scheme == "gs" and storage_options:
        if storage_options.get("upload") is not None:
            raise InvalidArgument(
                "upload options (content type, encryption, storage class, metadata, ACL) are "
                "for s3:// destinations; gs:// does not take them yet"
            )
        if "anonymous" in storage_options:
            options["anonymous"] = storage_options["anonymous"]
    return open_storage(text, **options)


def comparable_algorithm(source: Storage, destination: Storage) -> str:
    """The digest both sides of a sync are listed with.

    A filesystem side hashes with whatever the other side keeps (S3 ETags, a hub's SHA-256,
    GCS's MD5). Between two stores, MD5 when one keeps MD5s (an S3 ETag of one part is the
    MD5), else the source's.
    """
    ours, theirs = source.hash_algorithm, destination.hash_algorithm
    if ours == theirs or destination.is_local:
        return ours
    if source.is_local:
        return theirs
    if {ours, theirs} == {"etag", "md5"}:
        return "md5"
    return ours


def listing_options(
    source: Storage,
    destination: Storage,
    compare: Compare,
    progress: Callable[[int, int], object] | None,
) -> dict[str, Any]:
    """The options both sides of a sync are listed with (:meth:`Storage.list_for_sync`)."""
    return {
        "checksum": compare == "checksum",
        "progress": progress,
        "algorithm": comparable_algorithm(source, destination),
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
    options = listing_options(source, destination, compare, progress)
    if segment is not None:
        options["segment"] = segment
    src = source_listing
    if src is None:
        src = source.list_for_sync(
            rules, must_exist=True, reap_temporaries=reap_temporaries, **options
        )
    dst = destination.list_for_sync(rules, reap_temporaries=reap_temporaries, **options)
    dst.folding = destination_folding(destination, src.entries.paths(), dst.entries.paths())
    if dst.folding:
        dst.entries = pair_spellings(src.entries, dst.entries, dst.folding)
    # aws s3 sync judges mtimes the other way round for downloads; so does hashsync.
    download = destination.is_local and not source.is_local
    plan = hashsync.diff(src.entries, dst.entries, compare=compare, download=download)
    return plan, src, dst


def action_name(source: Storage, destination: Storage) -> str:
    """What moving a file from ``source`` to ``destination`` is called in events and output."""
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


@dataclass(frozen=True)
class RunOptions:
    """How a run compares and transfers: what every runner hands down to the one below.

    Attributes:
        dry_run: Only report what would be done.
        compare: ``"checksum"``, ``"size-mtime"`` or ``"size"``.
        workers: Files transferred at once.
        progress: ``progress(done_bytes, total_bytes)``, or None.
        on_event: Called with a :class:`TransferEvent` per finished file, or None.
        on_plan: Called with the plan before anything is transferred, or None.
    """

    dry_run: bool = False
    compare: Compare = "checksum"
    workers: int = _DEFAULT_WORKERS
    progress: Callable[[int, int], object] | None = None
    on_event: Callable[[TransferEvent], object] | None = None
    on_plan: Callable[[hashsync.Plan], object] | None = None


def sync_storages(
    src: Storage,
    dst: Storage,
    rules: FilterRules,
    options: RunOptions = RunOptions(),  # noqa: B008 - frozen, so one shared default is safe
    *,
    delete: bool = False,
    allow_empty_source: bool = False,
    max_delete: int | None = None,
    segment: Segment | None = None,
    source_listing: SyncListing | None = None,
    on_listings: Callable[[hashsync.Plan, SyncListing, SyncListing], object] | None = None,
) -> SyncResult:
    """:func:`hashsync.sync` between two storages whose options were already checked.

    With ``segment``, only that slice of the keys is synced: one task of a sharded sync, which
    learns the plan and both listings through ``on_listings``.
    """
    dry_run, compare, workers = options.dry_run, options.compare, options.workers
    if not src.is_local and not dst.is_local:
        # Store-to-store copies load the store, not the network: 64 CopyObjects per task on
        # each Dask worker kept SeaweedFS from answering within the 60 s read timeout.
        workers = min(workers, _SERVER_COPY_WORKERS)
    progress, on_event, on_plan = options.progress, options.on_event, options.on_plan
    started = time.monotonic()
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
        to_copy, settled = settle_other_digests(src, dst, to_copy, dst_listing)
        result.skipped += settled
    to_delete = spare_links(plan.delete, src_listing.links_skipped) if delete else []
    folding = dst_listing.folding
    if folding:
        to_copy, refused, protected = refuse_collisions(
            to_copy, src_listing.entries.paths(), folding, repr(dst)
        )
        result.failed.extend(refused)
        to_delete = [k for k in to_delete if folding.fold(k) not in protected]
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
    # None only when there is nothing to write.
    writable = dst if isinstance(dst, ReadWriteStorage) else None
    if writable is not None:
        writable.prepare_destination()
        if replace_first:
            to_copy = _replace_in_the_way(writable, replace_first, to_copy, result, on_event)
    action = action_name(src, dst)
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
        assert writable is not None  # there is something to write
        with reporting_progress(moved.add):
            _transfer_one(src, writable, entry.path)

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

    if writable is not None:
        # What killed runs of this host left behind (S3: unfinished multipart uploads).
        writable.reclaim_abandoned()
    if to_delete and not result.delete_suppressed and result.failed:
        result.delete_suppressed_reason = f"{len(result.failed)} transfers failed"
        result.delete_suppressed = True
    if to_delete and not result.delete_suppressed and writable is not None:
        to_delete, spared = spare_written(dst, to_delete, result.transferred)
        result.skipped_keys.extend(spared)
        for key, exc in zip(to_delete, writable.delete_many(to_delete), strict=True):
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
    size-and-mtime rule decides with a warning (see :mod:`hashsync._settle`). A plain ETag
    of the same size that differs may not be an MD5 (objects encrypted with SSE-KMS): the
    store is asked for the CRC64NVME only (one HEAD), and without one the file is copied.
    """
    from hashsync._settle import ask_store, by_size_and_mtime

    local, remote = (src, dst) if src.is_local else (dst, src)
    if src.is_local == dst.is_local:
        return to_copy, 0
    find = dst_listing.entries.find
    Candidate = tuple[hashsync.FileEntry, hashsync.FileEntry, str, Path]
    candidates: list[Candidate] = []
    for e in to_copy:
        other = find(e.path)
        if other is None or other.size != e.size:
            continue
        remote_etag = (other if src.is_local else e).digest or ""
        path = local.local_path(e.path)
        # A multipart ETag, or a plain one that may not be an MD5 at all (SSE-KMS, SSE-C):
        # the store may still say what the content is.
        if len(remote_etag) >= 32 and ":" not in remote_etag and path is not None:
            candidates.append((e, other, remote_etag, path))
    if not candidates:
        return to_copy, 0

    def ask(candidate: Candidate) -> tuple[str, Any]:
        e, _, etag, path = candidate
        try:
            if "-" not in etag:
                # A plain ETag that differs: only a content checksum can prove it unchanged
                # (never the mtime rule, which would miss the very edit a checksum sync
                # exists to catch).
                crc = remote.get_crc64nvme(e.path)
                return ("crc", crc) if crc is not None else ("copy", None)
            return ask_store(remote, path, e.path, etag, e.size)
        except (HashsyncError, OSError):
            return "copy", None  # as without the check

    answers = run_on_threads(ask, candidates, workers)
    same: set[str] = set()
    by_crc: list[tuple[hashsync.FileEntry, str, Path]] = []
    weak: list[tuple[hashsync.FileEntry, hashsync.FileEntry]] = []
    for (e, other, _, path), (how, value) in zip(candidates, answers, strict=True):
        if how == "etag" and value:
            same.add(e.path)
        elif how == "crc":
            by_crc.append((e, value, path))
        elif how == "weak":
            weak.append((e, other))
    if by_crc:
        try:
            ours = hashsync.hash_files([path for _, _, path in by_crc], "crc64nvme")
        except (HashsyncError, OSError):
            ours = [""] * len(by_crc)  # no CRC matches: copy them, as without the check
        same.update(
            e.path for (e, theirs, _), mine in zip(by_crc, ours, strict=True) if theirs == mine
        )
    same.update(by_size_and_mtime(weak, remote, download=dst.is_local))
    return [e for e in to_copy if e.path not in same], len(same)


def settle_other_digests(
    src: Storage, dst: Storage, to_copy: list[hashsync.FileEntry], dst_listing: SyncListing
) -> tuple[list[hashsync.FileEntry], int]:
    """Drop the copies whose remote digest is of another algorithm and matches the file.

    A GCS composite object has no MD5, only a CRC32C: the listing gives it as
    ``"crc32c:<hex>"``, which no MD5 equals. For such entries of the same size, the local
    file is hashed with that algorithm and compared; returns (rest, dropped).
    """
    if src.is_local == dst.is_local:
        return to_copy, 0
    local = src if src.is_local else dst
    find = dst_listing.entries.find
    by_algorithm: dict[str, list[tuple[hashsync.FileEntry, Path, str]]] = {}
    for e in to_copy:
        other = find(e.path)
        if other is None or other.size != e.size:
            continue
        algorithm, sep, digest = ((other if src.is_local else e).digest or "").partition(":")
        path = local.local_path(e.path)
        if sep and algorithm in hashsync.ALGORITHMS and path is not None:
            by_algorithm.setdefault(algorithm, []).append((e, path, digest))
    same: set[str] = set()
    for algorithm, items in by_algorithm.items():
        try:
            ours = hashsync.hash_files([path for _, path, _ in items], algorithm)
        except (HashsyncError, OSError):
            continue  # copy them, as without the check
        same.update(
            e.path for (e, _, theirs), mine in zip(items, ours, strict=True) if mine == theirs
        )
    return [e for e in to_copy if e.path not in same], len(same)


def _resolve_conflicts(
    to_copy: list[hashsync.FileEntry], dst_entries: hashsync.Listing, deletable: set[str]
) -> tuple[list[hashsync.FileEntry], list[str], list[tuple[str, str]]]:
    """Split copies into a filesystem destination by whether something is in their way.

    ``f1/inner`` cannot be written where the destination has a file ``f1``, nor ``f1`` where
    it has a directory ``f1/`` (with files the listing saw). Both sides' listings say what
    the path must become, so what is in the way is not unseen: it is in the plan's deletions.
    A copy goes ahead when every key in its way is ``deletable`` (``--delete``).

    Returns:
        ``(copies to make, destination keys to delete first, (key, reason) refused)``.
    """
    paths = dst_entries.paths()
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
