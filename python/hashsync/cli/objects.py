"""``hashsync ls``, ``cp``, ``rm``, ``cat`` and ``presign``: single objects, like ``aws s3``.

URLs are taken literally after the bucket (``#``, ``?``, ``%`` are characters of keys), as by
``aws s3`` and ``S3Storage.from_url``. A missing object or bucket is one line on stderr and exit
code 1; nothing is written to stdout then.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import sys
from typing import Any

from hashsync import errors
from hashsync._progress import shown
from hashsync.cli._common import (
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_PARTIAL,
    add_store_args,
    add_upload_args,
    err,
    store_options,
)
from hashsync.storage.sink import Check, Fill, Sink

_REMOTE = ("s3", "gs")


def _split(url: str, what: str) -> tuple[str, str, str]:
    """``(scheme, bucket, rest)`` of ``s3://bucket/rest`` or ``gs://bucket/rest``."""
    scheme, sep, rest = url.partition("://")
    bucket, _, key = rest.partition("/")
    if not sep or scheme.lower() not in _REMOTE or not bucket:
        raise errors.InvalidArgument(f"{what} needs an s3://BUCKET/... or gs://BUCKET/... URL")
    return scheme.lower(), bucket, key


def _bucket(
    args: argparse.Namespace, scheme: str, bucket: str, directory: str = "", *, upload: Any = None
) -> Any:
    """The storage of a bucket (or a directory in it), opened with the command's options.

    As a sync opens its sides (:func:`~hashsync.syncing.single.resolve_storage`): every option
    for ``s3://``, ``--no-sign-request`` for ``gs://``, upload options refused there.
    """
    from hashsync.syncing.single import resolve_storage

    options = store_options(args)
    if upload is not None:
        options["upload"] = upload
    where = f"{scheme}://{bucket}/{directory}" if directory else f"{scheme}://{bucket}"
    return resolve_storage(
        where, role="source", endpoint_url=args.endpoint_url, storage_options=options
    )


