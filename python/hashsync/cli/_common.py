"""What the command groups share: exit codes, argument types, filters, error lines."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any

from hashsync._progress import shown
from hashsync._redact import redact
from hashsync._units import parse_duration, parse_size

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_PARTIAL = 2
# A progress bar only pays off when hashing takes a noticeable time.
PROGRESS_MIN_BYTES = 256 * 1024**2


def size_arg(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def count_arg(text: str, minimum: int, maximum: int = 2**31 - 1) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if n < minimum:
        raise argparse.ArgumentTypeError(f"must be at least {minimum}, not {n}")
    if n > maximum:
        raise argparse.ArgumentTypeError(f"must be at most {maximum}, not {n}")
    return n


def threads_arg(text: str) -> int:
    return count_arg(text, 1, 4096)


def limit_arg(text: str) -> int:
    return count_arg(text, 0)


def err(message: str) -> None:
    print(f"hashsync: {shown(redact(message))}", file=sys.stderr)


def total_size(paths: Sequence[str]) -> int:
    total = 0
    for p in paths:
        try:
            total += os.stat(p).st_size
        except OSError:
            pass
    return total


class FilterAction(argparse.Action):
    """Collects --include/--exclude into one ordered list, as `aws s3 sync` applies them."""

    def __call__(self, parser, namespace, values, option_string=None):  # noqa: D102
        rules = list(getattr(namespace, self.dest, None) or [])
        rules.append((self.const, values))
        setattr(namespace, self.dest, rules)


class FilterFileAction(argparse.Action):
    """``--exclude-from FILE`` / ``--include-from FILE``: each pattern of FILE, in place."""

    def __call__(self, parser, namespace, values, option_string=None):  # noqa: D102
        from hashsync.errors import HashsyncError, describe
        from hashsync.syncing.rules import read_pattern_file

        try:
            patterns = read_pattern_file(values)
        except (HashsyncError, OSError) as exc:
            raise argparse.ArgumentError(self, describe(exc)) from None
        rules = list(getattr(namespace, self.dest, None) or [])
        rules.extend((self.const, pattern) for pattern in patterns)
        setattr(namespace, self.dest, rules)


def add_filter_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--exclude",
        dest="filters",
        action=FilterAction,
        const="exclude",
        metavar="PATTERN",
        help="exclude paths matching PATTERN (shell glob on the relative path; '*' matches '/')",
    )
    p.add_argument(
        "--include",
        dest="filters",
        action=FilterAction,
        const="include",
        metavar="PATTERN",
        help="don't exclude paths matching PATTERN; later --include/--exclude take precedence",
    )
    p.add_argument(
        "--exclude-from",
        dest="filters",
        action=FilterFileAction,
        const="exclude",
        metavar="FILE",
        help="--exclude each pattern of FILE (one a line; blank lines and lines starting with "
        "'#' or ';' skipped), in place among the other filters",
    )
    p.add_argument(
        "--include-from",
        dest="filters",
        action=FilterFileAction,
        const="include",
        metavar="FILE",
        help="--include each pattern of FILE (as --exclude-from)",
    )


def add_store_args(p: argparse.ArgumentParser) -> None:
    """How the stores are reached: endpoint, profile, unsigned requests, requester pays."""
    p.add_argument("--endpoint-url", metavar="URL", help="S3 endpoint (else $AWS_ENDPOINT_URL)")
    p.add_argument("--profile", metavar="NAME", help="AWS profile of the s3:// sides")
    p.add_argument(
        "--no-sign-request",
        action="store_true",
        help="send no credentials (public buckets; s3:// and gs://)",
    )
    p.add_argument(
        "--request-payer",
        choices=["requester"],
        help="confirm that you pay for the requests to a requester-pays S3 bucket",
    )


def store_options(args: argparse.Namespace) -> dict[str, Any]:
    """The storage options of :func:`add_store_args`' flags (for the s3:// sides)."""
    options: dict[str, Any] = {}
    if getattr(args, "profile", None):
        options["profile_name"] = args.profile
    if getattr(args, "no_sign_request", False):
        options["anonymous"] = True
    if getattr(args, "request_payer", None):
        options["request_payer"] = args.request_payer
    return options


