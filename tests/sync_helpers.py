"""What the sync test modules share: trees on disk, S3 storages on the test server, the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from hashsync.storage import S3Storage
from refs import MIB

PART = 5 * MIB


def write_tree(root: Path, files: dict[str, bytes]) -> None:
    """Create ``root`` with ``files`` (relative path -> content)."""
    root.mkdir(parents=True, exist_ok=True)
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)


def s3(server, bucket, prefix="", **kw) -> S3Storage:
    """An S3Storage on the test server with 5 MiB parts and few retries."""
    options = {
        "endpoint_url": server.endpoint_url,
        "aws_access_key_id": server.access_key,
        "aws_secret_access_key": server.secret_key,
        "part_size": PART,
        "max_attempts": 2,
        **kw,
    }
    return S3Storage(bucket, prefix, **options)


def keys(storage) -> dict[str, str]:
    """Key -> hash of everything ``storage`` lists."""
    return {o.key: o.hash for o in storage.list()}


def cli(*args, env=None, timeout=120, prefix=()):
    """Run ``python -m hashsync ARGS`` (after ``prefix``, e.g. setpriv); capture its output."""
    return subprocess.run(
        [*prefix, sys.executable, "-m", "hashsync", *map(str, args)],
        capture_output=True,
        text=True,
        env=env if env is not None else dict(os.environ),
        timeout=timeout,
    )


def stderr_on_a_terminal(args: list[str], timeout: float = 120) -> tuple[str, str]:
    """Run ``python -m hashsync ARGS`` with stderr on a pseudo-terminal and stdout piped.

    Returns what was drawn on the terminal and what went to stdout.
    """
    import pty
    import threading

    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "hashsync", *args],
        stdout=subprocess.PIPE,
        stderr=slave,
        env={**os.environ, "COLUMNS": "120"},
    )
    os.close(slave)
    chunks: list[bytes] = []

    def drain() -> None:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    out, _ = proc.communicate(timeout=timeout)
    reader.join(timeout=10)
    os.close(master)
    return b"".join(chunks).decode(errors="replace"), out.decode()
