"""The ``hashsync`` command line.

Exit codes: 0 everything succeeded, 1 failure (bad arguments, a failed check), 2 some files
were skipped or could not be read.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import hashsync
from hashsync import errors
from hashsync._progress import SyncDisplay, byte_progress, shown
from hashsync._redact import redact
from hashsync._units import format_size, parse_duration, parse_size
from hashsync.errors import describe

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_PARTIAL = 2
# A progress bar only pays off when hashing takes a noticeable time.
PROGRESS_MIN_BYTES = 256 * 1024**2


def _size_arg(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _count_arg(text: str, minimum: int, maximum: int = 2**31 - 1) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if n < minimum:
        raise argparse.ArgumentTypeError(f"must be at least {minimum}, not {n}")
    if n > maximum:
        raise argparse.ArgumentTypeError(f"must be at most {maximum}, not {n}")
    return n


def _threads_arg(text: str) -> int:
    return _count_arg(text, 1, 4096)


def _limit_arg(text: str) -> int:
    return _count_arg(text, 0)


def _err(message: str) -> None:
    print(f"hashsync: {shown(redact(message))}", file=sys.stderr)


def _total_size(paths: Sequence[str]) -> int:
    total = 0
    for p in paths:
        try:
            total += os.stat(p).st_size
        except OSError:
            pass
    return total


def _hash_stdin(args: argparse.Namespace) -> str:
    h = hashsync.Hasher(args.algorithm, part_size=args.part_size)
    while chunk := sys.stdin.buffer.read(1 << 20):
        h.update(chunk)
    return h.hexdigest()


def _hash_paths(args: argparse.Namespace, paths: list[str]) -> list[str | Exception]:
    files = [p for p in paths if p != "-"]
    show = not args.no_progress and _total_size(files) >= PROGRESS_MIN_BYTES
    with byte_progress("hashing", enabled=show) as progress:
        results = hashsync.hash_files(
            files,
            args.algorithm,
            part_size=args.part_size,
            threads=args.threads,
            progress=progress,
            return_exceptions=True,
        )
    out: list[str | Exception] = []
    it = iter(results)
    for p in paths:
        out.append(_hash_stdin(args) if p == "-" else next(it))
    return out


def _parse_check_file(path: str) -> list[tuple[str, str]]:
    raw = sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
    # File names are bytes on POSIX; undecodable ones survive as surrogate escapes.
    text = raw.decode("utf-8", "surrogateescape")
    entries = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        digest, sep, name = line.partition(" ")
        if not sep or not name:
            raise errors.InvalidArgument(f"{path}:{lineno}: expected 'DIGEST  PATH', got {line!r}")
        # md5sum writes "digest  path" (text) or "digest *path" (binary).
        name = name[1:] if name[:1] in (" ", "*") else name
        if "\x00" in name:
            raise errors.InvalidArgument(f"{path}:{lineno}: the path contains a NUL byte")
        if not digest or any(c not in "0123456789abcdefABCDEF-" for c in digest):
            raise errors.InvalidArgument(f"{path}:{lineno}: {digest!r} is not a hexadecimal digest")
        entries.append((digest.lower(), name))
    return entries


def _cmd_check(args: argparse.Namespace) -> int:
    entries = _parse_check_file(args.check)  # errors end in main(), with --json too
    paths = [name for _, name in entries]
    if args.algorithm == "etag":
        # Stored ETags may come from any tool; infer each one's part size.
        results: list[str | Exception] = []
        for want, name in entries:
            try:
                ok = hashsync.etag_matches(name, want, part_sizes=[args.part_size])
                results.append(want if ok else "")
            except Exception as e:  # noqa: BLE001 - reported per file below
                results.append(e)
    else:
        results = _hash_paths(args, paths)
    failed = unreadable = 0
    report = []
    for (want, name), got in zip(entries, results, strict=True):
        if isinstance(got, Exception):
            unreadable += 1
            status = "UNREADABLE"
            _err(describe(got))
        elif got == want:
            status = "OK"
        else:
            failed += 1
            status = "FAILED"
        report.append({"path": name, "status": status})
        if not args.json and (status != "OK" or not args.quiet):
            print(f"{shown(name)}: {status}")
    if args.json:
        json.dump(report, sys.stdout, indent=2)
        print()
    if failed:
        _err(f"WARNING: {failed} computed checksum{'s' * (failed != 1)} did NOT match")
    if unreadable:
        _err(f"WARNING: {unreadable} listed file{'s' * (unreadable != 1)} could not be read")
    if failed:
        return EXIT_FAILURE
    return EXIT_PARTIAL if unreadable else EXIT_OK


def _cmd_hash(args: argparse.Namespace) -> int:
    if args.check:
        return _cmd_check(args)
    if not args.files:
        _err("hash: give at least one FILE (or '-' for standard input), or --check FILE")
        return EXIT_FAILURE
    results = _hash_paths(args, args.files)
    bad = 0
    rows = []
    for path, got in zip(args.files, results, strict=True):
        if isinstance(got, Exception):
            bad += 1
            _err(describe(got))
            rows.append({"path": path, "error": describe(got)})
            continue
        rows.append({"path": path, "algorithm": args.algorithm, "digest": got})
        if not args.json:
            print(f"{got}  {shown(path)}")
    if args.json:
        json.dump(rows, sys.stdout, indent=2)
        print()
    if bad:
        return EXIT_PARTIAL if bad < len(args.files) else EXIT_FAILURE
    return EXIT_OK


class _FilterAction(argparse.Action):
    """Collects --include/--exclude into one ordered list, as `aws s3 sync` applies them."""

    def __call__(self, parser, namespace, values, option_string=None):  # noqa: D102
        rules = list(getattr(namespace, self.dest, None) or [])
        rules.append((self.const, values))
        setattr(namespace, self.dest, rules)


def _add_filter_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--exclude",
        dest="filters",
        action=_FilterAction,
        const="exclude",
        metavar="PATTERN",
        help="exclude paths matching PATTERN (shell glob on the relative path; '*' matches '/')",
    )
    p.add_argument(
        "--include",
        dest="filters",
        action=_FilterAction,
        const="include",
        metavar="PATTERN",
        help="don't exclude paths matching PATTERN; later --include/--exclude take precedence",
    )


def _add_side_args(p: argparse.ArgumentParser, json_help: str) -> None:
    """Options `diff` and `sync` share: endpoint, comparison, filters, state, output."""
    p.add_argument("--endpoint-url", metavar="URL", help="S3 endpoint (else $AWS_ENDPOINT_URL)")
    p.add_argument(
        "--compare",
        choices=["checksum", "size-mtime", "size"],
        default="checksum",
        help="checksum (default): by content; size-mtime: the aws s3 sync rule; size: size only",
    )
    _add_filter_args(p)
    p.add_argument("--no-state", action="store_true", help="don't use the hash state cache")
    p.add_argument("--json", action="store_true", help=json_help)
    p.add_argument("--no-progress", action="store_true", help="never show a progress bar")


def _open_sides(args: argparse.Namespace) -> tuple[Any, Any]:
    from hashsync.engine import resolve_storage

    endpoint = getattr(args, "endpoint_url", None)
    src = resolve_storage(args.source, role="source", endpoint_url=endpoint)
    dst = resolve_storage(args.destination, role="destination", endpoint_url=endpoint)
    if getattr(args, "no_state", False):
        for side in (src, dst):
            if hasattr(side, "hash_state"):  # the filesystem storages
                side.hash_state = False
    return src, dst


def _cmd_diff(args: argparse.Namespace) -> int:
    from hashsync.engine import plan_sync

    src_store, dst_store = _open_sides(args)
    with byte_progress("checking", enabled=not args.no_progress) as progress:
        plan, src, dst = plan_sync(
            src_store, dst_store, rules=args.filters or [], compare=args.compare, progress=progress
        )
    errors_seen = src.errors + dst.errors
    for path, why in errors_seen:
        _err(f"{path}: {why}")
    dst_paths = set(_paths(dst.entries))
    copy = plan.copy
    if args.json:
        json.dump(
            {
                "copy": [{"path": p, "new": p not in dst_paths} for p in copy],
                "delete": plan.delete,
                "unchanged": plan.unchanged,
                "copy_bytes": plan.copy_bytes,
                "errors": [{"path": p, "reason": r} for p, r in errors_seen],
            },
            sys.stdout,
            indent=2,
        )
        print()
    else:
        for p in copy:
            print(f"{'~' if p in dst_paths else '+'} {shown(p)}")
        for p in plan.delete:
            print(f"- {shown(p)}")
        reused = sum(getattr(x.entries, "stats", {}).get("digests_reused", 0) for x in (src, dst))
        print(
            f"{len(copy)} to copy ({format_size(plan.copy_bytes)}), {len(plan.delete)} only in "
            f"destination, {plan.unchanged} unchanged"
            + (f"; {reused} digests reused from the hash state cache" if reused else ""),
            file=sys.stderr,
        )
    if errors_seen:
        return EXIT_PARTIAL
    return EXIT_FAILURE if args.exit_code and plan else EXIT_OK


def _paths(listing: Any) -> list[str]:
    if hasattr(listing, "paths"):
        return listing.paths()
    return [e.path for e in listing]


def _cmd_sync(args: argparse.Namespace) -> int:
    import hashsync.engine as engine

    src, dst = _open_sides(args)
    display = SyncDisplay(
        enabled=not args.no_progress and not args.json, verbose=args.verbose, dry_run=args.dryrun
    )
    phase = {"transfer": False}

    def progress(done: int, total: int) -> None:
        if phase["transfer"]:
            display.bytes(done, total)
        else:
            display.hashing(done, total)

    def on_event(event: engine.TransferEvent) -> None:
        display.event(event.action, event.key, event.error)

    def on_plan(plan: hashsync.Plan) -> None:
        phase["transfer"] = True
        display.transferring(len(plan.copy))

    with display:
        result = engine.sync(
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
        )

    for path, why in result.scan_errors:
        _err(f"skipped {path}: {why}")
    for key, why in result.skipped_keys:
        _err(f"skipped {key}: {why}")
    if args.json:
        json.dump(result.to_dict(), sys.stdout, indent=2)
        print()
    else:
        action = engine._action(src, dst)
        if args.dryrun:
            for key in result.transferred:
                print(f"(dryrun) {action}: {shown(key)}")
            for key in result.deleted:
                print(f"(dryrun) delete: {shown(key)}")
        verb = "would transfer" if args.dryrun else "transferred"
        print(
            f"{verb} {len(result.transferred)} files ({format_size(result.bytes_transferred)}), "
            f"{'would delete' if args.dryrun else 'deleted'} {len(result.deleted)}, "
            f"{result.skipped} unchanged, {len(result.failed)} failed in {result.seconds:.2f} s",
            file=sys.stderr,
        )
    if result.delete_suppressed:
        _err(f"deleted nothing: {result.delete_suppressed_reason}")
    return EXIT_OK if result.ok else EXIT_PARTIAL


def _duration_arg(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _cmd_cleanup(args: argparse.Namespace) -> int:
    from hashsync.storage import S3Storage, open_storage

    options = {"endpoint_url": args.endpoint_url} if args.endpoint_url else {}
    store = open_storage(args.url, **options) if "://" in args.url else None
    if not isinstance(store, S3Storage):
        raise errors.InvalidArgument(f"cleanup: {args.url!r} is not an s3://bucket/prefix URL")
    stale = store.abort_incomplete_uploads(older_than=args.older_than, dry_run=True)
    not_aborted = []
    if not args.dryrun:
        aborted = store.abort_incomplete_uploads(older_than=args.older_than)
        done = {u.upload_id for u in aborted}
        not_aborted = [u for u in stale if u.upload_id not in done]
        stale = aborted
    for u in not_aborted:
        _err(f"could not abort {u.key} (upload {u.upload_id}): the store does not know it")
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


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``hashsync`` command (exposed for docs and tests)."""
    parser = _Parser(
        prog="hashsync",
        description="Keep files in step across local disk, S3 and HTTP, deciding by content.",
        epilog="Exit codes: 0 ok, 1 failure, 2 some files skipped or failed.",
    )
    parser.add_argument("--version", action="version", version=f"hashsync {hashsync.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    h = sub.add_parser(
        "hash",
        help="print or check file digests (like md5sum / sha256sum)",
        description=(
            "Print 'DIGEST  PATH' for each FILE, like md5sum, hashing files in parallel. "
            "With --check, verify a list in that format."
        ),
        epilog=(
            "Algorithms: " + ", ".join(hashsync.ALGORITHMS) + ". 'etag' is the S3 ETag for "
            "--part-size parts (objects of at least one part are multipart); with --check, "
            "ETags made with any common part size are accepted."
        ),
    )
    h.add_argument("files", nargs="*", metavar="FILE", help="files to hash; '-' reads stdin")
    h.add_argument(
        "-a",
        "--algorithm",
        default="sha256",
        choices=hashsync.ALGORITHMS,
        help="digest algorithm (default: sha256)",
    )
    h.add_argument(
        "--part-size",
        type=_size_arg,
        default=hashsync.DEFAULT_PART_SIZE,
        metavar="SIZE",
        help="S3 part size for --algorithm etag, e.g. 8MiB (default: 8MiB)",
    )
    h.add_argument(
        "--threads",
        type=_threads_arg,
        default=None,
        metavar="N",
        help="hashing threads (default: $HASHSYNC_THREADS or the CPU count)",
    )
    h.add_argument(
        "-c",
        "--check",
        metavar="FILE",
        help="read 'DIGEST  PATH' lines from FILE ('-' for stdin) and verify them",
    )
    h.add_argument("--quiet", action="store_true", help="with --check, print only failures")
    h.add_argument("--json", action="store_true", help="print JSON instead of text")
    h.add_argument("--no-progress", action="store_true", help="never show a progress bar")
    h.set_defaults(func=_cmd_hash)

    d = sub.add_parser(
        "diff",
        help="show what a sync from SRC to DST would copy and delete",
        description=(
            "Compare two directory trees by content. Prints '+ PATH' (only in SRC), "
            "'~ PATH' (changed) and '- PATH' (only in DST), then a summary on stderr. Digests "
            "come from the hash state cache when the files have not changed since last time."
        ),
    )
    d.add_argument("source", metavar="SRC", help="local directory or s3://bucket/prefix")
    d.add_argument("destination", metavar="DST", help="local directory or s3://bucket/prefix")
    _add_side_args(d, "print the plan as JSON")
    d.add_argument(
        "--exit-code", action="store_true", help="exit with 1 if there are differences (like git)"
    )
    d.set_defaults(func=_cmd_diff)

    y = sub.add_parser(
        "sync",
        help="make DST hold what SRC holds, deciding by content",
        description=(
            "Copy new and changed files from SRC to DST (local directories, s3://bucket/prefix, "
            "http(s)://; S3 to S3 copies server-side). Unlike aws s3 sync, a file whose content "
            "changed is copied even if its size is the same and its mtime older. Local digests "
            "come from the hash state cache; S3 digests from the listing (ETags)."
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
        type=_limit_arg,
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
    _add_side_args(y, "print the result as JSON")
    y.add_argument(
        "--workers",
        type=_threads_arg,
        default=None,
        metavar="N",
        help="files transferred at once (default: $HASHSYNC_NUM_WORKERS or 16)",
    )
    y.add_argument("-v", "--verbose", action="store_true", help="print a line per transfer")
    y.set_defaults(func=_cmd_sync, follow_symlinks=False)

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
        type=_duration_arg,
        default=24 * 3600.0,
        metavar="AGE",
        help="only uploads started more than AGE ago, e.g. 30m, 24h, 7d, 0 (default: 24h)",
    )
    c.add_argument("--dryrun", "--dry-run", action="store_true", help="only list them")
    c.add_argument("--endpoint-url", metavar="URL", help="S3 endpoint (else $AWS_ENDPOINT_URL)")
    c.add_argument("--json", action="store_true", help="print the result as JSON")
    c.set_defaults(func=_cmd_cleanup)

    b = sub.add_parser(
        "bench",
        help="compare hashsync with aws s3 sync and s5cmd on a local S3 server",
        description=(
            "Start a SeaweedFS server on 127.0.0.1, generate a tree and time six sync scenarios "
            "with hashsync, aws s3 sync and s5cmd; write a markdown table, JSON and a chart."
        ),
        add_help=False,
    )
    b.add_argument("options", nargs="*", help="see hashsync bench --help")
    return parser


_json_requested = False


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors exit 1, not 2 (2 means "some files skipped").

    With ``--json`` on the command line a usage error also prints a JSON error object.
    """

    def error(self, message: str) -> NoReturn:  # noqa: D102
        message = redact(message)
        if _json_requested:
            _print_json_error("UsageError", f"{self.prog}: {message}")
        self.print_usage(sys.stderr)
        self.exit(EXIT_FAILURE, f"{self.prog}: error: {shown(message)}\n")


def _print_json_error(kind: str, message: str) -> None:
    json.dump({"error": {"type": kind, "message": message}}, sys.stdout, indent=2)
    print()


def _fatal(exc: BaseException, as_json: bool) -> int:
    message = describe(exc)
    _err(message)
    if as_json:
        _print_json_error(type(exc).__name__, message)
    return EXIT_FAILURE


def _show_warning(message, category, filename, lineno, file=None, line=None):
    # A worked-around problem is one line for a user, not a source location and code line.
    if issubclass(category, errors.HashsyncWarning):
        _err(f"warning: {message}")
    else:
        _default_showwarning(message, category, filename, lineno, file, line)


_default_showwarning = warnings.showwarning


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the CLI and returns its exit code."""
    global _json_requested
    warnings.showwarning = _show_warning
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:
        # The benchmark has its own options (argparse cannot pass "--help" through).
        from hashsync.testing.benchmark import main as bench_main

        return bench_main(argv[1:])
    _json_requested = "--json" in argv
    parser = build_parser()
    args = parser.parse_args(argv)
    as_json = bool(getattr(args, "json", False))
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        _err("interrupted")
        return 130
    except BrokenPipeError:
        # `hashsync hash ... | head` closes the pipe early; that is not an error.
        with contextlib.suppress(OSError):
            sys.stderr.close()
        return EXIT_OK
    except (errors.HashsyncError, OSError) as e:
        return _fatal(e, as_json)
    except Exception as e:  # noqa: BLE001 - the last line of defence: no input ends in a traceback
        if os.environ.get("HASHSYNC_DEBUG"):
            raise
        code = _fatal(e, as_json)
        _err(
            f"internal error ({type(e).__name__}); rerun with HASHSYNC_DEBUG=1 for a traceback "
            "and please report it"
        )
        return code
