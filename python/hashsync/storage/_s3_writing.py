"""S3 writes: uploads, server-side copies, deletes and unfinished multipart uploads.

Uploads are single or multipart (resumable, Content-MD5 and CRC64NVME checked); deletes go
in DeleteObjects batches.
"""

from __future__ import annotations

import base64
import builtins
import contextlib
import datetime
import hashlib
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import hashsync
from hashsync._fdpath import hash_open_file
from hashsync._native import crc_combine, upload_part_size
from hashsync._redact import redact
from hashsync._threads import run_on_threads
from hashsync.atomic import changed_error
from hashsync.errors import (
    FileChanged,
    HashsyncError,
    IntegrityError,
    InvalidArgument,
    NotFound,
    error_for_status,
)
from hashsync.storage import _s3list
from hashsync.storage._files import UploadSource
from hashsync.storage._journal import journal
from hashsync.storage._mtime import MTIME_KEY, s3_mtime
from hashsync.storage._s3_base import (
    CRC64_METADATA,
    DELETE_BATCH,
    DELETE_PARALLEL,
    MAX_COPY_OBJECT,
    PART_SIZE_METADATA,
    ChecksumRefused,
    IncompleteUpload,
    S3Base,
    b64_of_hex,
    clean_etag,
    may_refuse_checksums,
    quoted_etag,
)
from hashsync.storage._s3_ops import PartCopyUnsupported, copy_source, fits_xml
from hashsync.storage._s3_reading import S3Reading
from hashsync.storage.base import (
    ByteCallback,
    current_progress,
    validate_key,
    validate_prefix,
)
from hashsync.storage.local import (
    FilesystemStorage,
    TemporaryLocalStorage,
    source_file,
)
from hashsync.verify import is_content_etag


