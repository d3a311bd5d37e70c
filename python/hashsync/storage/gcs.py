"""GCSStorage: a Google Cloud Storage bucket, through hashsync's Rust transport.

Content is compared by what GCS keeps for every object: ``md5Hash`` (ordinary objects) and
``crc32c`` (composite ones, which have no MD5). Both come with every listing, so an
unchanged tree costs one listing and no reads, and a same-size edit with an older mtime is
still caught. :meth:`GCSStorage.get_hash` says ``"md5:<hex>"`` (or ``"crc32c:<hex>"``).

Requests go to the GCS JSON API through :class:`hashsync._native.S3Transport` (the same pool
as S3's); google-auth (the ``gcs`` extra) only supplies tokens. Uploads of up to
``part_size`` bytes are one request carrying the MD5 and CRC32C, which GCS checks before the
object exists; larger ones are resumable uploads in ``upload_chunk_size`` chunks, the
checksums sent with the last chunk (``X-Goog-Hash``), and a chunk that fails is resumed from
what the session holds. Downloads are ranged GETs in parallel, pinned to one generation
(``ifGenerationMatch``), checked against the MD5 or CRC32C, and renamed into place.

Conditional writes use GCS preconditions, which GCS evaluates atomically: create-only is
``ifGenerationMatch=0``; if-hash reads the object's generation, compares its hash, and
writes with ``ifGenerationMatch=<generation>``, so a write by anyone in between fails the
precondition. Like S3 stores, an emulator may ignore preconditions; the first conditional
write checks once (:mod:`hashsync.storage.conditions`) and refuses with
:class:`~hashsync.errors.ConditionsNotEnforced` where they are ignored, unless
``conditional_writes="best-effort"``.
"""

from __future__ import annotations

import base64
import builtins
import contextlib
import datetime
import errno
import functools
import hashlib
import os
import re
import urllib.parse
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import hashsync
from hashsync._redact import redact_url
from hashsync._retry import wait_before_retry
from hashsync._threads import run_on_threads
from hashsync.atomic import changed_error
from hashsync.errors import (
    ConditionsNotEnforced,
    HashsyncError,
    IntegrityError,
    InvalidArgument,
    NotFound,
    PreconditionFailed,
    StorageUnavailable,
)
from hashsync.storage._files import UploadSource
from hashsync.storage._gcs_auth import Tokens, default_credentials
from hashsync.storage._gcs_client import (
    DEFAULT_ENDPOINT,
    GCSClient,
    GCSObject,
    emulator_endpoint,
    is_loopback,
)
from hashsync.storage._mtime import gcs_mtime, stamp
from hashsync.storage._s3_reading import download_range_size
from hashsync.storage.base import (
    ByteCallback,
    ObjectInfo,
    ReadWriteStorage,
    Segment,
    Storage,
    current_progress,
    exact_ns,
    validate_key,
    validate_prefix,
)
from hashsync.storage.conditions import probe_conditions
from hashsync.storage.local import (
    FilesystemStorage,
    normalize_hash,
    source_file,
    transfer_through_staging,
)
from hashsync.storage.sink import Sink, as_sink
from hashsync.verify import verify_file

__all__ = ["GCSStorage"]

#: Where probes of the store's preconditions are written; never listed (as S3's claims).
RESERVED_DIR = ".hashsync-claims"
# Bucket names: 3-63 characters (222 with dots), lower-case letters, digits, -, _ and dots.
_BUCKET = re.compile(r"[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]")
# Resumable upload chunks must be multiples of 256 KiB (except the last).
_CHUNK_UNIT = 256 * 1024
_DELETE_PARALLEL = 16


def _b64(hex_digest: str) -> str:
    return base64.b64encode(bytes.fromhex(hex_digest)).decode()


