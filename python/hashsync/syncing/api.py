"""``hashsync.sync``: the entry point that checks the options and picks the runner.

The runners, bottom up: :mod:`~hashsync.syncing.single` syncs on this machine in one run;
:mod:`~hashsync.syncing.segmented` cuts a huge sync into segments and runs each with the single
runner; :mod:`~hashsync.syncing.on_dask` runs those segments as Dask tasks. Each imports only
the ones below it; this module is the only one that knows them all.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import hashsync
from hashsync.errors import InvalidArgument
from hashsync.storage.base import FilterRules, Storage
from hashsync.storage.upload_options import UploadOptions
from hashsync.syncing import segmented
from hashsync.syncing.result import SyncResult, TransferEvent
from hashsync.syncing.rules import check_overlap, make_rules
from hashsync.syncing.single import (
    Compare,
    RunOptions,
    default_workers,
    listing_options,
    resolve_storage,
    sync_storages,
)

__all__ = ["SEGMENTED_ABOVE", "sync"]

# Sources with more entries than this are synced segment by segment (syncing.segmented).
SEGMENTED_ABOVE = 1_000_000


def _segmented_above() -> int:
    value = os.environ.get("HASHSYNC_SEGMENTED_ABOVE", "")
    return int(value) if value.isdigit() else SEGMENTED_ABOVE


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
    upload: UploadOptions | None = None,
    storage_options: dict[str, Any] | None = None,
) -> SyncResult:
    """Makes ``destination`` hold the files of ``source``, deciding by content.

    Args:
        source: A local directory, ``s3://bucket/prefix``, ``gs://bucket/prefix``,
            ``http(s)://...`` or a Storage.
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
        workers: Files transferred at once (default ``HASHSYNC_NUM_WORKERS`` or 64).
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
            :mod:`hashsync.syncing.on_dask`). ``on_event`` and ``on_plan`` are not called then.
        on_segments: With ``scheduler``, called as tasks finish with ``(segments done,
            segments planned, bytes transferred so far)``.
        follow_symlinks: Follow the symbolic links of a local source, to files and to
            directories (loops are detected and reported), as ``aws s3 sync`` does: a link is
            synced as the file it points to, a dangling one is an error for its key (and so
            suppresses ``delete``). ``False`` skips them, lists them in
            ``SyncResult.skipped_links`` and never deletes their destination copies. Decided
            when the source is listed: an entry swapped for a link afterwards is not read.
            Links in a local destination are never followed (nothing is written through one).

        upload: What uploads to an ``s3://`` destination carry besides the content
            (content type, encryption, storage class, metadata, ACL: ``aws s3 sync``'s upload
            options); a destination given as a Storage takes them as its own ``upload=``.
        storage_options: Options of the ``s3://`` sides (``profile_name``, ``anonymous``,
            ``request_payer="requester"``, ...; ``anonymous`` applies to ``gs://`` too).

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
    if progress is not None and not isinstance(progress, bool) and not callable(progress):
        raise InvalidArgument(
            f"progress must be a callable progress(done, total), True or False, not {progress!r}"
        )
    rules = make_rules(include, exclude, filters)
    src = resolve_storage(
        source, role="source", endpoint_url=endpoint_url, storage_options=storage_options
    )
    src = src.with_symlinks_followed(follow_symlinks)
    dst_options = dict(storage_options or {})
    if upload is not None:
        dst_options["upload"] = upload
    dst = resolve_storage(
        destination, role="destination", endpoint_url=endpoint_url, storage_options=dst_options
    )
    dst = dst.with_symlinks_followed(False)
    workers = workers if workers is not None else default_workers()
    if workers < 1:
        raise InvalidArgument("workers must be at least 1")
    if max_delete is not None and max_delete < 0:
        raise InvalidArgument("max_delete must be at least 0")
    if compare not in ("checksum", "size-mtime", "size"):
        raise InvalidArgument(f"unknown comparison {compare!r}; valid: checksum, size-mtime, size")
    rules = check_overlap(src, dst, rules)
    with contextlib.ExitStack() as stack:
        if progress is True:
            from hashsync._progress import byte_progress

            progress = stack.enter_context(byte_progress("sync"))
        report = progress if callable(progress) else None
        if scheduler is not None:
            from hashsync.syncing.on_dask import sync_on_dask

            return sync_on_dask(
                src,
                dst,
                scheduler,
                rules=rules,
                delete=delete,
                dry_run=dry_run,
                compare=compare,
                workers=workers,
                progress=report,
                allow_empty_source=allow_empty_source,
                max_delete=max_delete,
                on_segment=on_segments,
            )
        return _run_here(
            src,
            dst,
            rules,
            RunOptions(
                dry_run=dry_run,
                compare=compare,
                workers=workers,
                progress=report,
                on_event=on_event,
                on_plan=on_plan,
            ),
            delete=delete,
            allow_empty_source=allow_empty_source,
            max_delete=max_delete,
        )


def _run_here(
    src: Storage,
    dst: Storage,
    rules: FilterRules,
    options: RunOptions,
    *,
    delete: bool,
    allow_empty_source: bool,
    max_delete: int | None,
) -> SyncResult:
    """The sync on this machine: in one run, or segment by segment for a huge source.

    A source of more than :data:`SEGMENTED_ABOVE` entries is synced segment by segment, so
    that the whole destination listing never sits in memory next to the whole source listing.
    """
    started = time.monotonic()
    source_listing = None
    if src.lists_by_level and dst.lists_by_level:
        source_listing = src.list_for_sync(
            rules,
            must_exist=True,
            reap_temporaries=not options.dry_run,
            **listing_options(src, dst, options.compare, options.progress),
        )
        if len(source_listing.entries) > _segmented_above():
            result = segmented.sync_in_segments(
                src,
                dst,
                rules,
                source_listing,
                options,
                delete=delete,
                allow_empty_source=allow_empty_source,
                max_delete=max_delete,
            )
            result.seconds = time.monotonic() - started
            return result
    return sync_storages(
        src,
        dst,
        rules,
        options,
        delete=delete,
        allow_empty_source=allow_empty_source,
        max_delete=max_delete,
        source_listing=source_listing,
    )