def _stamp(when: datetime.datetime) -> str:
    return when.astimezone(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S")


# -- ls ---------------------------------------------------------------------------------------


def _cmd_ls(args: argparse.Namespace) -> int:
    from hashsync.storage.base import Segment

    scheme, bucket, prefix = _split(args.url, "ls")
    storage = _bucket(args, scheme, bucket)
    rows: list[dict[str, Any]] = []
    if args.recursive:
        for info in storage.list(prefix):
            rows.append({"key": info.key, "size": info.size, "modified": info.last_modified,
                         "hash": info.hash})  # fmt: skip
    else:
        # One level below the "directory" of the prefix, as aws s3 ls shows it: the prefix is
        # a string ("s3://b/da" shows PRE data/), the names relative to its directory.
        directory = prefix[: prefix.rfind("/") + 1]
        for sub in storage.list_level(directory)[1]:
            if sub.startswith(prefix):
                rows.append({"prefix": sub[len(directory) :]})
        for info in storage.list_segment(Segment(directory, shallow=True)):
            if info.key.startswith(prefix):
                rows.append({"key": info.key[len(directory) :], "size": info.size,
                             "modified": info.last_modified, "hash": info.hash})  # fmt: skip
    if args.json:
        out = [
            {**row, "modified": row["modified"].isoformat()} if "modified" in row else row
            for row in rows
        ]
        json.dump(out, sys.stdout, indent=2)
        print()
    else:
        for row in rows:
            if "prefix" in row:
                print(f"{'PRE':>30} {shown(row['prefix'])}")
            else:
                print(f"{_stamp(row['modified'])} {row['size']:>10} {shown(row['key'])}")
    # As aws s3 ls: nothing found is exit code 1.
    return EXIT_OK if rows else EXIT_FAILURE


# -- rm ---------------------------------------------------------------------------------------


def _cmd_rm(args: argparse.Namespace) -> int:
    scheme, bucket, key = _split(args.url, "rm")
    storage = _bucket(args, scheme, bucket)
    if not args.recursive:
        if not key or key.endswith("/"):
            raise errors.InvalidArgument(f"{args.url} names no object (use --recursive)")
        if args.dryrun:
            if not storage.exists(key):
                raise errors.NotFound(2, f"{args.url}: no such object")
            print(f"(dryrun) delete: {scheme}://{bucket}/{shown(key)}")
            return EXIT_OK
        storage.delete(key)
        if not args.json:
            print(f"delete: {scheme}://{bucket}/{shown(key)}")
        else:
            json.dump({"deleted": [key], "failed": []}, sys.stdout)
            print()
        return EXIT_OK
    # A directory, not a string prefix: "s3://b/logs" does not reach "logs2/" (aws's would).
    prefix = key if not key or key.endswith("/") else key + "/"
    keys = [info.key for info in storage.list(prefix)]
    if args.dryrun:
        for k in keys:
            print(f"(dryrun) delete: {scheme}://{bucket}/{shown(k)}")
        return EXIT_OK
    outcomes = storage.delete_many(keys)
    deleted = [k for k, o in zip(keys, outcomes, strict=True) if o is None]
    failed = [(k, errors.describe(o)) for k, o in zip(keys, outcomes, strict=True) if o]
    if args.json:
        json.dump({"deleted": deleted, "failed": [{"key": k, "reason": r} for k, r in failed]},
                  sys.stdout, indent=2)  # fmt: skip
        print()
    else:
        for k in deleted:
            print(f"delete: {scheme}://{bucket}/{shown(k)}")
    for k, why in failed:
        err(f"failed {k}: {why}")
    return EXIT_PARTIAL if failed else EXIT_OK


# -- cat --------------------------------------------------------------------------------------


def _cmd_cat(args: argparse.Namespace) -> int:
    from hashsync.storage.local import TemporaryLocalStorage

    scheme, bucket, key = _split(args.url, "cat")
    storage = _bucket(args, scheme, bucket)
    # Downloaded and verified first: stdout never gets bytes that fail the check.
    with TemporaryLocalStorage() as staging:
        storage.copy(key, staging)
        with open(staging.path(key), "rb") as fh:
            shutil.copyfileobj(fh, sys.stdout.buffer, 1 << 20)
        sys.stdout.buffer.flush()
    return EXIT_OK


# -- cp ---------------------------------------------------------------------------------------


class _Renamed(Sink):
    """A sink that publishes what it is given under another key (a copy to a new name)."""

    def __init__(self, target: Sink, key: str) -> None:
        self.target, self.key = target, key

    def receive(self, key: str, fill: Fill, *, check: Check | None = None) -> None:
        """Publish ``fill``'s file in the target under this sink's key."""
        self.target.receive(self.key, fill, check=check)


def _side(args: argparse.Namespace, text: str, role: str) -> tuple[Any, str, bool]:
    """``(storage of the parent directory, name in it, is_remote)`` of a cp argument."""
    from hashsync.storage import SimpleLocalStorage

    scheme, sep, _ = text.partition("://")
    if sep and scheme.lower() in _REMOTE:
        scheme, bucket, key = _split(text, "cp")
        directory, _, name = key.rpartition("/")
        upload = args.upload if role == "destination" else None
        return _bucket(args, scheme, bucket, directory, upload=upload), name, True
    if sep:
        raise errors.InvalidArgument(f"cp takes local paths, s3:// and gs:// URLs, not {text!r}")
    parent, name = os.path.split(os.path.abspath(text))
    return SimpleLocalStorage(parent, create=role == "destination"), name, False


def _names_a_directory(text: str) -> bool:
    """Whether a cp destination is a directory to copy into (keeping the source's name)."""
    if "://" in text:
        return text.endswith("/") or "/" not in text.partition("://")[2]
    return text.endswith(("/", os.sep)) or os.path.isdir(text)


def _cmd_cp(args: argparse.Namespace) -> int:
    from hashsync._progress import byte_counter, byte_progress
    from hashsync.cli._common import upload_options
    from hashsync.storage.base import reporting_progress

    args.upload = upload_options(args)
    if args.recursive:
        from hashsync.syncing import sync

        result = sync(
            args.source,
            args.destination,
            progress=not args.no_progress,
            endpoint_url=args.endpoint_url,
            upload=args.upload,
            storage_options=store_options(args) or None,
        )
        if args.json:
            json.dump(result.to_dict(), sys.stdout, indent=2)
            print()
        for key, why in result.failed:
            err(f"failed {key}: {why}")
        return EXIT_OK if result.ok else EXIT_PARTIAL
    src, name, src_remote = _side(args, args.source, "source")
    if not name:
        raise errors.InvalidArgument(f"{args.source} names no object or file (use --recursive)")
    dst_text = args.destination
    if _names_a_directory(dst_text):
        dst_text = dst_text.rstrip("/") + "/" + name
    dst, target, dst_remote = _side(args, dst_text, "destination")
    try:
        total = src.get_size(name)
    except errors.NotFound:
        raise errors.NotFound(2, f"{args.source}: no such object or file") from None
    with (
        byte_progress("copying", enabled=not args.no_progress) as bar,
        reporting_progress(byte_counter(bar, total)),
    ):
        _copy_one(src, name, src_remote, dst, target, dst_remote)
    size = dst.get_size(target)
    if dst_remote:
        action = "copy" if src_remote else "upload"
    else:
        action = "download" if src_remote else "copy"
    if args.json:
        json.dump({"action": action, "source": args.source, "destination": dst_text,
                   "bytes": size}, sys.stdout)  # fmt: skip
        print()
    else:
        print(f"{action}: {shown(args.source)} to {shown(dst_text)}")
    return EXIT_OK


def _copy_one(
    src: Any, name: str, src_remote: bool, dst: Any, target: str, dst_remote: bool
) -> None:
    """Copy ``src``'s ``name`` to ``dst``'s ``target``, verified and atomic."""
    from hashsync.storage.local import TemporaryLocalStorage, transfer_through_staging

    if dst_remote and target == name:
        dst.transfer_from(name, src)  # upload, or a server-side copy on the same store
    elif dst_remote:
        # Another name: the bytes pass through a local file of that name.
        with TemporaryLocalStorage() as staging:
            src.copy(name, _Renamed(staging, target))
            transfer_through_staging(dst, target, staging)
    else:
        src.copy(name, _Renamed(dst, target))


# -- presign ----------------------------------------------------------------------------------


def _cmd_presign(args: argparse.Namespace) -> int:
    scheme, bucket, key = _split(args.url, "presign")
    if scheme != "s3":
        raise errors.InvalidArgument("presign works for s3:// URLs (gs:// signed URLs: not yet)")
    storage = _bucket(args, scheme, bucket)
    print(storage.presign(key, expires_in=args.expires_in))
    return EXIT_OK


def register(sub: Any) -> None:
    """Add ``ls``, ``cp``, ``rm``, ``cat`` and ``presign`` to the ``hashsync`` parser."""
    ls = sub.add_parser(
        "ls",
        help="list objects and prefixes (like aws s3 ls)",
        description="List what is under s3://BUCKET/PREFIX or gs://BUCKET/PREFIX: one level "
        "('PRE name/' for prefixes, 'date time size name' for objects), or every object with "
        "--recursive. Exit code 1 when nothing matched, as aws s3 ls.",
    )
    ls.add_argument("url", metavar="URL")
    ls.add_argument("--recursive", "-r", action="store_true", help="every object below")
    ls.add_argument("--json", action="store_true", help="a JSON list of keys and prefixes")
    add_store_args(ls)
    ls.set_defaults(func=_cmd_ls)

    rm = sub.add_parser(
        "rm",
        help="delete an object, or everything under a prefix (like aws s3 rm)",
        description="Delete s3://BUCKET/KEY (a missing object is an error), or with "
        "--recursive every object under the directory URL/ (in batches of 1,000).",
    )
    rm.add_argument("url", metavar="URL")
    rm.add_argument("--recursive", "-r", action="store_true", help="everything under URL/")
    rm.add_argument("--dryrun", "--dry-run", action="store_true", help="only show the deletes")
    rm.add_argument("--json", action="store_true", help="print the result as JSON")
    add_store_args(rm)
    rm.set_defaults(func=_cmd_rm)

    cat = sub.add_parser(
        "cat",
        help="write an object to stdout, verified",
        description="Download URL, check it against its size and content hash, then write "
        "it to stdout; a check that fails writes nothing and exits 1.",
    )
    cat.add_argument("url", metavar="URL")
    add_store_args(cat)
    cat.set_defaults(func=_cmd_cat)

    cp = sub.add_parser(
        "cp",
        help="copy one file or object (like aws s3 cp), or a tree with --recursive",
        description="Copy SRC to DST: a local file to s3://BUCKET/KEY or gs://BUCKET/KEY, an "
        "object to a local path, or between buckets (server-side on the same store). A DST "
        "ending in '/' (or an existing directory) keeps SRC's name. Verified and atomic like "
        "sync; --recursive is a sync without delete.",
    )
    cp.add_argument("source", metavar="SRC")
    cp.add_argument("destination", metavar="DST")
    cp.add_argument("--recursive", "-r", action="store_true", help="a tree: sync without delete")
    cp.add_argument("--json", action="store_true", help="print the result as JSON")
    cp.add_argument("--no-progress", action="store_true", help="never show a progress bar")
    add_store_args(cp)
    add_upload_args(cp)
    cp.set_defaults(func=_cmd_cp)

    pre = sub.add_parser(
        "presign",
        help="print a URL that lets anyone download an object for a while",
        description="Sign a GET URL for s3://BUCKET/KEY locally (like aws s3 presign).",
    )
    pre.add_argument("url", metavar="URL")
    pre.add_argument(
        "--expires-in",
        type=int,
        default=3600,
        metavar="SECONDS",
        help="seconds the URL stays valid (default 3600, at most 604800)",
    )
    add_store_args(pre)
    pre.set_defaults(func=_cmd_presign)
