"""Dataset manifests: every file of a dataset with its size and whole-content SHA-256.

Shared by the hub server (which builds them with the Rust scan and the hash state cache, so an
unchanged dataset is not re-read) and the client (which checks downloads against them). Imports
nothing of the server's dependencies.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hashsync
from hashsync.errors import InvalidArgument

__all__ = ["Manifest", "ManifestEntry", "is_hidden", "scan_dataset", "valid_dataset_name"]

#: The digest algorithm of manifest hashes (``"sha256:<hex>"``).
ALGORITHM = "sha256"

#: Limits of one ``POST /bundle`` request: paths, request body, and size of each file.
BUNDLE_MAX_FILES = 4096
BUNDLE_MAX_BODY = 4 * 1024 * 1024
BUNDLE_MAX_FILE_BYTES = 1024 * 1024

#: Scan patterns (``aws s3 sync`` globs, ``*`` matching ``/``) of hidden paths: any path with a
#: component that starts with a dot (``.env``, ``.git/config``, ``a/.cache/x``).
HIDDEN_PATTERNS = (".*", "*/.*")


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
        return manifest_body(self.entries[p].public() for p in sorted(self.entries))

    def etag(self) -> str:
        """A strong ETag of :meth:`body` and of how many files were left out (quoted)."""
        return manifest_etag(self.body(), len(self.errors))


def manifest_body(items: Iterable[dict[str, Any]]) -> bytes:
    """The JSON list of manifest entries, encoded a few thousand at a time.

    The same bytes as ``json.dumps(list(items), separators=(",", ":"))`` without ever holding
    every entry as a dict at once (a dataset of 200,000 files would take a few hundred MB).
    """
    parts = [b"["]
    it = iter(items)
    first = True
    while chunk := list(itertools.islice(it, 4096)):
        text = json.dumps(chunk, separators=(",", ":"))[1:-1]
        parts.append(text.encode() if first else b"," + text.encode())
        first = False
    parts.append(b"]")
    return b"".join(parts)


def manifest_etag(body: bytes, unreadable: int) -> str:
    """A strong ETag (quoted) of a manifest body and of how many files were left out."""
    digest = hashlib.sha256(body)
    digest.update(b"unreadable:%d" % unreadable)
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


def is_hidden(path: str) -> bool:
    """Whether a relative path has a component that starts with a dot (see HIDDEN_PATTERNS)."""
    return any(part.startswith(".") for part in path.split("/"))


def scan_listing(
    directory: Path, *, state_dir: str | os.PathLike[str] | None = None, dotfiles: bool = False
) -> hashsync.Listing:
    """Scan ``directory`` (one dataset): the listing a manifest is made of.

    The scan is confined to the directory: it follows no symbolic link and hashes only the files
    its walk found there, whatever is renamed or replaced meanwhile (a directory swapped for a
    link to ``/etc`` mid-scan puts nothing of ``/etc`` in the manifest). hashsync's own
    temporaries are left out, and so are hidden paths (``.env``, ``.git/``) unless
    ``dotfiles``. The hash state cache means only new or changed files are read.

    Raises:
        InvalidArgument: ``directory`` is not a directory, or is a symbolic link.
    """
    if not directory.is_dir() or directory.is_symlink():
        raise InvalidArgument(f"{directory} is not a dataset directory")
    return hashsync.scan(
        directory,
        algorithm=ALGORITHM,
        state_dir=state_dir,
        confined=True,
        exclude=None if dotfiles else list(HIDDEN_PATTERNS),
    )


def scan_dataset(
    directory: Path, *, state_dir: str | os.PathLike[str] | None = None, dotfiles: bool = False
) -> Manifest:
    """Scan ``directory`` (one dataset) into a manifest (see :func:`scan_listing`)."""
    listing = scan_listing(directory, state_dir=state_dir, dotfiles=dotfiles)
    entries = {
        e.path: ManifestEntry(e.path, e.size, e.mtime_ns, f"{ALGORITHM}:{e.digest}")
        for e in listing
        if e.digest is not None
    }
    return Manifest(entries, list(listing.errors), dict(listing.stats))
