"""Checking downloaded data against what its store says it is: one helper for every reader.

S3, HTTP, the hub client and the caches all end a download the same way: the bytes in a
temporary file must have the announced size and match whichever digests the store gave. What a
store gives differs (hashsync's CRC64NVME metadata, an MD5 ETag, a multipart ``-N`` ETag of any
part size, ``Content-MD5``, a hub manifest's ``sha256:<hex>``), so :func:`verify_file` takes
them all and checks each one that is given.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable, Sequence

import hashsync
from hashsync.errors import IntegrityError, InvalidArgument

__all__ = [
    "content_matches_etag",
    "content_matches_hash",
    "is_content_etag",
    "parse_digest",
    "verify_file",
]

# An ETag that is an MD5 of the content (single part) or of the part MD5s ("-N").
_MD5_ETAG = re.compile(r"^[0-9a-f]{32}(-[0-9]+)?$")


def is_content_etag(etag: str) -> bool:
    """Whether ``etag`` (unquoted, lowercase) is MD5-based and so says something about content.

    ETags of objects encrypted with SSE-KMS/SSE-C, or made up by a server, are not.
    """
    return _MD5_ETAG.match(etag) is not None


def content_matches_etag(
    path: str | os.PathLike[str], etag: str, *, part_sizes: Sequence[int] = ()
) -> bool:
    """Whether the file's content is what the MD5-based S3 ``etag`` names.

    A multipart ETag is tried with each of ``part_sizes``, then with the part sizes inferred
    from its ``-N``. An ETag that is not MD5-based (see :func:`is_content_etag`) never matches.
    """
    return is_content_etag(etag) and _etag_ok(path, etag, part_sizes, None, None)


def content_matches_hash(
    path: str | os.PathLike[str], value: str, *, part_sizes: Sequence[int] = ()
) -> bool:
    """Whether the file's content is what a storage's hash ``value`` names.

    ``value`` is what :meth:`Storage.get_hash` returns: an S3 ETag (see
    :func:`content_matches_etag`) or an ``"<algorithm>:<hex>"`` digest (a hub's
    ``"sha256:<hex>"``). Anything else never matches.
    """
    if ":" not in value:
        return content_matches_etag(path, value, part_sizes=part_sizes)
    try:
        algorithm, want = parse_digest(value)
    except InvalidArgument:
        return False
    return hashsync.hash_file(path, algorithm) == want


def parse_digest(value: str) -> tuple[str, str]:
    """Split a ``"<algorithm>:<hex>"`` digest (a hub manifest's ``hash``) into its parts.

    Raises:
        InvalidArgument: Not of that form, or an algorithm hashsync does not know.
    """
    algorithm, sep, hexdigest = value.partition(":")
    algorithm = algorithm.strip().lower()
    if not sep or not hexdigest or algorithm not in hashsync.ALGORITHMS or algorithm == "etag":
        raise InvalidArgument(f"not an '<algorithm>:<hex>' digest: {value!r}")
    return algorithm, hexdigest.strip().lower()


def verify_file(
    path: str | os.PathLike[str],
    *,
    what: str,
    size: int | None = None,
    digest: str | None = None,
    crc64nvme: str | None = None,
    md5: str | None = None,
    etag: str | None = None,
    part_sizes: Sequence[int] = (),
    more_part_sizes: Callable[[], Sequence[int]] | None = None,
    data: bytes | None = None,
) -> None:
    """Check that a file holds what its store announced; every check given must pass.

    Args:
        path: The file (a download's temporary, before it is renamed into place).
        what: How to name the data in an error, e.g. ``"GET s3://b/k"``.
        size: The expected size in bytes.
        digest: ``"<algorithm>:<hex>"``, e.g. ``"sha256:9f86..."``.
        crc64nvme: The whole-content CRC64NVME (hex).
        md5: The MD5 of the content (hex), e.g. from ``Content-MD5``.
        etag: An S3 ETag; ignored unless it is MD5-based. A multipart ETag is checked with
            each of ``part_sizes`` first, then with part-size inference from ``-N``, then
            with what ``more_part_sizes()`` returns (a costlier lookup, asked last).
        part_sizes: Part sizes to try first for a multipart ETag (e.g. recorded in metadata).
        more_part_sizes: Called only when nothing else matched.
        data: The file's content, if already in memory (saves reading it again).

    Raises:
        IntegrityError: A check failed; the message names which.
    """
    if size is not None:
        got = len(data) if data is not None else os.stat(path).st_size
        if got != size:
            raise IntegrityError(f"{what}: got {got} bytes, expected {size}")

    def hashed(algorithm: str) -> str:
        if data is not None:
            return hashsync.hash_bytes(data, algorithm)
        return hashsync.hash_file(path, algorithm)

    if digest is not None:
        algorithm, want = parse_digest(digest)
        if hashed(algorithm) != want:
            raise IntegrityError(f"{what}: data does not match its {algorithm} {want}")
    if crc64nvme is not None and hashed("crc64nvme") != crc64nvme.lower():
        raise IntegrityError(f"{what}: data does not match its CRC64NVME {crc64nvme}")
    if md5 is not None:
        got = (
            hashlib.md5(data, usedforsecurity=False).hexdigest()
            if data is not None
            else hashed("md5")
        )
        if got != md5.lower():
            raise IntegrityError(f"{what}: data does not match its MD5 {md5}")
    if (
        etag is not None
        and is_content_etag(etag)
        and not _etag_ok(path, etag, part_sizes, more_part_sizes, data)
    ):
        raise IntegrityError(f"{what}: data does not match its ETag {etag}")


def _etag_ok(
    path: str | os.PathLike[str],
    etag: str,
    part_sizes: Sequence[int],
    more_part_sizes: Callable[[], Sequence[int]] | None,
    data: bytes | None,
) -> bool:
    if "-" not in etag:
        if data is not None:
            return hashlib.md5(data, usedforsecurity=False).hexdigest() == etag
        return hashsync.hash_file(path, "md5") == etag
    for part_size in part_sizes:
        if hashsync.etag(path, part_size=part_size) == etag:
            return True
    if hashsync.etag_matches(path, etag):
        return True
    extra = list(more_part_sizes()) if more_part_sizes is not None else []
    return bool(extra) and hashsync.etag_matches(path, etag, part_sizes=extra)