class GCSStorage(ReadWriteStorage):
    """A Google Cloud Storage bucket (and optional prefix).

    Credentials are Google's Application Default Credentials (google-auth, the ``gcs``
    extra): ``GOOGLE_APPLICATION_CREDENTIALS``, ``gcloud auth application-default login``,
    workload identity, or the metadata server of a Google Cloud machine. With
    ``STORAGE_EMULATOR_HOST`` set, requests go to that emulator without credentials, as
    google-cloud-storage does.

    Args:
        bucket: The bucket's name.
        prefix: Object name prefix; keys are relative to it (``"data"`` = ``"data/"``).
        project: The project a new bucket is created in (:meth:`create_bucket`); default
            the credentials' project.
        credentials: A ``google.auth.credentials.Credentials`` to use instead of looking
            them up (the storage then cannot be pickled: it never sends them along).
        anonymous: Send no credentials (public buckets).
        endpoint_url: The JSON API's endpoint; default ``$STORAGE_EMULATOR_HOST``, else
            ``https://storage.googleapis.com``.
        part_size: Objects up to this size are uploaded in one request and downloaded in
            one GET; larger ones are downloaded in parallel ranges of at least this size.
        upload_chunk_size: Chunk of a resumable upload (rounded up to 256 KiB multiples).
        max_concurrency: Ranges of one object downloaded in parallel.
        max_attempts: Attempts per request (connection failures, 408, 429, 5xx retried).
        timeout: Seconds allowed for each of sending and receiving an answer.
        connect_timeout: Seconds allowed to connect (default ``timeout``).
        conditional_writes: ``"native"`` relies on GCS preconditions (checked once per
            bucket to be enforced); ``"best-effort"`` writes with a metadata check only,
            where a store ignores them (an emulator).
        verify: Check downloads against the object's MD5 or CRC32C.

    Raises:
        InvalidArgument: A bad bucket name, prefix or option.
        MissingDependency: Credentials must be looked up and google-auth is not installed.
        PermissionDenied: No credentials were found.
    """

    hash_algorithm = "md5"
    claims_conditions = True
    lists_by_level = True

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        project: str | None = None,
        credentials: Any | None = None,
        anonymous: bool = False,
        endpoint_url: str | None = None,
        part_size: int = 8 * 1024**2,
        upload_chunk_size: int = 16 * 1024**2,
        max_concurrency: int = 8,
        max_attempts: int = 5,
        timeout: float = 60.0,
        connect_timeout: float | None = None,
        conditional_writes: str = "native",
        verify: bool = True,
    ) -> None:
        if not isinstance(bucket, str) or not _BUCKET.fullmatch(bucket) or ".." in bucket:
            raise InvalidArgument(f"not a valid GCS bucket name: {bucket!r}")
        if prefix:
            validate_key(prefix.rstrip("/"))
            prefix = prefix.rstrip("/") + "/"
        if conditional_writes not in ("native", "best-effort"):
            raise InvalidArgument(
                f"conditional_writes must be 'native' or 'best-effort' for GCS (its "
                f"preconditions are atomic: no claims needed), not {conditional_writes!r}"
            )
        if part_size < _CHUNK_UNIT or upload_chunk_size < _CHUNK_UNIT:
            raise InvalidArgument("part_size and upload_chunk_size must be at least 256 KiB")
        if max_attempts < 1 or max_concurrency < 1:
            raise InvalidArgument("max_attempts and max_concurrency must be at least 1")
        emulator = emulator_endpoint()
        endpoint = (endpoint_url or emulator or DEFAULT_ENDPOINT).rstrip("/")
        parts = urllib.parse.urlsplit(endpoint)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise InvalidArgument(f"not an http(s) endpoint: {redact_url(endpoint)!r}")
        self._options: dict[str, Any] | None = {
            "bucket": bucket,
            "prefix": prefix,
            "project": project,
            "anonymous": anonymous,
            "endpoint_url": endpoint_url,
            "part_size": part_size,
            "upload_chunk_size": upload_chunk_size,
            "max_concurrency": max_concurrency,
            "max_attempts": max_attempts,
            "timeout": timeout,
            "connect_timeout": connect_timeout,
            "conditional_writes": conditional_writes,
            "verify": verify,
        }
        if credentials is not None:
            self._options = None  # never pickled with them
        elif not anonymous and not (emulator and endpoint == emulator):
            credentials, found_project = default_credentials()
            project = project or found_project
        else:
            # Unpickled elsewhere (a Dask worker), the same endpoint without credentials,
            # whatever that machine's STORAGE_EMULATOR_HOST says.
            self._options.update(endpoint_url=endpoint, anonymous=True)
        if credentials is not None and parts.scheme == "http" and not is_loopback(parts.hostname):
            # A bearer token is the credential itself: in clear text, anyone on the path can
            # replay it against the whole project.
            raise InvalidArgument(
                f"refusing to send Google credentials over plain http to {parts.hostname!r}; "
                "use https, or anonymous=True for a store that needs none"
            )
        self.bucket = bucket
        self.prefix = prefix
        self.project = project
        self.endpoint_url = endpoint
        self.part_size = part_size
        self.upload_chunk_size = -(-upload_chunk_size // _CHUNK_UNIT) * _CHUNK_UNIT
        self.max_concurrency = max_concurrency
        self.max_attempts = max_attempts
        self.conditional_writes = conditional_writes
        self.verify = verify
        self._client = GCSClient(
            endpoint,
            Tokens(credentials),
            timeout=timeout,
            connect_timeout=connect_timeout,
            max_attempts=max_attempts,
        )

    @classmethod
    def from_url(cls, url: str, **options: Any) -> GCSStorage:
        """Create a storage from ``gs://bucket/prefix``.

        Args:
            url: The URL (taken literally after the bucket, as gsutil and gcloud do: ``#``,
                ``?`` and ``%`` are ordinary characters of object names).
            **options: Keyword arguments of :class:`GCSStorage`.

        Raises:
            InvalidArgument: Not a ``gs://`` URL with a bucket.
        """
        scheme, sep, rest = url.partition("://")
        bucket, _, prefix = rest.partition("/")
        if scheme.lower() != "gs" or not sep or not bucket:
            raise InvalidArgument(f"not a gs://bucket/prefix URL: {redact_url(url)!r}")
        return cls(bucket, prefix, **options)

    def __getstate__(self) -> dict[str, Any]:
        if self._options is None:
            raise TypeError(
                f"{self!r} was given credentials and is not pickled with them; build the "
                "storage where it is used (it then finds Application Default Credentials)"
            )
        return {"options": self._options}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state["options"])  # type: ignore[misc]

    def __repr__(self) -> str:
        return f"GCSStorage('gs://{self.bucket}/{self.prefix}')"

    # -- names -------------------------------------------------------------------------

    def _name(self, key: str) -> str:
        name = self.prefix + validate_key(key)
        if len(name.encode()) > 1024 or "\r" in name or "\n" in name:
            # GCS's own rules for object names, said before any request.
            raise InvalidArgument(
                f"{key!r} cannot be a GCS object name (at most 1,024 bytes, no CR or LF)"
            )
        return name

    def _url(self, key: str = "") -> str:
        return f"gs://{self.bucket}/{self.prefix}{key}"

    def _what(self, operation: str, key: str) -> str:
        """How an error names a request: ``GET gs://bucket/prefix/: key 'k'``."""
        return f"{operation} {self._url()}: key {key!r}"

    def _hidden(self, name: str) -> bool:
        """Folder markers (``dir/``) and the reserved probe directory are not keys."""
        return name.endswith("/") or name.startswith(self.prefix + RESERVED_DIR + "/")

    # -- reading -------------------------------------------------------------------------

    def _object(self, key: str) -> GCSObject:
        return self._client.get_object(self.bucket, self._name(key), what=self._what("GET", key))

    def _current(self, key: str) -> GCSObject | None:
        try:
            return self._object(key)
        except NotFound:
            return None

    def get_size(self, key: str) -> int:
        """Return the object's size.

        Raises:
            NotFound: No object has this key.
        """
        return self._object(key).size

    def get_hash(self, key: str) -> str:
        """Return ``"md5:<hex>"`` (``"crc32c:<hex>"`` for a composite object).

        Raises:
            NotFound: No object has this key.
        """
        return self._object(key).hash

    def get_last_modified(self, key: str) -> datetime.datetime:
        """Return when the object was last written (``updated``, UTC, milliseconds).

        Raises:
            NotFound: No object has this key.
        """
        return self._object(key).updated

    def _pages(
        self, prefix: str, delimiter: str | None = None
    ) -> Iterator[tuple[builtins.list[GCSObject], builtins.list[str]]]:
        """The objects (and, with a delimiter, sub-prefixes) under ``self.prefix + prefix``.

        Page by page, in key order: GCS lists in UTF-8 byte order (code-point order of str),
        so a listing is used as it arrives; a store that breaks the order is refused, since
        a sync's diff relies on it.
        """
        full = self.prefix + prefix
        what = f"LIST {self._url(prefix)}"
        token: str | None = None
        last = ""
        while True:
            items, subdirs, token = self._client.list_page(
                self.bucket, full, token, delimiter, what=what
            )
            found = [GCSObject.from_resource(resource, what) for resource in items]
            found.sort(key=lambda o: o.name)
            for obj in found:
                if not obj.name.startswith(full):
                    raise IntegrityError(
                        f"{what}: the store listed {obj.name!r}, outside the prefix asked for; "
                        "refusing a listing that does not match the request"
                    )
            if found and found[0].name <= last:
                raise IntegrityError(f"{what}: the store listed {found[0].name!r} out of order")
            if found:
                last = found[-1].name
            for p in subdirs:
                if not p.startswith(full):
                    raise IntegrityError(f"{what}: the store listed the prefix {p!r}")
            yield (
                [o for o in found if not self._hidden(o.name)],
                [p for p in subdirs if p != self.prefix + RESERVED_DIR + "/"],
            )
            if not token:
                return

    def _objects(
        self, prefix: str, delimiter: str | None = None
    ) -> tuple[builtins.list[GCSObject], builtins.list[str]]:
        """All of :meth:`_pages` at once (one level of a delimited listing)."""
        objects: list[GCSObject] = []
        prefixes: set[str] = set()
        for page, subdirs in self._pages(prefix, delimiter):
            objects.extend(page)
            prefixes.update(subdirs)
        return objects, sorted(prefixes)

    def _info(self, obj: GCSObject) -> ObjectInfo:
        return ObjectInfo(obj.name[len(self.prefix) :], obj.size, obj.updated, obj.hash)

    def list(self, prefix: str = "", *, hashes: bool = True) -> Iterator[ObjectInfo]:
        """Yield the objects whose keys start with ``prefix``, in key order.

        Folder markers (names ending in ``/``) are left out.

        Raises:
            NotFound: The bucket does not exist.
            PermissionDenied: Listing is not allowed.
        """
        validate_prefix(prefix)
        for page, _ in self._pages(prefix):
            for obj in page:
                yield self._info(obj)

    def count_keys(self, prefix: str, limit: int) -> int:
        """Count the objects under ``prefix`` page by page, stopping at ``limit``."""
        Segment(prefix).check()
        n = 0
        for page, _ in self._pages(prefix):
            n += len(page)
            if n >= limit:
                return limit
        return n

    def list_segment(self, segment: Segment) -> Iterator[ObjectInfo]:
        """Yield the objects of ``segment``; a shallow one is one delimited listing."""
        if not segment.check().shallow:
            yield from self.list(segment.prefix)
            return
        for obj in self._objects(segment.prefix, "/")[0]:
            yield self._info(obj)

    def list_level(self, prefix: str = "") -> tuple[int, builtins.list[str]]:
        """One delimited listing of ``prefix``: see :meth:`Storage.list_level`."""
        objects, subdirs = self._objects(Segment(prefix).check().prefix, "/")
        return len(objects), [p[len(self.prefix) :] for p in subdirs]

    # -- downloading -------------------------------------------------------------------

    def copy(self, key: str, destination: Sink) -> None:
        """Download ``key`` into ``destination`` atomically and verified.

        The object's metadata first (size, generation, checksums); then ranged GETs in
        parallel, each pinned to that generation. The file is checked against the MD5 (or
        CRC32C), given the mtime its uploader recorded (rclone's metadata) or else the
        object's ``updated`` time, and published. An object
        overwritten during the download is started over once.

        Raises:
            NotFound: No object has this key.
            IntegrityError: The data does not match the object's size or checksum.
            StorageUnavailable: The store could not be reached (after retries).
            PreconditionFailed: The object kept changing during the download.
        """
        sink = as_sink(destination)
        validate_key(key)
        for attempt in range(2):
            obj = self._object(key)
            try:
                sink.receive(key, functools.partial(self._download, key, obj))
                return
            except PreconditionFailed:
                if attempt:
                    raise

    def _download(self, key: str, obj: GCSObject, tmp: Path) -> str:
        size = obj.size
        step = download_range_size(size, self.part_size, self.max_concurrency)
        ranges = [(start, min(start + step, size)) for start in range(0, size, step)]
        report = current_progress()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.ftruncate(fd, size)
            run_on_threads(
                lambda r: self._download_range(key, obj, fd, r[0], r[1], report),
                ranges,
                self.max_concurrency,
                fail_fast=True,
            )
        finally:
            os.close(fd)
        if self.verify:
            verify_file(
                tmp,
                what=f"downloaded {self._url(key)}",
                size=size,
                md5=obj.md5,
                digest=None if obj.md5 else f"crc32c:{obj.crc32c}",
            )
        stamp(tmp, obj.metadata, exact_ns(obj.updated))
        return obj.hash

    def _download_range(
        self,
        key: str,
        obj: GCSObject,
        fd: int,
        start: int,
        end: int,
        report: ByteCallback | None,
    ) -> None:
        what = self._what("GET", key)
        offset = start
        failures = 0
        while offset < end:
            try:
                written, problem = self._client.get_into(
                    self.bucket, obj.name, obj.generation, fd, offset, end,
                    ranged=offset != 0 or end != obj.size, what=what, progress=report,
                )  # fmt: skip
            except PreconditionFailed:
                raise PreconditionFailed(
                    f"{key!r} in {self!r} changed during the download "
                    f"(generation {obj.generation} is gone)"
                ) from None
            if problem is not None and problem[0] == "changed":
                raise PreconditionFailed(
                    f"{key!r} in {self!r} changed during the download "
                    f"(generation {problem[1]}, not {obj.generation})"
                )
            if problem is not None and problem[0] == "range":
                raise IntegrityError(f"{what}: asked for bytes from {offset}, got {problem[1]!r}")
            offset += written
            if offset < end:
                failures += 1
                if failures >= self.max_attempts:
                    reason = problem[1] if problem else f"body ended at byte {offset}"
                    raise StorageUnavailable(errno.EIO, f"{what}: {reason}")
                wait_before_retry(failures)

    # -- uploading -----------------------------------------------------------------------

    def copy_from(self, key: str, source: FilesystemStorage) -> None:
        """Upload ``source``'s file ``key``, checked by GCS against its MD5 and CRC32C.

        Raises:
            NotFound: ``source`` has no such key.
            FileChanged: The file changed during the upload.
            StorageUnavailable: The store could not be reached (after retries).
        """
        validate_key(key)
        self._upload(key, source_file(source, key), {})

    def _upload(self, key: str, path: Path, conditions: dict[str, str]) -> GCSObject:
        """Upload ``path`` as ``key`` under ``conditions`` (preconditions); the new object."""
        self._name(key)  # a bad key fails before the file is opened
        report = current_progress()
        with UploadSource(path, key) as source:
            before = source.before
            if source.size <= self.part_size:
                data = source.read_whole()
                obj = self._insert(key, data, conditions, mtime_ns=before.st_mtime_ns)
                if report is not None:
                    report(source.size)
                return obj
            return self._resumable(
                key, path, source.fh.fileno(), before, conditions, source.unchanged, report
            )

    def _resource(self, key: str, mtime_ns: int | None) -> dict[str, Any]:
        """The object resource of an upload: its name and, for a file, its mtime (rclone's)."""
        resource: dict[str, Any] = {"name": self._name(key)}
        if mtime_ns is not None:
            resource["metadata"] = gcs_mtime(mtime_ns)
        return resource

    def _insert(
        self, key: str, data: bytes, conditions: dict[str, str], *, mtime_ns: int | None = None
    ) -> GCSObject:
        """One request that stores ``data``; GCS checks the MD5 and CRC32C sent with it."""
        md5 = hashlib.md5(data, usedforsecurity=False).hexdigest()
        crc = hashsync.hash_bytes(data, "crc32c")
        resource = {**self._resource(key, mtime_ns), "md5Hash": _b64(md5), "crc32c": _b64(crc)}
        obj = self._client.insert(
            self.bucket, resource, data, what=self._what("PUT", key), conditions=conditions
        )
        self._check_stored(key, obj, len(data), md5, crc)
        return obj

    def _check_stored(self, key: str, obj: GCSObject, size: int, md5: str, crc: str) -> None:
        """Refuse (and remove) an object that is not what was sent."""
        if (
            obj.size != size
            or (obj.md5 is not None and obj.md5 != md5)
            or (obj.crc32c is not None and obj.crc32c != crc)
        ):
            # Only that generation: a later writer's object is left alone.
            with contextlib.suppress(HashsyncError):
                self._client.delete(
                    self.bucket, obj.name, what=self._what("DELETE", key), generation=obj.generation
                )
            raise IntegrityError(
                f"{self!r} stored {key!r} as {obj.size} bytes with MD5 {obj.md5} and CRC32C "
                f"{obj.crc32c}, but the data sent was {size} bytes with {md5} and {crc}"
            )

    def _resumable(
        self,
        key: str,
        path: Path,
        fd: int,
        before: os.stat_result,
        conditions: dict[str, str],
        unchanged: Any,
        report: ByteCallback | None,
    ) -> GCSObject:
        """A resumable upload: chunks in order, a failed one resumed from what GCS holds."""
        what = self._what("PUT", key)
        client = self._client
        size = before.st_size
        session = client.start_resumable(
            self.bucket,
            self._resource(key, before.st_mtime_ns),
            size,
            what=what,
            conditions=conditions,
        )
        try:
            return self._send_chunks(key, path, fd, size, session, unchanged, report)
        except BaseException:
            # Also on Ctrl-C: the session would hold its bytes for a week otherwise.
            client.cancel_session(session, what=what)
            raise

    def _send_chunks(
        self,
        key: str,
        path: Path,
        fd: int,
        size: int,
        session: str,
        unchanged: Any,
        report: ByteCallback | None,
    ) -> GCSObject:
        what = self._what("PUT", key)
        client = self._client
        md5 = hashlib.md5(usedforsecurity=False)
        crc = hashsync.Hasher("crc32c")
        hashed = 0  # bytes fed to the hashers (a chunk may be sent twice; hashed once)
        held = 0  # bytes the session holds
        failures = 0
        obj: GCSObject | None = None
        checksums: dict[str, str] | None = None
        while obj is None:
            want = min(self.upload_chunk_size, size - held)
            data = os.pread(fd, want, held)
            if len(data) != want:  # the file shrank
                raise changed_error(path, key)
            end = held + want
            if end > hashed:
                new = memoryview(data)[hashed - held :]
                md5.update(new)
                crc.update(new)
                hashed = end
            if end == size and checksums is None:
                unchanged()
                checksums = {"crc32c": _b64(crc.hexdigest()), "md5": _b64(md5.hexdigest())}
            error: StorageUnavailable | None = None
            try:
                now, obj = client.put_chunk(
                    session, data, held, size, what=what, checksums=checksums
                )
            except StorageUnavailable as exc:
                # Part of the chunk may have arrived: ask the session where it stands.
                error = exc
                now, obj = client.session_status(session, size, what=what)
            # The session can hold no byte that was never sent (the hashes and the skipped
            # bytes would not describe the file), and completes only with the last one.
            if now < held or now > hashed or (obj is not None and checksums is None):
                raise IntegrityError(
                    f"{what}: the upload session says it holds {now} of {size} bytes after "
                    f"{hashed} were sent{' and completed early' if obj is not None else ''}"
                )
            if now > held:
                failures = 0  # a retry that moved on was no lasting failure
                if report is not None:
                    report(now - held)
            elif obj is None:
                # Nothing taken: a session that stops moving must not be asked forever.
                failures += 1
                if failures >= self.max_attempts:
                    raise error or StorageUnavailable(
                        errno.EIO, f"{what}: the upload session stopped taking data at {held}"
                    )
                wait_before_retry(failures)
            held = now
        assert obj is not None and checksums is not None
        self._check_stored(key, obj, size, md5.hexdigest(), crc.hexdigest())
        return obj

    def transfer_from(self, key: str, source: Storage) -> None:
        """Rewrite server-side from a bucket on the same endpoint, else upload or stage."""
        if isinstance(source, GCSStorage) and source.endpoint_url == self.endpoint_url:
            validate_key(key)
            obj = source._object(key)
            self._client.rewrite(
                source.bucket,
                obj.name,
                self.bucket,
                self._name(key),
                what=f"COPY {source._url(key)} to {self._url()}: key {key!r}",
                source_generation=obj.generation,
            )
            return
        transfer_through_staging(self, key, source)

    def can_copy_server_side(self, source: Storage) -> bool:
        """True for another GCSStorage on the same endpoint (``objects.rewrite``)."""
        return isinstance(source, GCSStorage) and source.endpoint_url == self.endpoint_url

    def location(self) -> tuple[tuple[str, ...], str] | None:
        """``(("gs", endpoint, bucket), prefix)``."""
        return ("gs", self.endpoint_url.lower(), self.bucket), self.prefix

    def create_bucket(self) -> None:
        """Create the bucket (in :attr:`project`); one that is already yours is kept.

        Raises:
            PermissionDenied: Not allowed.
            InvalidArgument: No project is known (on GCS itself; an emulator needs none).
        """
        if self.project is None and self.endpoint_url == DEFAULT_ENDPOINT:
            raise InvalidArgument("creating a bucket needs a project: pass project=")
        self._client.create_bucket(self.bucket, self.project, what=f"CREATE gs://{self.bucket}")

    # -- deleting ------------------------------------------------------------------------

    def delete(self, key: str) -> None:
        """Delete the object ``key``.

        Raises:
            NotFound: No object has this key.
        """
        self._client.delete(self.bucket, self._name(key), what=self._what("DELETE", key))

    def delete_many(self, keys: Sequence[str]) -> builtins.list[HashsyncError | None]:
        """Delete many objects, 16 requests at a time; one outcome per key, in order."""

        def one(key: str) -> HashsyncError | None:
            try:
                self.delete(key)
            except HashsyncError as exc:
                return exc
            return None

        return run_on_threads(one, builtins.list(keys), _DELETE_PARALLEL)

    # -- conditional writes --------------------------------------------------------------

    def conditions_enforced(self) -> bool:
        """Whether the store refuses what its preconditions forbid (GCS does; emulators may not).

        Found out by one probe per endpoint and bucket, remembered for a month; the probe
        writes and deletes an object in the reserved directory.
        """
        return probe_conditions(
            f"{self.endpoint_url}|gs|{self.bucket}",
            self._probe_write,
            lambda key: self._delete_quietly(key),
            f"{RESERVED_DIR}/probe-{uuid.uuid4().hex}",
        )

    def _probe_write(self, key: str, data: bytes, create_only: bool, if_hash: str | None) -> None:
        # Straight to the store, with no check of our own: the probe asks the store.
        conditions = {"ifGenerationMatch": "0" if create_only else "1"}
        self._insert(key, data, conditions)

    def _delete_quietly(self, key: str) -> None:
        with contextlib.suppress(NotFound):
            self.delete(key)

    def _require_conditions(self, key: str) -> None:
        if self.conditional_writes == "best-effort" or self.conditions_enforced():
            return
        raise ConditionsNotEnforced(
            f"refusing a conditional write of {key!r} to {self._url()}: the store at "
            f"{self.endpoint_url} ignores ifGenerationMatch (it accepted a create-only write "
            "of an existing object when checked), so the write could replace another "
            "writer's object silently; open the storage with conditional_writes='best-effort' "
            "to write with a metadata check only"
        )

    def _conditions(self, key: str, expected: str | None) -> dict[str, str]:
        """The preconditions of a write that expects ``expected`` (None: no object yet).

        Checks the object first, so a doomed write fails before any data is sent.

        Raises:
            PreconditionFailed: The object does not have ``expected`` now.
        """
        self._require_conditions(key)
        current = self._current(key)
        if expected is None:
            if current is not None:
                raise PreconditionFailed(f"{key!r} already exists in {self!r}")
            return {"ifGenerationMatch": "0"}
        if current is None:
            raise PreconditionFailed(f"{key!r} does not exist in {self!r} (expected {expected})")
        if current.hash != _as_hash(expected):
            raise PreconditionFailed(
                f"{key!r} in {self!r} has {current.hash}, not the expected {expected}"
            )
        return {"ifGenerationMatch": current.generation}

    def _refused(
        self, exc: PreconditionFailed, key: str, expected: str | None
    ) -> PreconditionFailed:
        wanted = "no object" if expected is None else expected
        return PreconditionFailed(
            f"{key!r} in {self!r} was written by someone else (expected {wanted}): {exc}"
        )

    def copy_from_if_overwriting_hash(
        self, key: str, hash: str | None, source: FilesystemStorage
    ) -> None:
        """Upload only if the object still has ``hash`` (None: only if there is none).

        Atomic on GCS: the write carries ``ifGenerationMatch`` of the generation whose hash
        was checked (``0`` for create-only).

        Raises:
            PreconditionFailed: The object has another hash, or exists when ``hash`` is None.
        """
        validate_key(key)
        path = source_file(source, key)
        conditions = self._conditions(key, hash)
        try:
            self._upload(key, path, conditions)
        except PreconditionFailed as exc:
            raise self._refused(exc, key, hash) from None

    def copy_from_if_local_is_newer(self, key: str, source: FilesystemStorage) -> bool:
        """Upload unless the object is at least as new as the file (best effort, as S3's).

        The write is pinned to the generation looked at, so one written meanwhile wins.
        """
        validate_key(key)
        path = source_file(source, key)
        current = self._current(key)
        mtime = os.stat(path).st_mtime
        if current is not None and current.updated.timestamp() >= mtime:
            return False
        generation = current.generation if current is not None else "0"
        try:
            self._upload(key, path, {"ifGenerationMatch": generation})
        except PreconditionFailed:
            return False
        return True

    def write_bytes(
        self, key: str, data: bytes, *, create_only: bool = False, if_hash: str | None = None
    ) -> str:
        """Store ``data`` under ``key`` (one request) and return its ``"md5:<hex>"``.

        Raises:
            PreconditionFailed: The condition did not hold.
            InvalidArgument: Both conditions were given.
        """
        if create_only and if_hash is not None:
            raise InvalidArgument("write_bytes takes create_only or if_hash, not both")
        validate_key(key)
        conditional = create_only or if_hash is not None
        conditions = self._conditions(key, if_hash) if conditional else {}
        try:
            return self._insert(key, bytes(data), conditions).hash
        except PreconditionFailed as exc:
            if not conditional:
                raise
            raise self._refused(exc, key, if_hash) from None

    def delete_if_hash_matches(self, key: str, hash: str) -> None:
        """Delete the object only if it still has ``hash`` (``ifGenerationMatch``).

        Raises:
            PreconditionFailed: The object has a different hash.
            NotFound: No object has this key.
        """
        validate_key(key)
        self._require_conditions(key)
        current = self._object(key)
        if current.hash != _as_hash(hash):
            raise PreconditionFailed(
                f"{key!r} in {self!r} has {current.hash}, not the expected {hash}"
            )
        try:
            self._client.delete(
                self.bucket, current.name, what=self._what("DELETE", key),
                generation=current.generation,
            )  # fmt: skip
        except PreconditionFailed as exc:
            raise self._refused(exc, key, hash) from None


def _as_hash(value: str) -> str:
    """A hash as given (quoted, upper-case, a bare MD5) as :meth:`GCSStorage.get_hash` says it."""
    value = normalize_hash(value)
    return value if ":" in value else f"md5:{value}"
