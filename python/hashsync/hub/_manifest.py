"""Dataset manifests: every file of a dataset with its size and whole-content SHA-256.

Shared by the hub server (which builds them with the Rust scan and the hash state cache, so an
unchanged dataset is not re-read) and the client (which checks downloads against them). Imports
nothing of the server's dependencies.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hashsync
from hashsync.errors import InvalidArgument

__all__ = ["Manifest", "ManifestEntry", "scan_dataset", "valid_dataset_name"]

#: The digest algorithm of manifest hashes (``"sha256:<hex>"``).
ALGORITHM = "sha256"

#: Limits of one ``POST /bundle`` request: paths, request body, and size of each file.
BUNDLE_MAX_FILES = 4096
BUNDLE_MAX_BODY = 4 * 1024 * 1024
BUNDLE_MAX_FILE_BYTES = 1024 * 1024


@dataclass(frozen=True)
class ManifestEntry:
    """One file of a dataset.

    Attributes:
        path: Relative path, ``/``-separated.
        size: Bytes.
        mtime_ns: Modification time on the server (ns), to notice an edit before the next scan.
        hash: ``"sha256:<hex>"`` of the whole content.
    """

    path: str
    size: int
    mtime_ns: int
    hash: str

    def public(self) -> dict[str, Any]:
        """The entry as the manifest's JSON shows it: the seed's fields, and ``mtime``.

        ``mtime`` (seconds since the epoch, as ``os.stat``) is an addition: a hub storage
        lists it as the file's last-modified time (clients of the seed ignore it).
        """
        return {
            "path": self.path,
            "size": self.size,
            "hash": self.hash,
            "mtime": self.mtime_ns / 1_000_000_000,
        }


@dataclass
class Manifest:
    """A dataset's files, as one scan saw them.

    Attributes:
        entries: By path.
        errors: ``(path, reason)`` for files that could not be read or hashed (left out).
        stats: The scan's counters (``digests_computed``, ``digests_reused``, ...).
    """

    entries: dict[str, ManifestEntry]
    errors: list[tuple[str, str]] = field(default_factory=list)
    stats: dict[str, int] = field(default_factory=dict)

    def body(self) -> bytes:
        """The JSON list served at ``/manifest/{dataset}``, sorted by path."""
        items = [self.entries[p].public() for p in sorted(self.entries)]
        return json.dumps(items, separators=(",", ":")).encode()

    def etag(self) -> str:
        """A strong ETag of :meth:`body` and of how many files were left out (quoted)."""
        digest = hashlib.sha256(self.body())
        digest.update(b"unreadable:%d" % len(self.errors))
        return '"' + digest.hexdigest()[:40] + '"'


def valid_dataset_name(name: str) -> bool:
    """Whether ``name`` can name a dataset: one path component, not hidden, no separators."""
    return (
        bool(name)
        and name not in (".", "..")
        and not name.startswith(".")
        and "/" not in name
        and "\\" not in name
        and "\0" not in name
    )


def scan_dataset(directory: Path, *, state_dir: str | os.PathLike[str] | None = None) -> Manifest:
    """Scan ``directory`` (one dataset) into a manifest.

    Symbolic links are not followed (a link inside a dataset is never served), hashsync's own
    temporaries are left out, and the hash state cache means only new or changed files are
    read.
    """
    if not directory.is_dir() or directory.is_symlink():
        raise InvalidArgument(f"{directory} is not a dataset directory")
    listing = hashsync.scan(directory, algorithm=ALGORITHM, state_dir=state_dir)
    entries = {
        e.path: ManifestEntry(e.path, e.size, e.mtime_ns, f"{ALGORITHM}:{e.digest}")
        for e in listing
        if e.digest is not None
    }
    return Manifest(entries, list(listing.errors), dict(listing.stats))
