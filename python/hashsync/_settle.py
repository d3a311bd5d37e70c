"""Second looks at files a checksum diff calls changed only because an ETag says too little.

A multipart ETag is the MD5 of the part MD5s, so it can be compared with a local file only by
hashing the file in the same parts. :func:`hashsync.diff` infers the part size, which fails for
another tool's unusual part size and always for parts of uneven sizes (legal in S3). Such a
file would count as changed on every diff, and a sync would copy it forever. For the few
entries where that happens (same size, multipart ETag), the store is asked, per object
(:func:`ask_store`):

1. its whole-content CRC64NVME (one HEAD), to compare with the local file's;
2. else the real part sizes (one ``HEAD ?partNumber=N`` per part), with which the local file's
   ETag is computed exactly and compared with the object's;
3. else, when the store tells neither, the ``aws s3 sync`` rule decides (same size, and the
   source not newer than the destination; :func:`by_size_and_mtime`), and a
   :class:`~hashsync.errors.HashsyncWarning` names the files compared that way.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from typing import Any, Literal

import hashsync
from hashsync.errors import HashsyncWarning
from hashsync.verify import multipart_etag

__all__ = ["ask_store", "by_size_and_mtime"]

# How many files a warning about the weaker comparison names before "and N more".
_NAMED = 5
_NS = 1_000_000_000

Answer = tuple[Literal["crc", "etag", "weak", "copy"], Any]


def ask_store(
    remote: Any, local_path: str | os.PathLike[str], key: str, etag: str, size: int
) -> Answer:
    """What the store can tell about ``key`` beyond its multipart ``etag``.

    Args:
        remote: The store (an :class:`~hashsync.storage.S3Storage`, or anything with its
            ``get_crc64nvme`` and, optionally, ``get_part_sizes``).
        local_path: The local file of the same key and size.
        key: The object's key.
        etag: The object's ETag as listed (requests about its parts are pinned to it).
        size: The object's size.

    Returns:
        ``("crc", hex)``: the object's CRC64NVME, to compare with the local file's (hashed
        by the caller, in one batch); ``("etag", same)``: whether the local file, hashed in
        the object's real parts, has its ETag; ``("weak", None)``: the store tells neither;
        ``("copy", None)``: its answer does not fit the object (copy it).

    Raises:
        HashsyncError: The store could not be asked (the object changed, is gone, the store
            is unreachable); the caller copies the file.
        OSError: The local file could not be read.
    """
    crc = remote.get_crc64nvme(key)
    if crc is not None:
        return "crc", crc
    lengths = remote.get_part_sizes(key, etag=etag)
    if lengths is None:
        return "weak", None
    if sum(lengths) != size:
        return "copy", None
    return "etag", multipart_etag(local_path, lengths) == etag


def by_size_and_mtime(
    pairs: Sequence[tuple[hashsync.FileEntry, hashsync.FileEntry]],
    remote: object,
    *,
    download: bool = False,
) -> set[str]:
    """The paths of ``(source, destination)`` entry pairs that the aws s3 sync rule keeps.

    Both entries of a pair have the same size (the caller's condition); a pair is unchanged
    unless the source is newer than the destination, in whole seconds (S3's Last-Modified
    has no more), or with ``download`` unless the local file is newer than the object (a
    download gives its file the object's mtime or the earlier one its uploader recorded; see
    ``hashsync.diff``). Warns, naming
    the files, that they were compared this way.
    """
    if not pairs:
        return set()
    names = ", ".join(e.path for e, _ in pairs[:_NAMED])
    more = f" and {len(pairs) - _NAMED} more" if len(pairs) > _NAMED else ""
    warnings.warn(
        f"{len(pairs)} files could not be compared with {remote!r} by content (multipart "
        "ETags of part sizes that cannot be inferred, which the store does not report, and "
        "no CRC64NVME); compared by size and modification time instead, as aws s3 sync "
        f"does: {names}{more}",
        HashsyncWarning,
        stacklevel=3,
    )
    if download:
        return {src.path for src, dst in pairs if dst.mtime_ns <= src.mtime_ns}
    return {src.path for src, dst in pairs if src.mtime_ns // _NS <= dst.mtime_ns // _NS}
