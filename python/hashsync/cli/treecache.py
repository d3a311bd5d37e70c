"""``hashsync treecache status|pull|push|sync``: a built directory and its remote copy."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from hashsync._progress import shown
from hashsync._units import format_size
from hashsync.cli._common import EXIT_OK

_HELPS = {
    "status": "show both copies, derived-file differences and the build lease",
    "pull": "download the remote copy, or the derived files the remote has and this one lacks",
    "push": "upload the local copy, or the derived files only this one has",
    "sync": "sync derived files both ways (conflicting edits: the newer wins, the other is kept)",
}


def register(sub: Any) -> None:
    """Add the ``treecache`` command group to the subcommands."""
    t = sub.add_parser(
        "treecache",
        help="share a built directory through S3 under its input's content hash",
        description=(
            "A TreeCache is a local directory built from some input (a preprocessed dataset, "
            "an index) and stored at REMOTE/NAME-KEY/, where KEY is a content hash of the "
            "input. A manifest written last marks a complete remote copy; files added later "
            "(derived files) are synced both ways. LOCAL_DIR holds the content and the "
            "manifest only; this machine's bookkeeping of it lives under "
            "$HASHSYNC_CACHE_DIR/treecache/local/. In Python: hashsync.TreeCache(...).ensure("
            "build)."
        ),
    )
    actions = t.add_subparsers(dest="action", metavar="ACTION", required=True)
    for action, text in _HELPS.items():
        p = actions.add_parser(action, help=text, description=text[0].upper() + text[1:] + ".")
        p.add_argument("local_dir", metavar="LOCAL_DIR", help="the local directory")
        p.add_argument(
            "--remote",
            required=True,
            metavar="URL",
            help="where copies live, e.g. s3://b/caches or gs://b/caches",
        )
        p.add_argument("--name", required=True, metavar="N", help="what is cached, e.g. slipcache")
        key = p.add_mutually_exclusive_group(required=True)
        key.add_argument("--key", metavar="K", help="the content hash naming this copy")
        key.add_argument(
            "--source", metavar="DIR", help="compute the key as the tree_hash of DIR (the input)"
        )
        p.add_argument("--endpoint-url", metavar="URL", help="S3 endpoint (else AWS_ENDPOINT_URL)")
        p.add_argument("--json", action="store_true", help="print the result as JSON")
        if action != "status":
            p.add_argument("--no-progress", action="store_true", help="never show progress bars")
        p.set_defaults(func=_run)


def _open(args: argparse.Namespace) -> Any:
    from hashsync.treecache import TreeCache

    options: dict[str, Any] = {
        "name": args.name,
        "verbose": not getattr(args, "no_progress", False),
        "endpoint_url": args.endpoint_url,
    }
    if args.source is not None:
        return TreeCache.for_source(args.source, args.local_dir, args.remote, **options)
    return TreeCache(args.local_dir, args.remote, key=args.key, **options)


def _status_text(s: Any) -> str:
    lines = [f"local   {s.local:<11} {shown(s.local_dir)}"]
    remote = f"remote  {s.remote:<11} {shown(s.remote_url)}"
    if s.remote_error:
        remote += f" ({shown(s.remote_error)})"
    lines.append(remote)
    if s.tree_hash:
        lines.append(f"base    {s.files} files, {format_size(s.bytes)}, tree_hash {s.tree_hash}")
    for label, paths in (
        ("only here", s.derived_local_only),
        ("only remote", s.derived_remote_only),
        ("different", s.derived_different),
    ):
        if paths:
            shown_paths = ", ".join(shown(p) for p in paths[:5])
            more = f" and {len(paths) - 5} more" if len(paths) > 5 else ""
            lines.append(f"derived {label}: {shown_paths}{more}")
    if s.lease:
        who = f"process {s.lease.get('pid')} on {s.lease.get('host')}"
        lines.append(f"lease   held by {shown(who)} (someone is building or uploading)")
    return "\n".join(lines)


def _run(args: argparse.Namespace) -> int:
    cache = _open(args)
    if args.action == "status":
        status = cache.status()
        if args.json:
            json.dump(status.to_dict(), sys.stdout, indent=2)
            print()
        else:
            print(_status_text(status))
        return EXIT_OK
    downloaded = uploaded = 0
    if args.action == "pull":
        downloaded = cache.pull()
    elif args.action == "push":
        uploaded = cache.push()
    else:
        downloaded, uploaded = cache.sync(strict=True)
    if args.json:
        data = {
            "local_dir": str(cache.local_dir),
            "remote_url": cache.remote_url,
            "downloaded": downloaded,
            "uploaded": uploaded,
        }
        json.dump(data, sys.stdout, indent=2)
        print()
    else:
        print(f"{downloaded} downloaded, {uploaded} uploaded")
    return EXIT_OK
