"""``hashsync hash``: print or check digests, like md5sum."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import hashsync
from hashsync import errors
from hashsync._progress import byte_progress, shown
from hashsync.cli._common import (
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_PARTIAL,
    PROGRESS_MIN_BYTES,
    err,
    size_arg,
    threads_arg,
    total_size,
)
from hashsync.errors import describe


def _hash_stdin(args: argparse.Namespace) -> str:
    h = hashsync.Hasher(args.algorithm, part_size=args.part_size)
    while chunk := sys.stdin.buffer.read(1 << 20):
        h.update(chunk)
    return h.hexdigest()


def _hash_paths(args: argparse.Namespace, paths: list[str]) -> list[str | Exception]:
    files = [p for p in paths if p != "-"]
    show = not args.no_progress and total_size(files) >= PROGRESS_MIN_BYTES
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
            err(describe(got))
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
        err(f"WARNING: {failed} computed checksum{'s' * (failed != 1)} did NOT match")
    if unreadable:
        err(f"WARNING: {unreadable} listed file{'s' * (unreadable != 1)} could not be read")
    if failed:
        return EXIT_FAILURE
    return EXIT_PARTIAL if unreadable else EXIT_OK


def _cmd_hash(args: argparse.Namespace) -> int:
    if args.check:
        return _cmd_check(args)
    if not args.files:
        err("hash: give at least one FILE (or '-' for standard input), or --check FILE")
        return EXIT_FAILURE
    results = _hash_paths(args, args.files)
    bad = 0
    rows = []
    for path, got in zip(args.files, results, strict=True):
        if isinstance(got, Exception):
            bad += 1
            err(describe(got))
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


def register(sub: Any) -> None:
    """Add ``hash`` to the subcommands."""
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
        type=size_arg,
        default=hashsync.DEFAULT_PART_SIZE,
        metavar="SIZE",
        help="S3 part size for --algorithm etag, e.g. 8MiB (default: 8MiB)",
    )
    h.add_argument(
        "--threads",
        type=threads_arg,
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
