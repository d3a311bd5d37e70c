"""``hashsync sync``, ``diff`` and ``cleanup``: moving trees, previewing, tidying S3."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import hashsync
from hashsync import errors
from hashsync._progress import SyncDisplay, byte_progress, shown
from hashsync._units import format_size
from hashsync.cli._common import (
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_PARTIAL,
    add_side_args,
    add_upload_args,
    duration_arg,
    err,
    limit_arg,
    open_sides,
    threads_arg,
)


def _cmd_diff(args: argparse.Namespace) -> int:
    from hashsync.syncing.folded import refuse_collisions
    from hashsync.syncing.single import (
        default_workers,
        plan_sync,
        settle_other_digests,
        settle_unmatched_etags,
        spare_links,
    )

    src_store, dst_store = open_sides(args)
    with byte_progress("checking", enabled=not args.no_progress) as progress:
        plan, src, dst = plan_sync(
            src_store, dst_store, rules=args.filters or [], compare=args.compare, progress=progress
        )
    errors_seen = src.errors + dst.errors
    for path, why in errors_seen:
        err(f"{path}: {why}")
    dst_paths = set(dst.entries.paths())
    to_copy = plan.copy_entries()
    settled = 0
    if args.compare == "checksum" and to_copy:
        # What a sync would find unchanged after asking the store (uneven multipart parts,
        # encrypted objects) or hashing the local file another way (GCS composite objects).
        to_copy, settled = settle_unmatched_etags(
            src_store, dst_store, to_copy, dst, default_workers()
        )
        to_copy, more = settle_other_digests(src_store, dst_store, to_copy, dst)
        settled += more
    folding = dst.folding
    if folding:
        to_copy, refused, protected = refuse_collisions(
            to_copy, src.entries.paths(), folding, repr(dst_store)
        )
        for path, why in refused:
            err(f"{path}: {why}")
        errors_seen = errors_seen + refused
    copy = [e.path for e in to_copy]
    copy_bytes = sum(e.size for e in to_copy)
    # What lies at or below a link the source skipped is not "only in the destination".
    only_in_dst = spare_links(plan.delete, src.links_skipped)
    if folding:
        only_in_dst = [p for p in only_in_dst if folding.fold(p) not in protected]
    if args.json:
        json.dump(
            {
                "copy": [{"path": p, "new": p not in dst_paths} for p in copy],
                "delete": only_in_dst,
                "unchanged": plan.unchanged + settled,
                "copy_bytes": copy_bytes,
                "errors": [{"path": p, "reason": r} for p, r in errors_seen],
                "skipped_links": src.links_skipped,
            },
            sys.stdout,
            indent=2,
        )
        print()
    else:
        for p in copy:
            print(f"{'~' if p in dst_paths else '+'} {shown(p)}")
        for p in only_in_dst:
            print(f"- {shown(p)}")
        reused = sum(x.entries.stats["digests_reused"] for x in (src, dst))
        print(
            f"{len(copy)} to copy ({format_size(copy_bytes)}), {len(only_in_dst)} only in "
            f"destination, {plan.unchanged + settled} unchanged"
            + _links_note(src.links_skipped)
            + (f"; {reused} digests reused from the hash state cache" if reused else ""),
            file=sys.stderr,
        )
    if errors_seen:
        return EXIT_PARTIAL
    return EXIT_FAILURE if args.exit_code and (copy or only_in_dst) else EXIT_OK


def _links_note(links: list[str]) -> str:
    if not links:
        return ""
    return f", {len(links)} symbolic link{'s' * (len(links) != 1)} skipped"


def _cmd_sync(args: argparse.Namespace) -> int:
    from hashsync.syncing import TransferEvent, sync
    from hashsync.syncing.single import action_name

    src, dst = open_sides(args)
    # The bar is drawn on stderr, so it can accompany --json; per-file lines then go to stderr
    # too, keeping stdout one JSON document.
    display = SyncDisplay(
        enabled=not args.no_progress,
        verbose=args.verbose,
        dry_run=args.dryrun,
        lines_to_stderr=args.json,
    )
    phase = {"transfer": False}
    reported: set[str] = set()

    def progress(done: int, total: int) -> None:
        if phase["transfer"]:
            display.bytes(done, total)
        else:
            display.hashing(done, total)

    def on_event(event: TransferEvent) -> None:
        if event.error is not None:
            reported.add(event.key)
        display.event(event.action, event.key, event.error)

    def on_plan(plan: hashsync.Plan) -> None:
        phase["transfer"] = True
        display.transferring(len(plan.copy))

    with display:
        result = sync(
            src,
            dst,
            delete=args.delete,
            dry_run=args.dryrun,
            filters=args.filters or None,
            compare=args.compare,
            workers=args.workers,
            progress=progress,
            on_event=on_event,
            on_plan=on_plan,
            allow_empty_source=args.allow_empty_source,
            max_delete=args.max_delete,
            scheduler=args.scheduler,
            on_segments=display.segments if args.scheduler else None,
            follow_symlinks=args.follow_symlinks,
        )

    if args.scheduler and args.verbose and not args.dryrun:
        # Tasks report per segment, not per file: the lines come once they are all done.
        action = action_name(src, dst)
        for key in result.transferred:
            display.line(f"{action}: {shown(key)}")
        for key in result.deleted:
            display.line(f"delete: {shown(key)}")
    for path, why in result.scan_errors:
        err(f"skipped {path}: {why}")
    # Refused before any transfer (a conflict, an unreadable destination entry), or in a
    # dry run: no event said so.
    for key, why in result.failed:
        if key not in reported:
            err(f"failed {key}: {why}")
    for key, why in result.skipped_keys:
        err(f"skipped {key}: {why}")
    if args.verbose:
        for link in result.skipped_links:
            err(f"skipped {link}: a symbolic link (--no-follow-symlinks)")
    if args.json:
        json.dump(result.to_dict(), sys.stdout, indent=2)
        print()
    else:
        action = action_name(src, dst)
        if args.dryrun:
            for key in result.transferred:
                print(f"(dryrun) {action}: {shown(key)}")
            for key in result.deleted:
                print(f"(dryrun) delete: {shown(key)}")
        verb = "would transfer" if args.dryrun else "transferred"
        print(
            f"{verb} {len(result.transferred)} files ({format_size(result.bytes_transferred)}), "
            f"{'would delete' if args.dryrun else 'deleted'} {len(result.deleted)}, "
            f"{result.skipped} unchanged, {len(result.failed)} failed"
            + _links_note(result.skipped_links)
            + f" in {result.seconds:.2f} s",
            file=sys.stderr,
        )
    if result.delete_suppressed:
        err(f"deleted nothing: {result.delete_suppressed_reason}")
    return EXIT_OK if result.ok else EXIT_PARTIAL


def _cmd_cleanup(args: argparse.Namespace) -> int:
    from hashsync.storage import S3Storage, open_storage

    options = {"endpoint_url": args.endpoint_url} if args.endpoint_url else {}
    store = open_storage(args.url, **options) if "://" in args.url else None
    if not isinstance(store, S3Storage):
        raise errors.InvalidArgument(f"cleanup: {args.url!r} is not an s3://bucket/prefix URL")
    stale = store.abort_incomplete_uploads(older_than=args.older_than, dry_run=True)
    not_aborted = []
    if not args.dryrun:
        outcome = [(u, store.abort_upload(u)) for u in stale]
        not_aborted = [u for u, ok in outcome if not ok]
        stale = [u for u, ok in outcome if ok]
    for u in not_aborted:
        err(f"could not abort {u.key} (upload {u.upload_id}): the store does not know it")
    if args.json:
        rows = [
            {"key": u.key, "upload_id": u.upload_id, "initiated": u.initiated.isoformat()}
            for u in stale
        ]
        json.dump(
            {"aborted": [] if args.dryrun else rows, "would_abort": rows if args.dryrun else []},
            sys.stdout,
            indent=2,
        )
        print()
    else:
        for u in stale:
            verb = "(dryrun) abort" if args.dryrun else "aborted"
            print(
                f"{verb}: {shown(u.key)} (upload {u.upload_id}, "
                f"started {u.initiated:%Y-%m-%d %H:%M:%S} UTC)"
            )
        print(
            f"{'would abort' if args.dryrun else 'aborted'} {len(stale)} incomplete multipart "
            f"upload{'s' * (len(stale) != 1)}",
            file=sys.stderr,
        )
    return EXIT_PARTIAL if not_aborted else EXIT_OK


def register(sub: Any) -> None:
    """Add ``diff``, ``sync`` and ``cleanup`` to the subcommands."""
    d = sub.add_parser(
        "diff",
        help="show what a sync from SRC to DST would copy and delete",
        description=(
            "Compare two directory trees by content. Prints '+ PATH' (only in SRC), "
            "'~ PATH' (changed) and '- PATH' (only in DST), then a summary on stderr. Digests "
            "come from the hash state cache when the files have not changed since last time."
        ),
    )
    d.add_argument(
        "source", metavar="SRC", help="local directory, s3://bucket/prefix or gs://bucket/prefix"
    )
    d.add_argument(
        "destination",
        metavar="DST",
        help="local directory, s3://bucket/prefix or gs://bucket/prefix",
    )
    add_side_args(d, "print the plan as JSON")
    d.add_argument(
        "--exit-code", action="store_true", help="exit with 1 if there are differences (like git)"
    )
    d.set_defaults(func=_cmd_diff)

    y = sub.add_parser(
        "sync",
        help="make DST hold what SRC holds, deciding by content",
        description=(
            "Copy new and changed files from SRC to DST (local directories, s3://bucket/prefix, "
            "gs://bucket/prefix (hashsync[gcs]; Google's Application Default Credentials, or "
            "STORAGE_EMULATOR_HOST), http(s)://, and as SRC hub://host:port/dataset with the "
            "key in HASHSYNC_HUB_API_KEY; S3 to S3 and GCS to GCS copy server-side). Unlike aws "
            "s3 sync, a file whose content changed is copied even if its size is the same and "
            "its mtime older. Local digests come from the hash state cache; S3 digests from the "
            "listing (ETags); GCS's too (MD5, and the local side is hashed the same way); a "
            "hub's from its manifest (SHA-256)."
        ),
        epilog="Exit codes: 0 ok, 1 failure, 2 some files failed or were skipped.",
    )
    y.add_argument("source", metavar="SRC")
    y.add_argument("destination", metavar="DST")
    y.add_argument(
        "--delete",
        action="store_true",
        help="delete DST files that SRC lacks (only after every transfer succeeded and every "
        "SRC entry was read)",
    )
    y.add_argument(
        "--max-delete",
        type=limit_arg,
        default=None,
        metavar="N",
        help="with --delete, delete nothing if more than N files would be deleted",
    )
    y.add_argument(
        "--allow-empty-source",
        action="store_true",
        help="with --delete, allow a SRC that lists no files (else refused: it would empty DST)",
    )
    y.add_argument("--dryrun", "--dry-run", action="store_true", help="show what would happen")
    add_side_args(y, "print the result as JSON")
    y.add_argument(
        "--workers",
        type=threads_arg,
        default=None,
        metavar="N",
        help="files transferred at once (default: $HASHSYNC_NUM_WORKERS or 64)",
    )
    y.add_argument(
        "--scheduler",
        metavar="ADDRESS|local:N",
        default=None,
        help="run sharded on Dask (needs hashsync[dask]): a scheduler address such as "
        "tcp://host:8786, or local:N for N local worker processes; the key space is cut into "
        "directory segments, one task each, with the same options, output and exit codes",
    )
    y.add_argument("-v", "--verbose", action="store_true", help="print a line per transfer")
    add_upload_args(y)
    y.set_defaults(func=_cmd_sync)

    c = sub.add_parser(
        "cleanup",
        help="abort incomplete multipart uploads under an S3 prefix (like rclone cleanup)",
        description=(
            "S3 keeps the parts of multipart uploads that were never completed (a killed "
            "process, a lost connection) and bills for them. This aborts those under URL that "
            "started more than --older-than ago. hashsync sync already resumes or aborts the "
            "ones its own killed runs on this machine left; this is for the rest."
        ),
    )
    c.add_argument("url", metavar="URL", help="s3://bucket/prefix")
    c.add_argument(
        "--older-than",
        type=duration_arg,
        default=24 * 3600.0,
        metavar="AGE",
        help="only uploads started more than AGE ago, e.g. 30m, 24h, 7d, 0 (default: 24h)",
    )
    c.add_argument("--dryrun", "--dry-run", action="store_true", help="only list them")
    c.add_argument("--endpoint-url", metavar="URL", help="S3 endpoint (else $AWS_ENDPOINT_URL)")
    c.add_argument("--json", action="store_true", help="print the result as JSON")
    c.set_defaults(func=_cmd_cleanup)
