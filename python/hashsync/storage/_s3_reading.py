"""S3 reads: HEADs, listings, part sizes and verified downloads.

Listings are delimited and run in parallel by subtree; small objects come with one GET,
large ones with ranged GETs pinned to one version (``If-Match``), in parallel.
"""

from __future__ import annotations

import builtins
import datetime
import errno
import functools
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hashsync._retry import wait_before_retry
from hashsync._threads import run_on_threads
from hashsync.errors import (
    IntegrityError,
    PreconditionFailed,
    StorageUnavailable,
)
from hashsync.storage import _s3list
from hashsync.storage._mtime import stamp
from hashsync.storage._s3_base import (
    CLAIMS_DIR,
    CRC64_METADATA,
    MAX_PART,
    MIN_PART,
    PART_SIZE_METADATA,
    clean_etag,
    head_fields,
    native_crc64,
    part_span,
    quoted_etag,
)
from hashsync.storage._s3_ops import S3Requests
from hashsync.storage.base import (
    ByteCallback,
    ObjectInfo,
    Segment,
    current_progress,
    exact_ns,
    validate_key,
    validate_prefix,
)
from hashsync.storage.sink import Sink, as_sink
from hashsync.verify import verify_file


class S3Reading(S3Requests):
    """Reading, listing and downloading (part of :class:`~hashsync.storage.S3Storage`)."""

    def get_size(self, key: str) -> int:
        """Return the object's size.

        Raises:
            NotFound: No object has this key.
        """
        return int(self._head(key)["ContentLength"])

    def get_hash(self, key: str) -> str:
        """Return the object's ETag, without quotes.

        Raises:
            NotFound: No object has this key.
        """
        return clean_etag(self._head(key)["ETag"])

    def get_last_modified(self, key: str) -> datetime.datetime:
        """Return the object's Last-Modified time (UTC, whole seconds).

        Raises:
            NotFound: No object has this key.
        """
        return self._head(key)["LastModified"].astimezone(datetime.UTC)

    def list(self, prefix: str = "", *, hashes: bool = True) -> Iterator[ObjectInfo]:
        """Yield the objects whose keys start with ``prefix`` (ListObjectsV2, paginated).

        Keys ending in ``/`` (folder markers some tools create) and hashsync's claims
        directory are left out.

        Raises:
            NotFound: The bucket does not exist.
            PermissionDenied: Listing is not allowed.
        """
        validate_prefix(prefix)
        try:
            objects = _s3list.list_objects(
                self._raw_client(), root_prefix=self.prefix, prefix=prefix
            )
        except _s3list.ErrorAnswer as exc:
            raise self._raw_error(exc, None, "LIST") from None
        yield from self._kept(objects)

    def _kept(self, objects: builtins.list[ObjectInfo]) -> Iterator[ObjectInfo]:
        """``objects`` without folder markers and claims; notes the ones larger than a part."""
        claims = self.prefix + CLAIMS_DIR + "/"
        for info in objects:
            if info.key.endswith("/") or (self.prefix + info.key).startswith(claims):
                continue
            if info.size > self.part_size:
                self._listed_large[info.key] = info.size
            yield info

    def get_crc64nvme(self, key: str) -> str | None:
        """The object's whole-content CRC64NVME (hex), or None if it carries none (one HEAD).

        From hashsync's upload metadata, else S3's native full-object checksum (which AWS
        SDKs have sent by default since 2025): unlike a multipart ETag, it does not depend on
        the part size, so it can compare content where an ETag cannot be matched.

        Raises:
            NotFound: No object has this key.
        """
        head = self._head(key, checksum=True)
        crc = (head.get("Metadata") or {}).get(CRC64_METADATA, "")
        if len(crc) == 16 and all(c in "0123456789abcdef" for c in crc):
            return crc
        return native_crc64(head)

    def get_part_sizes(self, key: str, *, etag: str | None = None) -> builtins.list[int] | None:
        """The sizes of the parts the object was uploaded in, in order, as the store reports.

        One ``HEAD ?partNumber=N`` per part: the first tells the part count, the others run in
        parallel. Worth asking only for a multipart ETag that no single part size matches
        (another tool's uneven parts): with the real sizes it can be checked exactly.

        Args:
            key: The object.
            etag: Pin every request to this ETag (``If-Match``), so all sizes describe one
                version of the object.

        Returns:
            The sizes, or None when the store ignores or refuses ``partNumber`` or its
            answers do not fit together (no parts count, ranges that do not tile the object,
            a parts count other than ``etag``'s ``-N``).

        Raises:
            NotFound: No object has this key.
            PreconditionFailed: The object no longer has ``etag``.
            StorageUnavailable: The store could not be reached.
        """
        return self._part_sizes(key, etag, {})

    def _part_sizes(
        self, key: str, etag: str | None, asked: dict[int, dict[str, Any] | None]
    ) -> builtins.list[int] | None:
        """:meth:`get_part_sizes`, reusing the part HEADs in ``asked`` (number -> answer)."""

        def part(number: int) -> tuple[int, int | None, int | None, int] | None:
            if number not in asked:
                asked[number] = self._part_head(key, number, etag)
            return part_span(asked[number])

        first = part(1)
        if first is None:
            return None
        count = first[3]
        _, dash, parts = (etag or "").rpartition("-")
        if dash and parts.isdigit() and int(parts) != count:
            return None  # not the parts the ETag was made of
        spans = [
            first,
            *run_on_threads(part, range(2, count + 1), self.max_concurrency, fail_fast=True),
        ]
        lengths: list[int] = []
        offset = 0
        for span in spans:
            # Every answer must be of the same upload, and each part must start where the one
            # before it ended: a store that answers something else does not report parts.
            if span is None or span[3] != count or span[1] not in (None, offset):
                return None
            if span[2] is not None and span[2] != first[2]:
                return None
            lengths.append(span[0])
            offset += span[0]
        if first[2] is not None and offset != first[2]:
            return None
        return lengths

    def _part_head(self, key: str, number: int, etag: str | None) -> dict[str, Any] | None:
        """``HEAD ?partNumber=number`` (pinned to ``etag``), or None if the store refuses it."""
        headers = {"If-Match": quoted_etag(etag)} if etag else {}
        refused = (400, 416, 501)  # no such part, or partNumber not implemented
        try:
            status, answer, _ = self._raw_client().call(
                "HEAD", self._full(key), {"partNumber": str(number)}, headers, accept=refused
            )
        except _s3list.ErrorAnswer as exc:
            raise self._raw_error(exc, key, "HEAD") from None
        return None if status in refused else head_fields(answer)

    lists_by_level = True

    def list_segment(self, segment: Segment) -> Iterator[ObjectInfo]:
        """Yield the objects of ``segment``; a shallow one is one delimited listing."""
        if not segment.check().shallow:
            yield from self.list(segment.prefix)
            return
        yield from self._level(segment.prefix)[0]

    def list_level(self, prefix: str = "") -> tuple[int, builtins.list[str]]:
        """One delimited listing of ``prefix``: see :meth:`Storage.list_level`."""
        objects, subdirs = self._level(Segment(prefix).check().prefix)
        return len(objects), subdirs

    def count_keys(self, prefix: str, limit: int) -> int:
        """Count the objects under ``prefix`` page by page, stopping at ``limit``."""
        Segment(prefix).check()
        try:
            return self._raw_client().count(self.prefix + prefix, limit)
        except _s3list.ErrorAnswer as exc:
            raise self._raw_error(exc, None, "LIST") from None

    def _level(self, prefix: str) -> tuple[builtins.list[ObjectInfo], builtins.list[str]]:
        """The objects directly under ``prefix`` and its sub-prefixes.

        One ListObjectsV2 with ``delimiter=/``; keys relative to this storage, claims and
        folder markers left out.
        """
        try:
            objects, common, _ = self._raw_client().walk(
                self.prefix + prefix, len(self.prefix), "/"
            )
        except _s3list.ErrorAnswer as exc:
            raise self._raw_error(exc, None, "LIST") from None
        claims = self.prefix + CLAIMS_DIR + "/"
        subdirs = sorted(p[len(self.prefix) :] for p in common if p != claims)
        return list(self._kept(objects)), subdirs

    # -- downloading -------------------------------------------------------------------

    def copy(self, key: str, destination: Sink) -> None:
        """Download ``key`` into ``destination`` atomically and verified.

        Parts of ``part_size`` are fetched in parallel with ranged GETs pinned to the ETag
        seen by a HEAD first (``If-Match``), so all parts come from one version. The file is
        checked against the size and (MD5-based) ETag, fsynced, given the mtime its uploader
        recorded (rclone's ``mtime`` metadata) or else the object's Last-Modified, and
        renamed into place. A part whose connection drops is
        resumed where it stopped, up to ``max_attempts`` times.

        Raises:
            NotFound: No object has this key.
            IntegrityError: The data does not match the object's size or ETag.
            StorageUnavailable: The store could not be reached (after retries).
            PreconditionFailed: The object kept changing during the download.
        """
        sink = as_sink(destination)
        validate_key(key)
        if self._copy_small(key, sink):
            return
        for attempt in range(2):
            # ChecksumMode: the store's native full-object checksum, when the object has one.
            head = self._head(key, checksum=True)
            try:
                sink.receive(key, functools.partial(self._download, key, head))
                return
            except PreconditionFailed:
                # Overwritten between the HEAD and a part: start over once with the new one.
                if attempt:
                    raise

    def _copy_small(self, key: str, sink: Sink) -> bool:
        """Download an object of at most ``part_size`` bytes with one lean GET.

        Returns False (having written nothing) when the object is larger, or when anything
        is unusual; the caller then takes the HEAD + ranged GET path, which maps errors.
        """
        raw = self._raw_client()
        if key in self._listed_large:
            # Known to be large from a listing: the ranged GET would fetch a part for nothing.
            return False
        try:
            got = raw.get_small(self._full(key), self.part_size)
        except _s3list.ErrorAnswer as exc:
            raise self._raw_error(exc, key, "GET") from None
        if got is None:
            return False
        headers, body = got
        head = head_fields(headers)
        modified = head["LastModified"]

        def fill(tmp: Path) -> str:
            report = current_progress()
            with open(tmp, "wb") as fh:
                fh.write(body)
            if report is not None:
                report(len(body))
            if self.verify:
                self._verify_download(key, head, tmp, body=body)
            stamp(tmp, head["Metadata"], exact_ns(modified))
            return clean_etag(head["ETag"])

        sink.receive(key, fill)
        return True

    def _download(self, key: str, head: dict[str, Any], tmp: Path) -> str:
        """Fill ``tmp`` with the object's version that ``head`` describes; return its ETag."""
        size = int(head["ContentLength"])
        etag = clean_etag(head["ETag"])
        step = download_range_size(size, self.part_size, self.max_concurrency)
        ranges = [(start, min(start + step, size)) for start in range(0, size, step)]
        report = current_progress()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.ftruncate(fd, size)
            run_on_threads(
                lambda r: self._download_range(key, etag, fd, r[0], r[1], size, report),
                ranges,
                self.max_concurrency,
                fail_fast=True,
            )
            written = os.fstat(fd).st_size
        finally:
            os.close(fd)
        if written != size:
            raise IntegrityError(f"downloaded {written} bytes of {key!r}, expected {size}")
        if self.verify:
            self._verify_download(key, head, tmp)
        stamp(tmp, head["Metadata"], exact_ns(head["LastModified"]))
        return etag

    def _download_range(
        self,
        key: str,
        etag: str,
        fd: int,
        start: int,
        end: int,
        size: int,
        report: ByteCallback | None = None,
    ) -> None:
        offset = start
        failures = 0
        raw = self._raw_client()
        while offset < end:
            try:
                written, problem = raw.get_into(
                    self._full(key), fd, offset, end, ranged=start != 0 or end != size,
                    etag=etag, progress=report,
                )  # fmt: skip
            except _s3list.ErrorAnswer as exc:
                raise self._raw_error(exc, key, "GET") from None
            if problem is not None and problem[0] == "changed":
                raise PreconditionFailed(
                    f"{key!r} in {self!r} changed during the download "
                    f"(ETag {problem[1]}, not {etag})"
                )
            if problem is not None and problem[0] == "range":
                raise IntegrityError(
                    f"GET {key!r} from {self!r}: asked for bytes from {offset}, got {problem[1]!r}"
                )
            offset += written
            if offset < end:
                # Broken off (or ended early): ask for the rest.
                failures += 1
                if failures >= self.max_attempts:
                    reason = problem[1] if problem else f"body ended at byte {offset}"
                    raise StorageUnavailable(errno.EIO, f"GET {self!r} {key!r}: {reason}")
                wait_before_retry(failures)

    def _verify_download(
        self, key: str, head: dict[str, Any], tmp: Path, *, body: bytes | None = None
    ) -> None:
        metadata = head.get("Metadata") or {}
        what = f"downloaded {key!r} from {self!r}"
        crc = metadata.get(CRC64_METADATA)
        if crc:
            # hashsync's own whole-content checksum: one fast pass, whatever the part size or
            # however the store computed the ETag (copied parts, encryption).
            verify_file(tmp, what=what, crc64nvme=crc, data=body)
            return
        native = native_crc64(head)
        if native is not None:
            # S3's own full-object checksum (AWS SDKs send it by default since 2025): checks
            # objects of other tools whatever their part size, encrypted ones too.
            verify_file(tmp, what=what, crc64nvme=native, data=body)
            return
        encrypted = head.get("ServerSideEncryption") == "aws:kms" or head.get(
            "SSECustomerAlgorithm"
        )
        if encrypted:
            return  # the ETag is not a content hash
        recorded = metadata.get(PART_SIZE_METADATA, "")
        hint = (
            [int(recorded)] if recorded.isdigit() and MIN_PART <= int(recorded) <= MAX_PART else []
        )
        etag = clean_etag(head["ETag"])
        # Part HEADs asked for this check, by part number: the first one serves twice.
        asked: dict[int, dict[str, Any] | None] = {}

        def first_part_size() -> list[int]:
            # The size of part 1 is the part size of an upload by any tool that uses one
            # size; asked only when the usual candidates did not match.
            if 1 not in asked:
                asked[1] = self._part_head(key, 1, etag)
            span = part_span(asked[1])
            return [span[0]] if span is not None and MIN_PART <= span[0] <= MAX_PART else []

        verify_file(
            tmp,
            what=what,
            etag=etag,
            part_sizes=hint,
            more_part_sizes=first_part_size,
            # Last: parts of uneven sizes, one HEAD per part (the object's own are exact).
            part_lengths=lambda: self._part_sizes(key, etag, asked),
            data=body,
        )


# The longest ranged GET of a download. Fewer, longer requests move big objects faster (2 x 1
# GiB from SeaweedFS on loopback: 4.7 s in 8 MiB ranges, 2.2 s in 32 MiB, 2.1 s in 64 MiB;
# s5cmd 1.8 s with its 50 MiB parts), while objects of a few parts keep one stream per part.
MAX_DOWNLOAD_RANGE = 64 * 1024**2


def download_range_size(size: int, part_size: int, streams: int) -> int:
    """The length of each ranged GET of an object of ``size`` bytes.

    ``size / streams`` rounded up to whole MiB, so the object is fetched over ``streams``
    connections, but no shorter than ``part_size`` and no longer than
    :data:`MAX_DOWNLOAD_RANGE` (or ``part_size`` if that is longer).
    """
    mib = 1024**2
    even = -(-size // max(1, streams))
    even = -(-even // mib) * mib
    return max(part_size, min(even, MAX_DOWNLOAD_RANGE))
