"""``hashsync cache ls|stats|clear|prune|verify``: look after the local caches."""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from typing import Any

from hashsync import errors
from hashsync._progress import shown
from hashsync._units import format_size
from hashsync.cli._common import EXIT_OK, EXIT_PARTIAL


def register(sub: Any) -> None:
    """Add the ``cache`` command group to the subcommands."""
    c = sub.add_parser(
        "cache",
        help="list, check and tidy the local caches",
        description=(
            "Look after hashsync's caches: the built-in 'default' and 'urls' caches under "
            "$HASHSYNC_CACHE_DIR/caches/, and the caches your config file names "
            "($HASHSYNC_CONFIG, default ~/.config/hashsync/config.yaml)."
        ),
    )
    actions = c.add_subparsers(dest="action", metavar="ACTION", required=True)
    helps = {
        "ls": "list entries with their sizes and last access, least recently used first",
        "stats": "files, bytes, budget, hits, misses and evictions",
        "clear": "remove every entry that is not pinned",
        "prune": "remove orphans, stray temporaries and entries over the budget",
        "verify": "re-hash entries (unchanged files are not re-read) and drop corrupt ones",
    }
    for action, text in helps.items():
        p = actions.add_parser(action, help=text, description=text[0].upper() + text[1:] + ".")
        p.add_argument("--name", metavar="N", help="the cache's name (default: the default cache)")
        p.add_argument("--json", action="store_true", help="print the result as JSON")
        if action == "verify":
            p.add_argument("--no-progress", action="store_true", help="never show a progress bar")
        p.set_defaults(func=_run)


def _open(name: str | None) -> Any:
    from hashsync.cache import get_cache

    cache = get_cache(name)
    return cache


def _when(ns: int) -> str:
    return datetime.datetime.fromtimestamp(ns / 1e9).strftime("%Y-%m-%d %H:%M:%S")


def _out(args: argparse.Namespace, data: Any, text: str) -> None:
    if args.json:
        json.dump(data, sys.stdout, indent=2)
        print()
    elif text:
        print(text)


def _run(args: argparse.Namespace) -> int:
    cache = _open(args.name)
    with cache:
        action = args.action
        if action == "stats":
            s = cache.stats()
            data = {
                "files": s.files,
                "bytes": s.bytes,
                "max_bytes": s.max_bytes,
                "hits": s.hits,
                "misses": s.misses,
                "evictions": s.evictions,
            }
            budget = "no budget" if s.max_bytes is None else f"of {format_size(s.max_bytes)}"
            _out(
                args,
                data,
                f"{s.files} files, {format_size(s.bytes)} {budget}; "
                f"{s.hits} hits, {s.misses} misses, {s.evictions} evictions",
            )
            return EXIT_OK
        if action == "clear":
            before = cache.stats()
            cache.clear()
            after = cache.stats()
            data = {"removed": before.files - after.files, "kept_pinned": after.files}
            _out(args, data, f"removed {data['removed']} entries")
            return EXIT_OK
        if not hasattr(cache, "prune"):
            raise errors.InvalidArgument(
                f"cache {args.name or 'default'!r} serves files in place and keeps no entries"
            )
        if action == "ls":
            rows = [
                {"key": e.key, "size": e.size, "last_access": _when(e.last_access)}
                for e in cache.entries()
            ]
            text = "\n".join(
                f"{format_size(r['size']):>10}  {r['last_access']}  {shown(r['key'])}" for r in rows
            )
            _out(args, rows, text)
            return EXIT_OK
        if action == "prune":
            report = cache.prune()
            data = {k: v for k, v in report.items()}
            _out(
                args,
                data,
                f"dropped {len(report['dropped'])} altered or missing entries, removed "
                f"{len(report['orphans'])} orphans, {len(report['temporaries'])} temporaries and "
                f"{report['objects']} unused copies, evicted {report['evicted']} over the budget",
            )
            return EXIT_OK
        from hashsync._progress import byte_progress

        with byte_progress("verifying", enabled=not args.no_progress) as bar:
            report = cache.verify(progress=bar)
        text = "\n".join(f"corrupt, removed: {shown(k)}" for k in report["corrupt"])
        text += ("\n" if text else "") + (
            f"checked {report['checked']} entries, {len(report['corrupt'])} corrupt"
        )
        _out(args, report, text)
        return EXIT_PARTIAL if report["corrupt"] else EXIT_OK
