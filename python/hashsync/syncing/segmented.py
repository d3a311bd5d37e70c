"""Segments of a sync's key space: planning them, syncing them one by one, adding them up.

A huge sync is cut into *segments* (:class:`~hashsync.storage.base.Segment`: the keys under a
directory-like prefix, or only those directly in it). The planner walks both sides one level at
a time (a directory read, or one delimited LIST) and probes each subdirectory's size with a
single page of at most 200 keys; subdirectories that fill the page are split a level deeper,
a few per round, until there are about 8 segments per worker. Segments are packed into
batches of similar estimated size. Each segment is then listed, compared and transferred by
the single-machine runner (:mod:`hashsync.syncing.single`, the layer below), deleting nothing;
deletions are decided once every segment is done, by the same rules as a single sync
(:func:`~hashsync.syncing.single.delete_refusal`).

Two callers use this: :mod:`hashsync.syncing.on_dask` (one Dask task per batch) and
:func:`hashsync.sync` on one machine, which syncs a source of more than
:data:`hashsync.syncing.api.SEGMENTED_ABOVE` entries segment by segment so that it never holds
the whole destination listing next to the whole source listing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from hashsync._threads import run_on_threads
from hashsync.errors import InvalidArgument, describe
from hashsync.storage.base import FilterRules, ReadWriteStorage, Segment, Storage, SyncListing
from hashsync.syncing.folded import refuse_folded_source, spare_written
from hashsync.syncing.result import SyncResult
from hashsync.syncing.single import RunOptions, delete_refusal, spare_links, sync_storages

__all__ = [
    "SegmentOutcome",
    "delete_keys",
    "merge_outcomes",
    "plan_segments",
    "run_segments",
    "select",
    "sync_in_segments",
]

# Keys counted per subdirectory (one LIST page of this size): fewer means the size is known;
# a directory that fills the page is "big" and worth splitting. A 1,000-key page costs a store
# five times the work of a 200-key one (SeaweedFS here: 17 ms against 3 ms) and the planner
# needs no more than "big or not".
PROBE_LIMIT = 200
MAX_SEGMENTS = 4096
# Batches per worker: enough to even out segments of unequal size, few enough to keep the
# scheduler's per-task overhead (a few ms) negligible.
BATCHES_PER_WORKER = 4
# Entries per batch when one machine syncs a huge source segment by segment.
SEGMENT_ENTRIES = 100_000
# Level listings and probes in flight while planning.
_PROBES = 32


def select(listing: SyncListing, segment: Segment) -> SyncListing:
    """The part of an already made listing that lies in ``segment`` (entries only)."""
    return SyncListing(listing.entries.select(segment.prefix, segment.shallow))


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
    target_segments: int | None = None,
) -> list[list[Segment]]:
    """Cut the key space of ``source`` (and ``destination``) into batches of segments.

    Every key lies in exactly one segment. The root is always split one level; then
    directories found to hold at least ``probe_limit`` keys are split, a few per round, until
    there are about ``target_segments`` segments (each split costs a listing request and one
    probe per subdirectory, and each segment costs its own listing requests later, so no more
    are made than the workers can use). Storages that cannot list one level cheaply
    (:attr:`Storage.lists_by_level` false: HTTP, the hub) give one segment for everything.

    Args:
        source: The source storage.
        destination: The destination, whose extra subdirectories (deletions) get segments too.
        workers: Workers the batches are for.
        max_segments: Never split beyond this many segments.
        probe_limit: Keys counted per subdirectory to estimate its size.
        target_segments: Segments wanted (default: 8 per worker).

    Returns:
        Batches (lists of segments), each meant for one task, largest first.
    """
    sides = [s for s in (source, destination) if s is not None]
    if not all(s.lists_by_level for s in sides):
        return [[Segment()]]
    target = min(max_segments, target_segments or 2 * BATCHES_PER_WORKER * max(1, workers))

    def probe(prefix: str) -> int:
        return sum(s.count_keys(prefix, probe_limit) for s in sides)

    sized: list[tuple[Segment, int]] = []  # (segment, estimated keys)
    big: list[str] = []  # directories with at least probe_limit keys, not split
    pending = [""]
    # Probes are latency-bound on a remote store: many in flight.
    while pending:
        subdirs: list[str] = []
        levels = run_on_threads(lambda p: _levels(sides, p), pending, _PROBES, fail_fast=True)
        for prefix, (files, subs) in zip(pending, levels, strict=True):
            if not all(_valid_prefix(p) for p in subs):
                # A key with an empty path part ("a//b") under it: no clean split here.
                sized.append((Segment(prefix), probe_limit))
                continue
            sized.append((Segment(prefix, shallow=True), files))
            subdirs.extend(subs)
        counts = run_on_threads(probe, subdirs, _PROBES, fail_fast=True)
        for sub, n in zip(subdirs, counts, strict=True):
            if n >= probe_limit:
                big.append(sub)
            else:
                sized.append((Segment(sub), n))
        room = target - len(sized) - len(big)
        # A split turns one segment into several: a few at a time keeps near the target.
        take = min(len(big), max(1, room // 4)) if room > 0 else 0
        pending, big = big[:take], big[take:]
    sized.extend((Segment(p), probe_limit) for p in big)
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


# -- running segments ---------------------------------------------------------------------------


@dataclass
class SegmentOutcome(SyncResult):
    """What one task did: its result, plus what the client decides deletions with.

    The summary sent back to the client (no per-object futures).
    """

    to_delete: list[str] = field(default_factory=list)
    source_entries: int = 0
    source_errors: int = 0
    segments: int = 0


def run_segments(
    source: Storage,
    destination: Storage,
    segments: Sequence[Segment],
    rules: FilterRules,
    options: RunOptions,
    source_listing: SyncListing | None = None,
) -> SegmentOutcome:
    """Sync each segment with the single-machine engine, deleting nothing (a Dask task).

    With ``source_listing`` (the whole source, already listed), each segment's source side is
    cut from it instead of being listed again.
    """
    out = SegmentOutcome()
    for segment in segments:
        seen: list[Any] = []
        r = sync_storages(
            source,
            destination,
            rules,
            options,
            segment=segment,
            source_listing=None if source_listing is None else select(source_listing, segment),
            on_listings=lambda *listed, into=seen: into.extend(listed),
        )
        plan, src_listing, _ = seen
        out.source_entries += len(src_listing.entries)
        out.source_errors += len(src_listing.errors)
        out.add(r)
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


def merge_outcomes(
    outcomes: Sequence[SegmentOutcome], *, dry_run: bool
) -> tuple[SyncResult, list[str], int, int]:
    """Add up segment outcomes: ``(result, keys to delete, source entries, source errors)``."""
    result = SyncResult(dry_run=dry_run)
    to_delete: list[str] = []
    source_entries = source_errors = 0
    for o in outcomes:
        result.add(o)
        to_delete.extend(o.to_delete)
        source_entries += o.source_entries
        source_errors += o.source_errors
    result.transferred.sort()
    result.skipped_links.sort()
    return result, sorted(set(to_delete)), source_entries, source_errors


def finish_deletes(
    result: SyncResult,
    src: Storage,
    dst: Storage,
    to_delete: list[str],
    *,
    source_entries: int,
    source_errors: int,
    allow_empty_source: bool,
    max_delete: int | None,
    delete_chunks: Callable[[list[list[str]]], list[list[tuple[str, str]]]],
    chunk: int = 10_000,
) -> None:
    """Decide, then run, the deletions of a segmented sync, once every segment is done.

    ``delete_chunks`` deletes lists of keys (here or as Dask tasks) and returns the failures.
    Keys at or below a source link that was not followed (``result.skipped_links``, from
    every segment: a linked directory and its destination copy may be in different ones)
    are never deleted.
    """
    to_delete = spare_links(to_delete, result.skipped_links)
    if not to_delete:
        return
    result.delete_suppressed_reason = delete_refusal(
        src,
        dst,
        len(to_delete),
        source_entries=source_entries,
        source_errors=source_errors,
        failed=len(result.failed),
        allow_empty_source=allow_empty_source,
        max_delete=max_delete,
    )
    result.delete_suppressed = result.delete_suppressed_reason is not None
    if result.delete_suppressed:
        return
    if result.dry_run:
        result.deleted = list(to_delete)
        return
    if not isinstance(dst, ReadWriteStorage):
        raise InvalidArgument(f"{dst!r} is read-only and cannot be a sync destination")
    to_delete, spared = spare_written(dst, to_delete, result.transferred)
    result.skipped_keys.extend(spared)
    chunks = [to_delete[i : i + chunk] for i in range(0, len(to_delete), chunk)]
    failures = [f for part in delete_chunks(chunks) for f in part]
    failed_keys = {k for k, _ in failures}
    result.deleted = [k for k in to_delete if k not in failed_keys]
    result.failed.extend(failures)


def sync_in_segments(
    src: Storage,
    dst: Storage,
    rules: FilterRules,
    source_listing: SyncListing,
    options: RunOptions,
    *,
    delete: bool,
    allow_empty_source: bool,
    max_delete: int | None,
) -> SyncResult:
    """The single-machine engine on a huge source: one segment after another.

    The source was listed whole; each segment's part of it is compared with that segment's
    destination listing, so the peak is the source listing plus the largest segment.
    """
    entries = len(source_listing.entries)
    refuse_folded_source(dst, source_listing.entries.paths())
    # Coarse segments: each one is a listing request at least, and one machine gains nothing
    # from thousands of them (tens of thousands of entries each is small enough).
    batches_wanted = max(1, entries // SEGMENT_ENTRIES)
    batches = plan_segments(src, dst, workers=batches_wanted, target_segments=4 * batches_wanted)
    outcomes = [
        run_segments(src, dst, batch, rules, options, source_listing=source_listing)
        for batch in batches
    ]
    result, to_delete, covered, _ = merge_outcomes(outcomes, dry_run=options.dry_run)
    # The slices carry no listing errors: those of the whole source count once.
    result.scan_errors[:0] = source_listing.errors
    result.skipped_keys[:0] = source_listing.skipped
    result.skipped_links[:0] = source_listing.links_skipped
    source_errors = len(source_listing.errors)
    if covered != entries:
        # The tree changed between listing and planning (a directory vanished or appeared).
        result.scan_errors.append(
            ("", f"{entries - covered} source entries fell outside every segment; run again")
        )
        source_errors += 1
    finish_deletes(
        result,
        src,
        dst,
        to_delete if delete else [],
        source_entries=entries,
        source_errors=source_errors,
        allow_empty_source=allow_empty_source,
        max_delete=max_delete,
        delete_chunks=lambda chunks: [delete_keys(_writable(dst), chunk) for chunk in chunks],
    )
    return result


def _writable(storage: Storage) -> ReadWriteStorage:
    """``storage``, which :func:`finish_deletes` has already checked to be writable."""
    if not isinstance(storage, ReadWriteStorage):
        raise InvalidArgument(f"{storage!r} is read-only and cannot be a sync destination")
    return storage
