"""The ``hashsync`` command line: one module per command group.

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
from typing import NoReturn

import hashsync
from hashsync import errors
from hashsync._progress import shown
from hashsync._redact import redact
from hashsync.cli import cache as cache_commands
from hashsync.cli import hash as hash_commands
from hashsync.cli import objects as object_commands
from hashsync.cli import serve as serve_commands
from hashsync.cli import sync as sync_commands
from hashsync.cli import treecache as treecache_commands
from hashsync.cli._common import EXIT_FAILURE, EXIT_OK, EXIT_PARTIAL, err
from hashsync.errors import describe

__all__ = ["EXIT_FAILURE", "EXIT_OK", "EXIT_PARTIAL", "build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``hashsync`` command (exposed for docs and tests)."""
    parser = _Parser(
        prog="hashsync",
        description="Keep files in step across local disk, S3, GCS and HTTP, deciding by content.",
        epilog="Exit codes: 0 ok, 1 failure, 2 some files skipped or failed.",
    )
    parser.add_argument("--version", action="version", version=f"hashsync {hashsync.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    hash_commands.register(sub)
    sync_commands.register(sub)
    object_commands.register(sub)
    cache_commands.register(sub)
    serve_commands.register(sub)
    treecache_commands.register(sub)

    b = sub.add_parser(
        "bench",
        help="compare hashsync with aws s3 sync, s5cmd and rclone on a local S3 server",
        description=(
            "Start a SeaweedFS server on 127.0.0.1, generate trees and time sync scenarios "
            "(loopback, 20 ms RTT through a delay proxy, big files) with hashsync, aws s3 sync, "
            "s5cmd and rclone; write a markdown table, JSON and a chart."
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
    err(message)
    if as_json:
        _print_json_error(type(exc).__name__, message)
    return EXIT_FAILURE


def _show_warning(message, category, filename, lineno, file=None, line=None):
    # A worked-around problem is one line for a user, not a source location and code line.
    if issubclass(category, errors.HashsyncWarning):
        err(f"warning: {message}")
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
        err("interrupted")
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
        err(
            f"internal error ({type(e).__name__}); rerun with HASHSYNC_DEBUG=1 for a traceback "
            "and please report it"
        )
        return code
