"""Sharded sync and tree hashing on Dask (``pip install hashsync[dask]``).

The sync is cut into segments of its key space (:mod:`hashsync.syncing.segmented`:
directories, or the files directly in one), packed into a few batches per worker; each batch is
one Dask task running the single-machine runner on its segments. A task returns a compact summary
(keys transferred, bytes, failures, scan errors, the destination keys its segments would
delete), never one future per object: thousands of tasks at most, however many objects.

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

import contextlib
import heapq
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import hashsync
from hashsync.errors import InvalidArgument, missing_extra
from hashsync.storage.base import FilterRules, Segment, Storage
from hashsync.syncing.result import SyncResult
from hashsync.syncing.segmented import (
    SegmentOutcome,
    delete_keys,
    finish_deletes,
    merge_outcomes,
    plan_segments,
    run_segments,
)
from hashsync.syncing.single import Compare, RunOptions

__all__ = ["dask_client", "plan_segments", "sync_on_dask", "tree_hash"]

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
        import dask

        with (
            # Dask's statistical profiler (sys._current_frames() every 10 ms) can deadlock a
            # worker on Python 3.11 (CPython gh-106883), and a sync starts many threads; the
            # profile is for Dask's dashboard, which a "local:N" cluster does not serve.
            dask.config.set({"distributed.worker.profile.enabled": False}),
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


def _worker_count(client: Any) -> int:
    return max(1, len(client.scheduler_info().get("workers", {})))


def _submit(
    client: Any, tag: str, fn: Callable[..., Any], calls: list[tuple[Any, ...]]
) -> list[Any]:
    """One task per argument tuple, named ``hashsync-<tag>-<run>-<i>``, rerun if a worker dies."""
    run_id = uuid.uuid4().hex[:12]
    return [
        client.submit(
            fn, *args, key=f"hashsync-{tag}-{run_id}-{i}", retries=TASK_RETRIES, pure=False
        )
        for i, args in enumerate(calls)
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
    rules: FilterRules,
    delete: bool,
    dry_run: bool,
    compare: Compare,
    workers: int,
    progress: Callable[[int, int], object] | None,
    allow_empty_source: bool,
    max_delete: int | None,
    on_segment: Callable[[int, int, int], object] | None = None,
) -> SyncResult:
    """:func:`hashsync.sync` sharded on Dask; call that with ``scheduler=`` instead."""
    started = time.monotonic()
    with dask_client(scheduler) as client:
        batches = plan_segments(src, dst, workers=_worker_count(client))
        # Progress and events stay on the client: tasks report per segment.
        options = RunOptions(dry_run=dry_run, compare=compare, workers=workers)
        futures = _submit(
            client, "segments", run_segments, [(src, dst, b, rules, options) for b in batches]
        )
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
        result, to_delete, source_entries, source_errors = merge_outcomes(outcomes, dry_run=dry_run)

        def delete_chunks(chunks: list[list[str]]) -> list[list[tuple[str, str]]]:
            futures = _submit(client, "delete", delete_keys, [(dst, c) for c in chunks])
            return _gather_in_order(client, futures, lambda _: None)

        finish_deletes(
            result,
            src,
            dst,
            to_delete if delete else [],
            source_entries=source_entries,
            source_errors=source_errors,
            allow_empty_source=allow_empty_source,
            max_delete=max_delete,
            delete_chunks=delete_chunks,
        )
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
        # The planner reads levels without following links; a followed link to a directory
        # would fall between its segments, so such a tree is hashed as one segment.
        batches = (
            [[Segment()]]
            if follow_symlinks
            else plan_segments(storage, workers=_worker_count(client))
        )
        futures = _submit(
            client,
            "treehash",
            _segment_records,
            [(root, algorithm, b, follow_symlinks) for b in batches],
        )
        parts = _gather_in_order(client, futures, lambda _: None)
    hasher = hashsync.Hasher(algorithm)
    # Each part is sorted by path (code-point order of str is the UTF-8 byte order).
    for path, digest in heapq.merge(*parts, key=lambda r: r[0]):
        if digest is None:
            hasher.update(b"dir\0" + path.encode() + b"\0\n")
        else:
            hasher.update(b"file\0" + path.encode() + b"\0" + digest.encode() + b"\n")
    return hasher.hexdigest()
