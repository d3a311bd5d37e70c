"""Sharded sync and tree hashing on Dask (``pip install hashsync[dask]``).

A sync of a huge tree is cut into *segments* of its key space (:class:`~hashsync.storage.base.
Segment`: the keys under a directory-like prefix, or only those directly in it). The planner
walks both sides one level at a time (a directory read, or one delimited LIST) and probes each
subdirectory's size with a single page of at most 1,000 keys; a subdirectory that fills the page
is explored a level deeper, as long as the number of segments stays under ``max_segments``.
Segments are then packed into batches of similar estimated size, a few per worker, and each
batch is one Dask task running the ordinary single-machine engine on its segments. A task
returns a compact summary (keys transferred, bytes, failures, scan errors, the destination keys
its segments would delete), never one future per object: thousands of tasks at most, however
many objects.

Rules that must see the whole tree stay on the client: ``--delete`` runs only after every task
finished with no failure and no scan error (then as a second round of tasks, in batches), the
empty-source and ``max_delete`` checks use the totals, and a task whose worker dies is run again
by Dask (``retries``); a rerun converges, because every write is atomic (a temporary file or an
unfinished multipart upload of a dead process is removed by the next scan or upload of that
host) and an already copied file compares equal.

Storages are pickled to the workers without credentials: each worker resolves its own from its
environment, profile or instance role, as boto3 does.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import heapq
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import hashsync
from hashsync.errors import InvalidArgument, describe, missing_extra
from hashsync.storage.base import ReadWriteStorage, Segment, Storage

__all__ = [
    "SegmentOutcome",
    "dask_client",
    "plan_segments",
    "sync_on_dask",
    "tree_hash",
]

# One S3 page: a subdirectory with fewer keys is listed whole by one request, so its size is
# known exactly; one that fills the page is "big" and worth splitting.
PROBE_LIMIT = 1000
MAX_SEGMENTS = 4096
# Batches per worker: enough to even out segments of unequal size, few enough to keep the
# scheduler's per-task overhead (a few ms) negligible.
BATCHES_PER_WORKER = 4
DELETE_BATCH = 10_000
# A task whose worker died is run again, up to this many times (beyond Dask's own rescheduling).
TASK_RETRIES = 2


def _require_dask() -> Any:
    try:
        import dask.distributed
    except ImportError:
        raise missing_extra("running on Dask (scheduler=, --scheduler)", "dask") from None
    return dask.distributed


@contextlib.contextmanager
def dask_client(scheduler: Any) -> Iterator[Any]:
    """A ``dask.distributed.Client`` for ``scheduler``, closed afterwards if made here.

    Args:
        scheduler: A ``Client`` (used as is), a scheduler address (``"tcp://host:8786"``), or
            ``"local:N"``: a LocalCluster of N worker processes with one thread each.

    Raises:
        MissingDependency: Dask is not installed.
        InvalidArgument: A malformed ``local:N``.
        StorageUnavailable: The scheduler cannot be reached.
    """
    distributed = _require_dask()
    if isinstance(scheduler, distributed.Client):
        yield scheduler
        return
    if not isinstance(scheduler, str) or not scheduler:
        raise InvalidArgument(
            f"scheduler must be a dask Client, an address or 'local:N', not {scheduler!r}"
        )
    if scheduler.startswith("local:"):
        count = scheduler.partition(":")[2]
        if not count.isdigit() or not 1 <= int(count) <= 256:
            raise InvalidArgument(f"'local:N' needs N between 1 and 256, not {scheduler!r}")
        with (
            distributed.LocalCluster(
                n_workers=int(count),
                threads_per_worker=1,
                processes=True,
                dashboard_address=None,
            ) as cluster,
            distributed.Client(cluster) as client,
        ):
            yield client
        return
    from hashsync.errors import StorageUnavailable

    try:
        client = distributed.Client(scheduler, timeout="20s")
    except (OSError, TimeoutError) as exc:
        raise StorageUnavailable(f"cannot reach the Dask scheduler {scheduler!r}: {exc}") from None
    with client:
        yield client


# -- planning ---------------------------------------------------------------------------------


def _levels(storages: Sequence[Storage], prefix: str) -> tuple[int, list[str]]:
    files = 0
    subdirs: set[str] = set()
    for storage in storages:
        n, subs = storage.list_level(prefix)
        files += n
        subdirs.update(subs)
    return files, sorted(subdirs)


def _valid_prefix(prefix: str) -> bool:
    try:
        Segment(prefix).check()
    except InvalidArgument:
        return False
    return True


def plan_segments(
    source: Storage,
    destination: Storage | None = None,
    *,
    workers: int = 1,
    max_segments: int = MAX_SEGMENTS,
    probe_limit: int = PROBE_LIMIT,
) -> list[list[Segment]]:
    """Cut the key space of ``source`` (and ``destination``) into batches of segments.

    Every key lies in exactly one segment. Storages that cannot list one level cheaply
    (:attr:`Storage.lists_by_level` false: HTTP, the hub) give one segment for everything.

    Args:
        source: The source storage.
        destination: The destination, whose extra subdirectories (deletions) get segments too.
        workers: Workers the batches are for.
        max_segments: Stop splitting beyond this many segments.
        probe_limit: Keys counted per subdirectory to estimate its size.

    Returns:
        Batches (lists of segments), each meant for one task, largest first.
    """
    sides = [s for s in (source, destination) if s is not None]
    if not all(s.lists_by_level for s in sides):
        return [[Segment()]]
    sized: list[tuple[Segment, int]] = []  # (segment, estimated keys)
    frontier = [""]
    with cf.ThreadPoolExecutor(16) as pool:
        while frontier:
            levels = list(pool.map(lambda p: _levels(sides, p), frontier))
            next_frontier: list[str] = []
            probes: list[str] = []
            for prefix, (files, subdirs) in zip(frontier, levels, strict=True):
                if not all(_valid_prefix(p) for p in subdirs):
                    # A key with an empty path part ("a//b") under it: no clean split here.
                    sized.append((Segment(prefix), probe_limit))
                    continue
                sized.append((Segment(prefix, shallow=True), files))
                probes.extend(subdirs)
            counts = list(
                pool.map(lambda p: sum(s.count_keys(p, probe_limit) for s in sides), probes)
            )
            budget = max_segments - len(sized) - len(probes)
            for prefix, n in zip(probes, counts, strict=True):
                if n >= probe_limit and budget > 0:
                    next_frontier.append(prefix)
                    budget -= 1
                else:
                    sized.append((Segment(prefix), n))
            frontier = next_frontier
    return _pack(sized, workers, probe_limit)


def _pack(sized: list[tuple[Segment, int]], workers: int, probe_limit: int) -> list[list[Segment]]:
    """Greedy packing: big segments alone, small ones together up to a target size."""
    sized = [(seg, n) for seg, n in sized if n > 0 or not seg.shallow]
    if not sized:
        return [[Segment("", shallow=True)]]
    total = sum(n for _, n in sized)
    target = max(1, total // max(1, workers * BATCHES_PER_WORKER))
    batches: list[tuple[list[Segment], int]] = []
    current: list[Segment] = []
    size = 0
    for seg, n in sorted(sized, key=lambda item: -item[1]):
        if n >= target or n >= probe_limit:
            batches.append(([seg], n))
            continue
        current.append(seg)
        size += max(n, 1)
        if size >= target:
            batches.append((current, size))
            current, size = [], 0
    if current:
        batches.append((current, size))
    batches.sort(key=lambda item: -item[1])
    return [segments for segments, _ in batches]


# -- tasks ------------------------------------------------------------------------------------


@dataclass
class SegmentOutcome:
    """What one task did: the summary sent back to the client (no per-object futures)."""

    transferred: list[str] = field(default_factory=list)
    bytes_transferred: int = 0
    skipped: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    scan_errors: list[tuple[str, str]] = field(default_factory=list)
    skipped_keys: list[tuple[str, str]] = field(default_factory=list)
    to_delete: list[str] = field(default_factory=list)
    source_entries: int = 0
    source_errors: int = 0
    segments: int = 0


def run_segments(
    source: Storage,
    destination: Storage,
    segments: Sequence[Segment],
    rules: list[tuple[str, str]],
    options: dict[str, Any],
) -> SegmentOutcome:
    """Sync each segment with the single-machine engine, deleting nothing (a Dask task)."""
    from hashsync.engine import sync_storages

    out = SegmentOutcome()
    for segment in segments:
        seen: list[Any] = []
        r = sync_storages(
            source,
            destination,
            rules,
            segment=segment,
            on_listings=lambda *listed, into=seen: into.extend(listed),
            **options,
        )
        plan, src_listing, _ = seen
        out.source_entries += len(src_listing.entries)
        out.source_errors += len(src_listing.errors)
        out.transferred.extend(r.transferred)
        out.bytes_transferred += r.bytes_transferred
        out.skipped += r.skipped
        out.failed.extend(r.failed)
        out.scan_errors.extend(r.scan_errors)
        out.skipped_keys.extend(r.skipped_keys)
        out.to_delete.extend(plan.delete)
        out.segments += 1
    return out


def delete_keys(destination: ReadWriteStorage, keys: Sequence[str]) -> list[tuple[str, str]]:
    """Delete ``keys``; returns ``(key, reason)`` for those that failed (a Dask task)."""
    return [
        (key, describe(exc))
        for key, exc in zip(keys, destination.delete_many(list(keys)), strict=True)
        if exc is not None
    ]


def _gather_in_order(client: Any, futures: list[Any], on_done: Callable[[Any], None]) -> list[Any]:
    """Results of ``futures`` as they finish; the first task error cancels the rest."""
    distributed = _require_dask()
    index = {f.key: i for i, f in enumerate(futures)}
    results: list[Any] = [None] * len(futures)
    try:
        for future in distributed.as_completed(futures):
            results[index[future.key]] = value = future.result()
            on_done(value)
    except BaseException:
        client.cancel(futures)
        raise
    return results


def sync_on_dask(
    src: Storage,
    dst: Storage,
    scheduler: Any,
    *,
    rules: list[tuple[str, str]],
    delete: bool,
    dry_run: bool,
    compare: str,
    workers: int,
    progress: Callable[[int, int], object] | None,
    allow_empty_source: bool,
    max_delete: int | None,
    on_segment: Callable[[int, int, int], object] | None = None,
) -> hashsync.SyncResult:
    """:func:`hashsync.sync` sharded on Dask; call that with ``scheduler=`` instead."""
    from hashsync.engine import SyncResult

    started = time.monotonic()
    with dask_client(scheduler) as client:
        n_workers = max(1, len(client.scheduler_info().get("workers", {})))
        batches = plan_segments(src, dst, workers=n_workers)
        options = {"dry_run": dry_run, "compare": compare, "workers": workers}
        run_id = uuid.uuid4().hex[:12]
        futures = [
            client.submit(
                run_segments,
                src,
                dst,
                batch,
                rules,
                options,
                key=f"hashsync-segments-{run_id}-{i}",
                retries=TASK_RETRIES,
                pure=False,
            )
            for i, batch in enumerate(batches)
        ]
        done = {"segments": 0, "bytes": 0}
        total_segments = sum(len(b) for b in batches)

        def finished(outcome: SegmentOutcome) -> None:
            done["segments"] += outcome.segments
            done["bytes"] += outcome.bytes_transferred
            if progress is not None:
                progress(done["bytes"], 0)
            if on_segment is not None:
                on_segment(done["segments"], total_segments, done["bytes"])

        outcomes: list[SegmentOutcome] = _gather_in_order(client, futures, finished)

        result = SyncResult(dry_run=dry_run)
        to_delete: list[str] = []
        source_entries = source_errors = 0
        for o in outcomes:
            result.transferred.extend(o.transferred)
            result.bytes_transferred += o.bytes_transferred
            result.skipped += o.skipped
            result.failed.extend(o.failed)
            result.scan_errors.extend(o.scan_errors)
            result.skipped_keys.extend(o.skipped_keys)
            to_delete.extend(o.to_delete)
            source_entries += o.source_entries
            source_errors += o.source_errors
        result.transferred.sort()
        to_delete = sorted(set(to_delete)) if delete else []
        if to_delete:
            # The same rules, in the same order, as the single-machine engine.
            if not allow_empty_source and source_entries == 0 and not source_errors:
                raise InvalidArgument(
                    f"the source {src!r} lists no files, so --delete would delete all "
                    f"{len(to_delete)} files of {dst!r}; check the source, or pass "
                    "--allow-empty-source (allow_empty_source=True) if that is what you want"
                )
            if source_errors:
                result.delete_suppressed_reason = (
                    f"{source_errors} source entries could not be listed or hashed, so their "
                    "destination copies would look deletable"
                )
            elif max_delete is not None and len(to_delete) > max_delete:
                result.delete_suppressed_reason = (
                    f"{len(to_delete)} files would be deleted, more than max_delete={max_delete}"
                )
            elif result.failed:
                result.delete_suppressed_reason = f"{len(result.failed)} transfers failed"
            result.delete_suppressed = result.delete_suppressed_reason is not None
        if to_delete and not result.delete_suppressed:
            if dry_run:
                result.deleted = to_delete
            else:
                if not isinstance(dst, ReadWriteStorage):
                    raise InvalidArgument(f"{dst!r} is read-only and cannot be a sync destination")
                chunks = [
                    to_delete[i : i + DELETE_BATCH] for i in range(0, len(to_delete), DELETE_BATCH)
                ]
                futures = [
                    client.submit(
                        delete_keys,
                        dst,
                        chunk,
                        key=f"hashsync-delete-{run_id}-{i}",
                        retries=TASK_RETRIES,
                        pure=False,
                    )
                    for i, chunk in enumerate(chunks)
                ]
                failures = [
                    f for batch in _gather_in_order(client, futures, lambda _: None) for f in batch
                ]
                failed_keys = {k for k, _ in failures}
                result.deleted = [k for k in to_delete if k not in failed_keys]
                result.failed.extend(failures)
    result.seconds = time.monotonic() - started
    return result


# -- tree hash --------------------------------------------------------------------------------


def _segment_records(
    root: str, algorithm: str, segments: Sequence[Segment], follow_symlinks: bool
) -> list[tuple[str, str | None]]:
    """``(path, digest)`` of every file and ``(path, None)`` of every empty directory (a task)."""
    records: list[tuple[str, str | None]] = []
    for segment in segments:
        listing = hashsync.scan(
            root,
            algorithm=algorithm,
            follow_symlinks=follow_symlinks,
            subdir=segment.prefix.rstrip("/") or None,
            recursive=not segment.shallow,
        )
        if listing.errors:
            path, why = listing.errors[0]
            raise InvalidArgument(f"cannot hash the tree {root}: {path}: {why}")
        records.extend((e.path, e.digest) for e in listing)
        records.extend((d, None) for d in listing.empty_dirs)
    records.sort()
    return records


def tree_hash(
    root: str,
    algorithm: str = "sha256",
    *,
    scheduler: Any,
    follow_symlinks: bool = False,
) -> str:
    """:func:`hashsync.tree_hash` computed on Dask: equal to the single-machine result.

    Segments of the tree are scanned and hashed by the workers (which must see ``root`` at
    the same path: a shared filesystem); the client merges their sorted records and hashes
    them exactly as the single-machine definition does.

    Args:
        root: The directory.
        algorithm: As for :func:`hashsync.tree_hash`.
        scheduler: As for :func:`hashsync.sync`.
        follow_symlinks: As for :func:`hashsync.tree_hash`.

    Raises:
        InvalidArgument: Part of the tree could not be read, or a bad algorithm.
        NotFound: ``root`` does not exist.
    """
    from hashsync.storage.local import ReadOnlyFilesystemStorage

    root = str(root)
    if algorithm not in hashsync.ALGORITHMS:
        raise InvalidArgument(f"unknown algorithm {algorithm!r}")
    storage = ReadOnlyFilesystemStorage(root)
    with dask_client(scheduler) as client:
        n_workers = max(1, len(client.scheduler_info().get("workers", {})))
        batches = plan_segments(storage, workers=n_workers)
        run_id = uuid.uuid4().hex[:12]
        futures = [
            client.submit(
                _segment_records,
                root,
                algorithm,
                batch,
                follow_symlinks,
                key=f"hashsync-treehash-{run_id}-{i}",
                retries=TASK_RETRIES,
                pure=False,
            )
            for i, batch in enumerate(batches)
        ]
        parts = _gather_in_order(client, futures, lambda _: None)
    hasher = hashsync.Hasher(algorithm)
    # Each part is sorted by path (code-point order of str is the UTF-8 byte order).
    for path, digest in heapq.merge(*parts, key=lambda r: r[0]):
        if digest is None:
            hasher.update(b"dir\0" + path.encode() + b"\0\n")
        else:
            hasher.update(b"file\0" + path.encode() + b"\0" + digest.encode() + b"\n")
    return hasher.hexdigest()