def add_upload_args(p: argparse.ArgumentParser) -> None:
    """The upload options of ``aws s3 cp`` / ``aws s3 sync``, by the same names."""
    g = p.add_argument_group("upload options (s3:// destinations, as aws s3 sync names them)")
    g.add_argument("--content-type", metavar="TYPE", help="Content-Type of every upload")
    g.add_argument(
        "--no-guess-mime-type",
        dest="guess_mime_type",
        action="store_false",
        help="don't guess Content-Type from file names (default: guessed, as aws does)",
    )
    g.add_argument("--cache-control", metavar="VALUE", help="Cache-Control of every upload")
    g.add_argument("--content-encoding", metavar="VALUE", help="Content-Encoding of every upload")
    g.add_argument(
        "--metadata",
        metavar="KEY=VALUE,...",
        help="user metadata (x-amz-meta-*), KEY=VALUE pairs or a JSON object",
    )
    g.add_argument("--storage-class", metavar="CLASS", help="STANDARD, STANDARD_IA, GLACIER, ...")
    g.add_argument("--sse", choices=["AES256", "aws:kms"], help="server-side encryption")
    g.add_argument("--sse-kms-key-id", metavar="KEY", help="the KMS key of --sse aws:kms")
    g.add_argument("--acl", metavar="ACL", help="a canned ACL, e.g. bucket-owner-full-control")


def upload_options(args: argparse.Namespace) -> Any:
    """The :class:`~hashsync.storage.upload_options.UploadOptions` of the upload flags, or None."""
    from hashsync.storage.upload_options import UploadOptions, parse_metadata

    given = {
        "content_type": args.content_type,
        "cache_control": args.cache_control,
        "content_encoding": args.content_encoding,
        "storage_class": args.storage_class,
        "sse": args.sse,
        "sse_kms_key_id": args.sse_kms_key_id,
        "acl": args.acl,
    }
    options = {k: v for k, v in given.items() if v is not None}
    if args.metadata:
        options["metadata"] = parse_metadata(args.metadata)
    if not args.guess_mime_type:
        options["guess_mime_type"] = False
    return UploadOptions(**options) if options else None


def add_side_args(p: argparse.ArgumentParser, json_help: str) -> None:
    """Options `diff` and `sync` share: stores, comparison, filters, state, output."""
    add_store_args(p)
    p.add_argument(
        "--compare",
        choices=["checksum", "size-mtime", "size"],
        default="checksum",
        help="checksum (default): by content; size-mtime: the aws s3 sync rule; size: size only",
    )
    add_filter_args(p)
    p.add_argument(
        "--no-follow-symlinks",
        dest="follow_symlinks",
        action="store_false",
        help="skip symbolic links in a local SRC instead of syncing what they point to; "
        "skipped links are reported and their DST copies are never deleted",
    )
    p.add_argument("--no-state", action="store_true", help="don't use the hash state cache")
    p.add_argument("--json", action="store_true", help=json_help)
    p.add_argument("--no-progress", action="store_true", help="never show a progress bar")


def open_sides(args: argparse.Namespace) -> tuple[Any, Any]:
    from hashsync.syncing.single import resolve_storage

    endpoint = getattr(args, "endpoint_url", None)
    options = store_options(args)
    src = resolve_storage(
        args.source, role="source", endpoint_url=endpoint, storage_options=options
    )
    src = src.with_symlinks_followed(getattr(args, "follow_symlinks", True))
    upload = upload_options(args) if hasattr(args, "content_type") else None
    dst = resolve_storage(
        args.destination,
        role="destination",
        endpoint_url=endpoint,
        storage_options={**options, **({"upload": upload} if upload is not None else {})},
    )
    dst = dst.with_symlinks_followed(False)
    if getattr(args, "no_state", False):
        for side in (src, dst):
            if hasattr(side, "hash_state"):  # the filesystem storages
                side.hash_state = False
    return src, dst


def duration_arg(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
