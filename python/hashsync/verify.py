"""Checking downloaded data against what its store says it is: one helper for every reader.

S3, HTTP, the hub client and the caches all end a download the same way: the bytes in a
temporary file must have the announced size and match whichever digests the store gave. What a
store gives differs (hashsync's CRC64NVME metadata, an MD5 ETag, a multipart ``-N`` ETag of any
part size, ``Content-MD5``, a hub manifest's ``sha256:<hex>``), so :func:`verify_file` takes
them all and checks each one that is given.

A multipart ETag made with uneven parts (any sizes are legal) cannot be matched by inferring
one part size; a reader that can learn the real part sizes (S3's ``HEAD ?partNumber=N``) passes
them as ``part_lengths`` and the ETag is then checked exactly. Where they cannot be learned
either, nothing can verify the data: it is accepted with a :class:`HashsyncWarning` that says so,
rather than refused on every attempt (the size is still checked).
"""

from __future__ import annotations

import hashlib
import os
import re
import warnings
from collections.abc import Callable, Sequence

import hashsync
from hashsync.errors import HashsyncWarning, IntegrityError, InvalidArgument

__all__ = [
    "content_matches_etag",
    "content_matches_hash",
    "is_content_etag",
    "multipart_etag",
    "parse_digest",
    "verify_file",
]

# An ETag that is an MD5 of the content (single part) or of the part MD5s ("-N").
_MD5_ETAG = re.compile(r"^[0-9a-f]{32}(-[0-9]+)?$")
# Reads of a part for its MD5: large enough that hashlib hashes without the GIL most of the time.
_READ_CHUNK = 8 * 1024**2


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


def multipart_etag(
    path: str | os.PathLike[str], part_lengths: Sequence[int], *, data: bytes | None = None
) -> str:
    """The S3 ETag of content uploaded in parts of exactly ``part_lengths`` bytes, in order.

    Unlike :func:`hashsync.etag`, the parts need not share one size (S3 allows any sizes from
    5 MiB, the last one smaller). A file shorter than the parts add up to gets the ETag of what
    it holds, which then does not match; the caller compares the total with the file's size.

    Args:
        path: The file.
        part_lengths: The size of each part, in order.
        data: The file's content, if already in memory (then ``path`` is not read).

    Returns:
        ``"<md5 of the part MD5s>-<number of parts>"``, without quotes.
    """
    digests = []
    if data is not None:
        view = memoryview(data)
        offset = 0
        for length in part_lengths:
            part = view[offset : offset + length]
            digests.append(hashlib.md5(part, usedforsecurity=False).digest())
            offset += length
    else:
        with open(path, "rb", buffering=0) as fh:
            for length in part_lengths:
                md5 = hashlib.md5(usedforsecurity=False)
                left = length
                while left > 0:
                    chunk = fh.read(min(left, _READ_CHUNK))
                    if not chunk:
                        break
                    md5.update(chunk)
                    left -= len(chunk)
                digests.append(md5.digest())
    joined = hashlib.md5(b"".join(digests), usedforsecurity=False).hexdigest()
    return f"{joined}-{len(digests)}"


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
    part_lengths: Callable[[], Sequence[int] | None] | None = None,
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
        part_lengths: Called only when even ``more_part_sizes`` did not match: the exact size
            of each part of a multipart ETag, in order (uneven parts, as the store reports
            them), or None if they cannot be learned. Lengths as many as the ETag's ``-N``
            settle the check either way: the ETag they give must match. Without usable
            lengths the ETag cannot be checked at all: the data passes (the other checks
            still apply), with a :class:`HashsyncWarning` that it is not verified unless
            ``digest``, ``crc64nvme`` or ``md5`` vouched for it. Without this argument, an
            ETag that no part size matches fails.
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
        got_md5 = (
            hashlib.md5(data, usedforsecurity=False).hexdigest()
            if data is not None
            else hashed("md5")
        )
        if got_md5 != md5.lower():
            raise IntegrityError(f"{what}: data does not match its MD5 {md5}")
    if (
        etag is not None
        and is_content_etag(etag)
        and not _etag_ok(path, etag, part_sizes, more_part_sizes, data)
    ):
        if part_lengths is None or "-" not in etag:
            raise IntegrityError(f"{what}: data does not match its ETag {etag}")
        # Any content digest given has passed above: then an unusable ETag costs no warning.
        vouched = digest is not None or crc64nvme is not None or md5 is not None
        _check_part_lengths(path, what, etag, part_lengths(), data, warn=not vouched)


def _check_part_lengths(
    path: str | os.PathLike[str],
    what: str,
    etag: str,
    lengths: Sequence[int] | None,
    data: bytes | None,
    *,
    warn: bool,
) -> None:
    """The last word on a multipart ETag no single part size matched: check it part by part."""
    count = int(etag.rpartition("-")[2])
    if lengths is None or len(lengths) != count or count == 0:
        # Nothing can tell right data from wrong here, and refusing would make the object
        # unreachable on every attempt although it is most likely fine (aws s3 sync does not
        # check it at all): keep it, and say plainly that it was not verified.
        if warn:
            warnings.warn(
                f"{what}: not verified: its ETag {etag} is of {count} parts whose sizes cannot "
                "be inferred and are not reported by the store, and no checksum stands in for "
                "it; the data is kept as received",
                HashsyncWarning,
                stacklevel=3,
            )
        return
    got = len(data) if data is not None else os.stat(path).st_size
    total = sum(lengths)
    if total != got:
        raise IntegrityError(
            f"{what}: data does not match its ETag {etag}: got {got} bytes, its {count} parts "
            f"hold {total}"
        )
    if multipart_etag(path, lengths, data=data) != etag:
        shown = ", ".join(str(n) for n in lengths[:5]) + (", ..." if count > 5 else "")
        raise IntegrityError(
            f"{what}: data does not match its ETag {etag} (checked with the store's part "
            f"sizes {shown})"
        )


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