class S3Writing(S3Reading):
    """Uploading, copying and deleting (part of :class:`~hashsync.storage.S3Storage`)."""

    # -- uploading ---------------------------------------------------------------------

    def copy_from(self, key: str, source: FilesystemStorage) -> None:
        """Upload ``source``'s file ``key`` (verified via Content-MD5 and the ETag).

        Raises:
            NotFound: ``source`` has no such key.
            FileChanged: The file changed during the upload.
            StorageUnavailable: The store could not be reached (after retries).
        """
        validate_key(key)
        self._upload(key, source_file(source, key))

    def _upload(
        self, key: str, path: Path, *, if_match: str | None = None, if_none_match: bool = False
    ) -> str:
        """Upload ``path`` as ``key``; return the new ETag."""
        conditions: dict[str, str] = {}
        if if_match is not None:
            conditions["IfMatch"] = quoted_etag(if_match)
        if if_none_match:
            conditions["IfNoneMatch"] = "*"
        metadata = {PART_SIZE_METADATA: str(self.part_size)}
        report = current_progress()
        with UploadSource(path, key) as source:
            fh, before, size = source.fh, source.before, source.size
            # Given back on download (rclone's metadata): a round trip keeps the file's time.
            metadata[MTIME_KEY] = s3_mtime(before.st_mtime_ns)
            # Before the object becomes visible: a file written to meanwhile would be stored
            # torn (with a checksum that matches the torn body), so the upload is abandoned.
            unchanged = source.unchanged

            if size < self.part_size:
                data = source.read_whole()
                metadata[CRC64_METADATA] = hashsync.hash_bytes(data, "crc64nvme")
                digest = hashlib.md5(data, usedforsecurity=False)
                response = self._put_small(
                    key, data, base64.b64encode(digest.digest()).decode(), metadata, conditions
                )
                expected = digest.hexdigest()
                if report is not None:
                    report(size)
            else:
                # One extra read of the file (page-cached by now) at tens of GB/s; the
                # descriptor's own file, not whatever the path names by then.
                try:
                    metadata[CRC64_METADATA] = hash_open_file(fh.fileno(), "crc64nvme")
                except FileChanged:
                    raise changed_error(path, key) from None
                # Past 10,000 parts the part size doubles (as s3transfer's); say which.
                part = upload_part_size(size, part_size=self.part_size)
                metadata[PART_SIZE_METADATA] = str(part)
                identity = {
                    "dev": before.st_dev,
                    "ino": before.st_ino,
                    "size": size,
                    "mtime_ns": before.st_mtime_ns,
                    "ctime_ns": before.st_ctime_ns,
                    "part_size": part,
                    "crc64nvme": metadata[CRC64_METADATA],
                }
                response, expected = self._upload_multipart(
                    key,
                    fh.fileno(),
                    size,
                    metadata,
                    conditions,
                    report,
                    before_complete=unchanged,
                    identity=identity,
                )
        etag = clean_etag(response.get("ETag", ""))
        if (
            self.verify
            and is_content_etag(etag)
            and etag != expected
            and not (response.get("ServerSideEncryption") == "aws:kms")
        ):
            raise IntegrityError(
                f"{self!r} stored {key!r} with ETag {etag}, but the data sent has {expected}"
            )
        return etag

    def _multipart(
        self,
        key: str,
        metadata: dict[str, str],
        count: int,
        send: Callable[[str, int, tuple[str, int] | None], dict[str, Any]],
        conditions: dict[str, str] | None = None,
        before_complete: Callable[[], None] | None = None,
        *,
        identity: dict[str, Any] | None = None,
        crc64nvme: str | None = None,
    ) -> dict[str, Any]:
        """Create a multipart upload, ``send`` parts 1..count in parallel, complete.

        With ``crc64nvme`` (the whole content's, hex) the upload is created with S3's native
        FULL_OBJECT CRC64NVME checksum and completed with it, so the store checks the
        assembled object; ``send`` must then give each part's ``ChecksumCRC64NVME``. A store
        that refuses to create such an upload raises :class:`ChecksumRefused` before any
        part was sent.

        ``send(upload_id, number, held)`` uploads one part; ``held`` is ``(etag, size)`` of
        that part when the store already has it from a resumed upload. ``before_complete``
        runs after the last part and may raise to abandon the upload. Any failure (or
        Ctrl-C) aborts the upload: parts of an unfinished upload are billed until aborted.

        Each upload is recorded in the local journal (:mod:`._journal`) while it runs. An
        upload of this key left by a process that died is resumed when its ``identity`` (the
        file's stat, part size and checksum) equals this one's and no condition applies, and
        aborted otherwise.
        """
        full = self._full(key)
        endpoint = self.endpoint_url
        jr = journal()
        upload_id: str | None = None
        held: dict[int, tuple[str, int]] = {}
        for record, info in jr.abandoned(endpoint, self.bucket, full):
            old_id = info.get("upload_id")
            if (
                upload_id is None
                and identity is not None
                and not conditions
                and info.get("identity") == identity
                and isinstance(old_id, str)
            ):
                listed = self._list_parts(key, old_id)
                if listed is not None:
                    upload_id, held = old_id, listed
                    jr.remove(record)
                    continue
            if isinstance(old_id, str):
                with contextlib.suppress(Exception):
                    self._abort_upload(key, full, old_id)
            jr.remove(record)
        native = crc64nvme is not None
        if upload_id is None:
            try:
                upload_id = self._create_upload(key, full, metadata, crc64nvme=native)
            except HashsyncError as exc:
                if not native or not may_refuse_checksums(exc):
                    raise
                raise ChecksumRefused(str(exc)) from exc
        entry = jr.record(
            endpoint, self.bucket, full, {"upload_id": upload_id, "identity": identity}
        )
        try:
            sent = run_on_threads(
                lambda number: send(upload_id, number, held.get(number)),
                range(1, count + 1),
                self.max_concurrency,
                fail_fast=True,
            )
            if before_complete is not None:
                before_complete()
            response = self._complete_upload(
                key,
                full,
                upload_id,
                sent,
                conditions or {},
                b64_of_hex(crc64nvme) if crc64nvme is not None else None,
            )
        except BaseException:
            with contextlib.suppress(Exception):
                self._abort_upload(key, full, upload_id)
            jr.remove(entry)
            raise
        jr.remove(entry)
        return response

    def _list_parts(self, key: str, upload_id: str) -> dict[int, tuple[str, int]] | None:
        """The parts an unfinished upload holds, ``{number: (etag, size)}``; None if it is gone."""
        held: dict[int, tuple[str, int]] = {}
        marker: int | None = 0
        try:
            while marker is not None:
                page = self._parts_page(key, self._full(key), upload_id, marker)
                for number, etag, size in page.parts:
                    held[number] = (clean_etag(etag), size)
                marker = page.next_marker
            return held
        except HashsyncError:
            return None

    def _upload_multipart(
        self,
        key: str,
        fd: int,
        size: int,
        metadata: dict[str, str],
        conditions: dict[str, str],
        report: ByteCallback | None = None,
        *,
        before_complete: Callable[[], None] | None = None,
        identity: dict[str, Any] | None = None,
    ) -> tuple[dict[str, Any], str]:
        # The storage's part size, doubled past 10,000 parts as s3transfer does (what
        # hashsync.etag predicts for the file too).
        part = upload_part_size(size, part_size=self.part_size)
        count = -(-size // part)
        full = self._full(key)
        digests: list[bytes] = [b""] * count
        crcs: list[str] = [""] * count

        def sent_as_announced() -> None:
            # The bytes actually sent must be the bytes the metadata's CRC64NVME describes: a
            # writer that timestamps cannot reveal (a shared mmap) would otherwise be stored torn.
            whole = crcs[0]
            for number in range(2, count + 1):
                length = min(part, size - (number - 1) * part)
                whole = crc_combine("crc64nvme", whole, crcs[number - 1], length)
            if whole != metadata.get(CRC64_METADATA, whole):
                raise FileChanged(f"{key!r}: the file changed while it was uploaded")
            if before_complete is not None:
                before_complete()

        def send(upload_id: str, number: int, held: tuple[str, int] | None) -> dict[str, Any]:
            # Parts are read into memory; the storage-wide slots bound that memory when many
            # large files upload at once (a sync runs 16 of them in parallel).
            with self._part_slots:
                return send_part(upload_id, number, held)

        def send_part(upload_id: str, number: int, held: tuple[str, int] | None) -> dict[str, Any]:
            offset = (number - 1) * part
            length = min(part, size - offset)
            data = os.pread(fd, length, offset)
            if len(data) != length:
                raise IntegrityError(f"{key!r}: file shrank during the upload")
            digest = hashlib.md5(data, usedforsecurity=False)
            digests[number - 1] = digest.digest()
            crcs[number - 1] = hashsync.hash_bytes(data, "crc64nvme")
            checksum = {"ChecksumCRC64NVME": b64_of_hex(crcs[number - 1])} if native else {}
            if held is not None and held == (digest.hexdigest(), length):
                # A resumed upload already holds exactly these bytes.
                if report is not None:
                    report(length)
                return {"PartNumber": number, "ETag": quoted_etag(held[0]), **checksum}
            md5_b64 = base64.b64encode(digest.digest()).decode()
            headers = {"Content-MD5": md5_b64, "Content-Length": str(length)}
            if checksum:
                headers["x-amz-checksum-crc64nvme"] = checksum["ChecksumCRC64NVME"]
            try:
                etag = self._raw_client().upload_part(full, upload_id, number, data, headers)
            except _s3list.ErrorAnswer as exc:
                raise self._raw_error(exc, key, "UploadPart") from None
            if report is not None:
                report(length)
            return {"PartNumber": number, "ETag": etag, **checksum}

        native = self._native_checksums and CRC64_METADATA in metadata
        # A resumed upload must have been created the same way (with or without checksums).
        identity = None if identity is None else {**identity, "native_checksum": native}
        try:
            response = self._multipart(
                key,
                metadata,
                count,
                send,
                conditions,
                sent_as_announced,
                identity=identity,
                crc64nvme=metadata[CRC64_METADATA] if native else None,
            )
        except ChecksumRefused:
            self._native_checksums = native = False
            identity = None if identity is None else {**identity, "native_checksum": False}
            response = self._multipart(
                key, metadata, count, send, conditions, sent_as_announced, identity=identity
            )
        combined = hashlib.md5(b"".join(digests), usedforsecurity=False).hexdigest()
        return response, f"{combined}-{count}"

    def copy_object_from(self, source: S3Base, key: str) -> None:
        """Copy ``source``'s object ``key`` here without moving the data through this machine.

        Works across buckets of one store. Objects up to 5 GiB (S3's limit for CopyObject) are
        copied with one CopyObject, which keeps the source's ETag and metadata (measured on
        SeaweedFS; it is what makes a second S3-to-S3 sync a no-op). Larger ones use
        UploadPartCopy in parts of ``part_size``; their ETag is then whatever the store computes
        for copied parts (SeaweedFS's are not MD5s of the part data), so a later checksum
        comparison of such an object may copy it again. Every request is pinned to the source
        ETag seen first (``x-amz-copy-source-if-match``), so a source overwritten mid-copy fails
        instead of giving a mixed object. Stores on different endpoints are copied through a
        local temporary file.

        Raises:
            NotFound: ``source`` has no such key.
            PreconditionFailed: The source object changed during the copy.
        """
        validate_key(key)
        if source.endpoint_url != self.endpoint_url:
            with TemporaryLocalStorage() as staging:
                source.copy(key, staging)
                self.copy_from(key, staging)
            return
        head = source._head(key)
        size = int(head["ContentLength"])
        etag = clean_etag(head["ETag"])
        source_name = copy_source(source.bucket, source._full(key))
        metadata = {PART_SIZE_METADATA: str(self.part_size)}
        # Keep the whole-content checksum: a store's ETag of copied parts may not be a content
        # hash (SeaweedFS's is not), and the checksum still verifies later downloads.
        crc = (head.get("Metadata") or {}).get(CRC64_METADATA)
        if crc:
            metadata[CRC64_METADATA] = crc
        full = self._full(key)
        report = current_progress()
        if size <= MAX_COPY_OBJECT:
            self._copy_object(key, full, source_name, quoted_etag(etag))
            if report is not None:
                report(size)
            return
        piece = upload_part_size(size, part_size=self.part_size)
        metadata[PART_SIZE_METADATA] = str(piece)
        count = -(-size // piece)

        def send(upload_id: str, number: int, _held: object) -> dict[str, Any]:
            start = (number - 1) * piece
            end = min(start + piece, size) - 1
            part_etag = self._upload_part_copy(
                key, full, upload_id, number, source_name, quoted_etag(etag), f"bytes={start}-{end}"
            )
            if report is not None:
                report(end + 1 - start)
            return {"PartNumber": number, "ETag": part_etag}

        try:
            self._multipart(key, metadata, count, send)
        except PartCopyUnsupported:
            # The upload was aborted; the bytes go through this machine instead, verified.
            with TemporaryLocalStorage() as staging:
                source.copy(key, staging)
                self.copy_from(key, staging)

    def delete(self, key: str) -> None:
        """Delete the object ``key``.

        Raises:
            NotFound: No object has this key (S3 itself would accept the delete silently).
        """
        self._head(key)
        self._delete_object(key, self._full(key))

    def delete_many(self, keys: Sequence[str]) -> builtins.list[HashsyncError | None]:
        """Delete keys with DeleteObjects, 1,000 a request, several requests at once.

        A key S3 reports an error for keeps its error; a key that did not exist counts as
        deleted (S3 does not say). A batch the store refuses as a whole (a store without
        DeleteObjects, a lost connection) is retried one DeleteObject per key, so every key
        ends with its own outcome.
        """
        outcomes: list[HashsyncError | None] = [None] * len(keys)
        where: dict[str, int] = {}
        valid: list[str] = []
        for i, key in enumerate(keys):
            try:
                where[self._full(key)] = i
                valid.append(key)
            except HashsyncError as e:
                outcomes[i] = e
        batches = [valid[i : i + DELETE_BATCH] for i in range(0, len(valid), DELETE_BATCH)]

        def one_by_one(batch: list[str]) -> None:
            for key in batch:
                try:
                    self._delete_object(key, self._full(key))
                except HashsyncError as e:
                    outcomes[where[self._full(key)]] = e

        def send(batch: list[str]) -> None:
            try:
                failed = self._delete_batch([self._full(k) for k in batch])
            except HashsyncError:
                one_by_one(batch)
                return
            for full, code, text in failed:
                if full not in where:
                    continue
                message = redact(
                    f"DELETE key {full[len(self.prefix) :]!r} (s3://{self.bucket}/{full}): "
                    f"{text or code} ({code})"
                )
                outcomes[where[full]] = error_for_status(None, message, code=code)

        # A key XML cannot carry (control characters) cannot be named in a DeleteObjects body.
        odd = [k for k in valid if not fits_xml(self._full(k))]
        if odd:
            one_by_one(odd)
            batches = [[k for k in batch if fits_xml(self._full(k))] for batch in batches]
        run_on_threads(send, [b for b in batches if b], DELETE_PARALLEL, fail_fast=True)
        return outcomes

    # -- unfinished multipart uploads ---------------------------------------------------

    def incomplete_uploads(self, prefix: str = "") -> Iterator[IncompleteUpload]:
        """Yield the multipart uploads under ``prefix`` that were never completed or aborted.

        Their parts take space (and are billed) until aborted; S3 lists them separately from
        objects (``ListMultipartUploads``).

        Raises:
            NotFound: The bucket does not exist.
            PermissionDenied: Listing uploads is not allowed.
        """
        validate_prefix(prefix)
        markers: tuple[str, str] | None = None
        while True:
            page = self._uploads_page(prefix, self.prefix + prefix, markers)
            for full, upload_id, initiated in page.uploads:
                if not full.startswith(self.prefix + prefix):
                    raise _s3list.outside_prefix(full, self.prefix + prefix)
                yield IncompleteUpload(full[len(self.prefix) :], upload_id, initiated)
            if page.next_markers is None:
                return
            markers = page.next_markers

    def abort_incomplete_uploads(
        self, *, older_than: float = 24 * 3600.0, prefix: str = "", dry_run: bool = False
    ) -> builtins.list[IncompleteUpload]:
        """Abort unfinished multipart uploads started more than ``older_than`` seconds ago.

        Like ``rclone cleanup``. Uploads younger than that may belong to a writer that is
        still running (another machine, another tool), so the default spares the last day.

        Args:
            older_than: Minimum age in seconds (0 aborts every unfinished upload).
            prefix: Only uploads of keys under this prefix.
            dry_run: Only return what would be aborted.

        Returns:
            The uploads aborted (or, with ``dry_run``, that would be); one the store would
            not abort (``NoSuchUpload``) is left out.
        """
        if older_than < 0:
            raise InvalidArgument("older_than must be at least 0")
        cutoff = datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=older_than)
        stale = [u for u in self.incomplete_uploads(prefix) if u.initiated <= cutoff]
        if dry_run:
            return stale
        return [upload for upload in stale if self.abort_upload(upload)]

    def abort_upload(self, upload: IncompleteUpload) -> bool:
        """Abort one unfinished multipart upload; False if the store does not know it.

        ``NoSuchUpload`` means it is gone already, or was listed under a key the store
        mangled (control characters); either way this call did not abort it.
        """
        try:
            self._abort_upload(upload.key, self._full(upload.key), upload.upload_id)
        except NotFound:
            return False
        return True

    def abort_abandoned_uploads(self) -> int:
        """Abort the uploads under this storage that crashed processes of this host left.

        Only uploads recorded in the local journal whose process is gone are touched, so it
        is safe while other writers run; a sync calls it after its transfers.

        Returns:
            How many were aborted.
        """
        jr = journal()
        aborted = 0
        endpoint = self.endpoint_url
        for record, info in jr.abandoned(endpoint, self.bucket, None, prefix=self.prefix):
            with contextlib.suppress(Exception):
                self._abort_upload(info["key"], info["key"], info["upload_id"])
                aborted += 1
            jr.remove(record)
        return aborted
