"""S3Storage: any S3-compatible object store, through boto3.

Uploads follow s3transfer's rule (a single PutObject below ``part_size``, multipart parts of
exactly ``part_size`` from it on), so an object's ETag is what :func:`hashsync.etag` computes
locally with the same part size. hashsync runs the transfer itself rather than through
s3transfer because s3transfer cannot send ``If-Match`` / ``If-None-Match``. Every part is sent
with ``Content-MD5``, and the ETags the store returns are checked against the MD5s computed
while sending, so an upload is verified end to end without reading the file twice.

Conditional writes
------------------
``copy_from_if_overwriting_hash(key, etag, ...)`` sends ``If-Match: "<etag>"`` on the
PutObject or CompleteMultipartUpload that makes the object visible; with ``hash=None`` it
sends ``If-None-Match: *`` (create only). ``delete_if_hash_matches`` sends ``If-Match`` on
DeleteObject. Each also checks the current ETag with a HEAD first, so a doomed upload fails
before any data is sent.

How atomic that is depends on the store:

* AWS S3 evaluates these headers atomically on PutObject and CompleteMultipartUpload
  (conditional deletes are newer; where a store ignores ``If-Match`` on DeleteObject the
  HEAD check leaves a window between HEAD and DELETE).
* SeaweedFS (4.x) evaluates them on PutObject atomically, but on CompleteMultipartUpload it
  checks and then writes without a lock: two writers racing with the same expected ETag can
  both succeed. ``conditional_writes="claim"`` closes that window (below).
* A store that ignores the headers altogether only has the HEAD check: a writer that changes
  the object between that HEAD and the final request is overwritten silently.

``conditional_writes="claim"``: before a conditional write, the writer creates a claim object
``{prefix}.hashsync-claims/<sha256(key, expected etag)>`` with ``If-None-Match: *``. Only one
writer can create it (this needs just an atomic create-only PutObject, which SeaweedFS has),
so of all writers expecting the same version, exactly one proceeds and the others get
:class:`~hashsync.errors.PreconditionFailed` at once. The winner re-checks the ETag, writes
(still with ``If-Match``), and deletes the claim. A claim left by a crashed writer blocks that
version for ``claim_ttl`` seconds, after which it is broken; a writer that takes longer than
``claim_ttl`` can therefore lose its exclusivity. Writers that do not use claims (other tools,
or ``"native"`` mode) are only held off by the store's own check. The claims directory is
reserved: :meth:`S3Storage.list` does not show it.
"""

from __future__ import annotations

import base64
import builtins
import contextlib
import datetime
import errno
import functools
import hashlib
import json
import os
import socket
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

import hashsync
from hashsync._native import crc_combine
from hashsync._redact import redact, redact_url
from hashsync._retry import wait_before_retry
from hashsync._threads import run_on_threads
from hashsync.atomic import same_version, settled_fstat
from hashsync.errors import (
    FileChanged,
    HashsyncError,
    IntegrityError,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    PreconditionFailed,
    StorageUnavailable,
    error_for_status,
)
from hashsync.storage import _s3list, _sigv4
from hashsync.storage._journal import journal
from hashsync.storage.base import (
    ByteCallback,
    ObjectInfo,
    ReadWriteStorage,
    Segment,
    Storage,
    current_progress,
    validate_key,
    validate_prefix,
)
from hashsync.storage.local import (
    FilesystemStorage,
    TemporaryLocalStorage,
    normalize_hash,
    open_nofollow,
    source_file,
    stat_or_none,
    transfer_through_staging,
)
from hashsync.storage.sink import Sink, as_sink
from hashsync.verify import is_content_etag, verify_file

if TYPE_CHECKING:
    from botocore.client import BaseClient

__all__ = ["IncompleteUpload", "S3Storage"]


class IncompleteUpload(NamedTuple):
    """A multipart upload that was started and neither completed nor aborted.

    Attributes:
        key: The key it would create, relative to the storage.
        upload_id: S3's id of the upload.
        initiated: When it was started (UTC).
    """

    key: str
    upload_id: str
    initiated: datetime.datetime


# Object metadata (x-amz-meta-hashsync-part-size) recording the part size of an upload, so a
# later check of a multipart ETag needs no part-size inference.
PART_SIZE_METADATA = "hashsync-part-size"
# The whole-content CRC64NVME of an upload (x-amz-meta-hashsync-crc64nvme): a digest of the
# object that, unlike a multipart ETag, does not depend on the part size. It is metadata, not
# S3's native full-object checksum (x-amz-checksum-crc64nvme): not every S3-compatible store
# implements the native one (it was not tried against SeaweedFS here), while user metadata is
# kept by all of them.
CRC64_METADATA = "hashsync-crc64nvme"
CLAIMS_DIR = ".hashsync-claims"
# DeleteObjects takes at most 1,000 keys; a few requests in flight keep the store busy.
_DELETE_BATCH = 1000
_DELETE_PARALLEL = 8
# The largest object a single CopyObject may copy.
_MAX_COPY_OBJECT = 5 * 1024**3
_MAX_PARTS = 10_000
_MIN_PART = 5 * 1024**2
_MAX_PART = 5 * 1024**3
_READ_CHUNK = 1024**2

_loader_lock = threading.Lock()
_shared_loader: Any = None


def _botocore_session() -> Any:
    """A new botocore session that shares the parsed service models with earlier ones.

    Loading the S3 model takes most of the ~150 ms a client costs; the loader only caches
    files shipped with botocore, so sharing it is safe, while credentials and configuration
    are still resolved afresh per session.
    """
    global _shared_loader
    import botocore.loaders
    import botocore.session

    with _loader_lock:
        if _shared_loader is None:
            _shared_loader = botocore.loaders.create_loader()
        loader = _shared_loader
    session = botocore.session.Session()
    session.register_component("data_loader", loader)
    return session


def _quoted(etag: str) -> str:
    return f'"{etag}"'


def _clean_etag(value: str) -> str:
    return normalize_hash(value)


class S3Storage(ReadWriteStorage):
    """A bucket (and optional key prefix) on S3 or any S3-compatible store.

    Endpoint and credentials follow boto3: arguments first, then the standard variables
    (``AWS_ENDPOINT_URL_S3``, ``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ``AWS_PROFILE``,
    ...), then the shared config files. A custom endpoint gets path-style addressing (what
    MinIO, SeaweedFS, Ceph and most others need) unless ``addressing_style`` says otherwise.

    Args:
        bucket: Bucket name.
        prefix: Key prefix inside the bucket; keys of this storage are relative to it
            (``"data"`` and ``"data/"`` are the same).
        endpoint_url: Endpoint of a non-AWS store, e.g. ``"http://127.0.0.1:9000"``.
        region_name: Region to sign for.
        profile_name: Profile from the AWS config files.
        anonymous: Send unsigned requests (public buckets); no credentials are looked up.
        aws_access_key_id: Explicit credentials (else boto3's chain).
        aws_secret_access_key: Explicit credentials.
        aws_session_token: Explicit credentials.
        addressing_style: ``"path"``, ``"virtual"`` or ``"auto"``; default: path for custom
            endpoints, boto3's choice for AWS.
        part_size: Multipart threshold and part size for uploads and downloads, and the part
            size ETags are predicted with (5 MiB to 5 GiB; default 8 MiB as s3transfer).
        max_concurrency: Parts transferred in parallel per object.
        max_attempts: Attempts per request, including the first; throttling and connection
            errors are retried with exponential backoff (botocore's "standard" mode).
        connect_timeout: Seconds to wait for a connection.
        read_timeout: Seconds to wait for data on an open connection.
        conditional_writes: ``"native"`` relies on the store's If-Match / If-None-Match;
            ``"claim"`` adds a claim object so that even stores whose multipart completion
            is not atomic (SeaweedFS) let exactly one writer win. See the module docs.
        claim_ttl: Seconds after which another writer's claim counts as abandoned.
        verify: Check downloads against the object's ETag (MD5-based ETags only; objects
            encrypted with SSE-KMS or SSE-C have ETags that are not content hashes). A
            multipart ETag of uneven parts is checked with the part sizes the store reports
            (``HEAD ?partNumber=N``); a store that does not report them leaves such an object
            unverifiable, and it is downloaded with a :class:`~hashsync.errors.HashsyncWarning`.
        client: A ready boto3 S3 client to use instead of building one (the endpoint,
            credential, retry and timeout arguments are then ignored).

    Raises:
        InvalidArgument: A bad bucket, prefix, part size or option.
    """

    claims_conditions = True

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        region_name: str | None = None,
        profile_name: str | None = None,
        anonymous: bool = False,
        aws_access_key_id: str | None = None,
        aws_secret_access_key: str | None = None,
        aws_session_token: str | None = None,
        addressing_style: Literal["path", "virtual", "auto"] | None = None,
        part_size: int = hashsync.DEFAULT_PART_SIZE,
        max_concurrency: int = 8,
        max_attempts: int = 5,
        connect_timeout: float = 10.0,
        read_timeout: float = 60.0,
        conditional_writes: Literal["native", "claim"] = "native",
        claim_ttl: float = 3600.0,
        verify: bool = True,
        client: BaseClient | None = None,
    ) -> None:
        if not isinstance(bucket, str) or not bucket or "/" in bucket:
            raise InvalidArgument(f"invalid bucket name {bucket!r}")
        if not _MIN_PART <= part_size <= _MAX_PART:
            raise InvalidArgument(f"part_size {part_size} is outside S3's limits (5 MiB to 5 GiB)")
        # What a pickled copy is rebuilt from: no client, and no credentials (a worker
        # resolves its own, from its environment or profile, like boto3 itself).
        self._options: dict[str, Any] | None = (
            None
            if client is not None
            else {
                "bucket": bucket,
                "prefix": prefix,
                "endpoint_url": endpoint_url,
                "region_name": region_name,
                "profile_name": profile_name,
                "anonymous": anonymous,
                "addressing_style": addressing_style,
                "part_size": part_size,
                "max_concurrency": max_concurrency,
                "max_attempts": max_attempts,
                "connect_timeout": connect_timeout,
                "read_timeout": read_timeout,
                "conditional_writes": conditional_writes,
                "claim_ttl": claim_ttl,
                "verify": verify,
            }
        )
        if conditional_writes not in ("native", "claim"):
            raise InvalidArgument(
                f"conditional_writes must be 'native' or 'claim', not {conditional_writes!r}"
            )
        if max_concurrency < 1 or max_attempts < 1:
            raise InvalidArgument("max_concurrency and max_attempts must be at least 1")
        prefix = prefix.strip("/")
        if prefix:
            validate_key(prefix)
            prefix += "/"
        self.bucket = bucket
        self.prefix = prefix
        self.part_size = part_size
        self.max_concurrency = max_concurrency
        self.max_attempts = max_attempts
        self.conditional_writes = conditional_writes
        self.claim_ttl = claim_ttl
        self.verify = verify
        self.anonymous = anonymous
        self.read_timeout = read_timeout
        self._client_lock = threading.Lock()
        self._static: _sigv4.StaticSettings | None = None
        if client is None:
            settings: dict[str, Any] = {
                "endpoint_url": endpoint_url,
                "region_name": region_name,
                "profile_name": profile_name,
                "anonymous": anonymous,
                "aws_access_key_id": aws_access_key_id,
                "aws_secret_access_key": aws_secret_access_key,
                "aws_session_token": aws_session_token,
                "addressing_style": addressing_style,
            }
            self._static = _sigv4.static_settings(**settings)
            if self._static is None:
                client = self._make_client(**settings, connect_timeout=connect_timeout)
            else:
                # Everything the lean request path needs is known: the botocore client (a
                # quarter of a second to import and build) waits until an operation needs it.
                self._build_client = lambda: self._make_client(
                    **settings, connect_timeout=connect_timeout
                )
                self._path_style = True
                self.endpoint_url = self._static.endpoint_url
        self._client = client
        if client is not None:
            self.endpoint_url = str(client.meta.endpoint_url).rstrip("/")
        self._part_slots = threading.BoundedSemaphore(max_concurrency)
        # Keys a listing showed larger than a part (few: big files), so a download goes
        # straight to HEAD + ranged GETs instead of a lean GET of one part that is thrown away.
        self._listed_large: dict[str, int] = {}

    _session: Any = None
    _path_style: bool = False
    _raw: Any = None
    endpoint_url: str
    """The endpoint requests go to (no trailing slash)."""
    # Whether single PUTs send x-amz-checksum-crc64nvme (turned off once a store refuses it).
    _native_checksums: bool = True

    # -- construction ------------------------------------------------------------------

    def _make_client(
        self,
        *,
        endpoint_url: str | None,
        region_name: str | None,
        profile_name: str | None,
        anonymous: bool,
        aws_access_key_id: str | None,
        aws_secret_access_key: str | None,
        aws_session_token: str | None,
        addressing_style: str | None,
        connect_timeout: float,
    ) -> BaseClient:
        # botocore directly, not boto3: boto3's session imports s3transfer and the AWS CRT
        # (about 80 ms of every command's start-up) for transfer methods hashsync never uses.
        import botocore.exceptions
        from botocore import UNSIGNED
        from botocore.config import Config

        session = _botocore_session()
        if profile_name is not None:
            session.set_config_variable("profile", profile_name)
        if region_name is not None:
            session.set_config_variable("region", region_name)
        if aws_access_key_id or aws_secret_access_key or aws_session_token:
            session.set_credentials(aws_access_key_id, aws_secret_access_key, aws_session_token)
        try:
            session.get_scoped_config()  # a missing profile is an error now, not at first use
        except botocore.exceptions.ProfileNotFound as exc:
            raise InvalidArgument(str(exc)) from None

        def build(style: str | None) -> BaseClient:
            options: dict[str, Any] = {
                "retries": {"max_attempts": self.max_attempts, "mode": "standard"},
                "connect_timeout": connect_timeout,
                "read_timeout": self.read_timeout,
                "max_pool_connections": max(10, 2 * self.max_concurrency),
                # Content-MD5 is sent explicitly; botocore's default CRC32 trailers are not
                # understood by every S3-compatible store.
                "request_checksum_calculation": "when_required",
                "response_checksum_validation": "when_required",
            }
            if style is not None:
                options["s3"] = {"addressing_style": style}
            if anonymous:
                options["signature_version"] = UNSIGNED
            try:
                return session.create_client(
                    "s3", endpoint_url=endpoint_url, config=Config(**options)
                )
            except (ValueError, botocore.exceptions.BotoCoreError) as exc:
                raise InvalidArgument(f"cannot create an S3 client: {redact(str(exc))}") from None

        if addressing_style is None and (
            endpoint_url
            or os.environ.get("AWS_ENDPOINT_URL_S3")
            or os.environ.get("AWS_ENDPOINT_URL")
        ):
            # Known to be custom up front: saves building the client twice.
            probe = endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or ""
            probe = probe or os.environ.get("AWS_ENDPOINT_URL", "")
            if not _sigv4.is_aws(probe):
                addressing_style = "path"
        client = build(addressing_style)
        if addressing_style is None:
            if not _sigv4.is_aws(client.meta.endpoint_url):
                # Virtual-hosted addressing needs wildcard DNS that custom stores lack.
                client = build("path")
                addressing_style = "path"
        self._session = session
        self._path_style = addressing_style == "path"
        return client

    @property
    def client(self) -> BaseClient:
        """The botocore S3 client (built on first use when the settings allowed waiting)."""
        if self._client is None:
            with self._client_lock:
                if self._client is None:
                    self._client = self._build_client()
        return self._client

    @classmethod
    def from_url(cls, url: str, **options: Any) -> S3Storage:
        """Create a storage from ``s3://bucket/prefix``.

        Args:
            url: The URL.
            **options: Keyword arguments of :class:`S3Storage`.

        Raises:
            InvalidArgument: Not an ``s3://`` URL with a bucket.
        """
        # Literally, as aws s3 does: "#", "?" and "%" are ordinary characters of S3 keys, so
        # no URL parsing (which would cut at "#"/"?" and percent-decode).
        scheme, sep, rest = url.partition("://")
        bucket, _, prefix = rest.partition("/")
        if scheme.lower() != "s3" or not sep or not bucket:
            raise InvalidArgument(f"not an s3://bucket/prefix URL: {redact_url(url)!r}")
        return cls(bucket, prefix, **options)

    def __getstate__(self) -> dict[str, Any]:
        if self._options is None:
            raise TypeError(
                f"{self!r} was built around a given boto3 client and cannot be pickled; "
                "build it from its endpoint and settings instead"
            )
        return {"options": self._options}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state["options"])  # type: ignore[misc]

    def __repr__(self) -> str:
        return f"S3Storage('s3://{self.bucket}/{self.prefix}')"

    def close(self) -> None:
        """Close the client's pooled connections."""
        if self._client is not None:
            with contextlib.suppress(Exception):
                self._client.close()
        if self._raw is not None:
            self._raw.close()

    # -- errors ------------------------------------------------------------------------

    def _error(self, exc: BaseException, key: str | None, action: str) -> HashsyncError:
        """Translate a boto3/botocore/urllib3 exception into a hashsync error."""
        import botocore.exceptions

        if key is None:
            where = f"s3://{self.bucket}/{self.prefix}"
        else:
            where = f"key {key!r} (s3://{self.bucket}/{self.prefix}{key})"
        if isinstance(exc, HashsyncError):
            return exc
        if isinstance(exc, botocore.exceptions.ClientError):
            error = exc.response.get("Error", {})
            code = str(error.get("Code", ""))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            message = redact(str(error.get("Message") or code or f"HTTP {status}"))
            text = f"{action} {where}: {message} ({code or status})"
            if code == "NoSuchBucket":
                return NotFound(
                    errno.ENOENT,
                    f"{action} {where}: bucket {self.bucket!r} does not exist (NoSuchBucket)",
                )
            error = error_for_status(status, text, code=code)
            if isinstance(error, StorageUnavailable):
                return StorageUnavailable(
                    errno.EAGAIN, f"{text}, after {self.max_attempts} attempts"
                )
            return error
        if isinstance(
            exc,
            botocore.exceptions.NoCredentialsError | (botocore.exceptions.PartialCredentialsError),
        ):
            return PermissionDenied(
                errno.EACCES,
                f"{action} {where}: no AWS credentials found (set AWS_ACCESS_KEY_ID / "
                "AWS_PROFILE, or use anonymous=True for a public bucket)",
            )
        if isinstance(exc, botocore.exceptions.ParamValidationError):
            return InvalidArgument(f"{action} {where}: {redact(str(exc))}")
        if isinstance(exc, (botocore.exceptions.BotoCoreError, OSError, *_stream_errors())):
            return StorageUnavailable(
                errno.ECONNREFUSED if "connect" in str(exc).lower() else errno.EIO,
                f"{action} {where}: store unreachable after {self.max_attempts} attempts: "
                f"{redact(str(exc))}",
            )
        return HashsyncError(redact(f"{action} {where}: {exc!r}"))

    def _call(self, action: str, key: str | None, method: Callable[..., Any], **kwargs: Any) -> Any:
        try:
            return method(**kwargs)
        except Exception as exc:
            raise self._error(exc, key, action) from exc

    # -- reading -----------------------------------------------------------------------

    def _full(self, key: str) -> str:
        return self.prefix + validate_key(key)

    def _head(self, key: str, **extra: Any) -> dict[str, Any]:
        full = self._full(key)
        return self._call(
            "HEAD", key, self.client.head_object, Bucket=self.bucket, Key=full, **extra
        )

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
        return _clean_etag(self._head(key)["ETag"])

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
        fast = self._fast_list(prefix)
        pages = [fast] if fast is not None else (objs for objs, _ in self._boto_pages(prefix))
        for objects in pages:
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

    def _boto_pages(
        self, prefix: str, delimiter: str | None = None
    ) -> Iterator[tuple[builtins.list[ObjectInfo], builtins.list[str]]]:
        """ListObjectsV2 pages through botocore: (objects, common prefixes) per page.

        Object keys are relative to this storage; common prefixes are full keys.
        """
        full = self.prefix + prefix
        options = {"Bucket": self.bucket, "Prefix": full}
        if delimiter:
            options["Delimiter"] = delimiter
        try:
            for page in self.client.get_paginator("list_objects_v2").paginate(**options):
                objects = []
                for item in page.get("Contents", []):
                    key = item["Key"]
                    if not key.startswith(full):
                        raise _s3list.outside_prefix(key, full)
                    objects.append(
                        ObjectInfo(
                            key[len(self.prefix) :],
                            int(item["Size"]),
                            item["LastModified"].astimezone(datetime.UTC),
                            _clean_etag(item["ETag"]) if item.get("ETag") else None,
                        )
                    )
                common = [cp["Prefix"] for cp in page.get("CommonPrefixes", [])]
                for p in common:
                    if not p.startswith(full):
                        raise _s3list.outside_prefix(p, full)
                yield objects, common
        except Exception as exc:
            raise self._error(exc, prefix, "LIST") from exc

    def get_crc64nvme(self, key: str) -> str | None:
        """The object's whole-content CRC64NVME (hex), or None if it carries none (one HEAD).

        From hashsync's upload metadata, else S3's native full-object checksum (which AWS
        SDKs have sent by default since 2025): unlike a multipart ETag, it does not depend on
        the part size, so it can compare content where an ETag cannot be matched.

        Raises:
            NotFound: No object has this key.
        """
        head = self._head(key, ChecksumMode="ENABLED")
        crc = (head.get("Metadata") or {}).get(CRC64_METADATA, "")
        if len(crc) == 16 and all(c in "0123456789abcdef" for c in crc):
            return crc
        return _native_crc64(head)

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
            return _part_span(asked[number])

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
        import botocore.exceptions

        extra: dict[str, Any] = {"IfMatch": _quoted(etag)} if etag else {}
        try:
            return self.client.head_object(
                Bucket=self.bucket, Key=self._full(key), PartNumber=number, **extra
            )
        except botocore.exceptions.ClientError as exc:
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if status in (400, 416, 501):
                # No such part, or partNumber not implemented: the sizes are not to be had.
                return None
            raise self._error(exc, key, "HEAD") from exc
        except Exception as exc:
            raise self._error(exc, key, "HEAD") from exc

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
        raw = self._raw_client()
        if raw is not None:
            with contextlib.suppress(_s3list.FallBack):
                return raw.count(self.prefix + prefix, limit)
        return super().count_keys(prefix, limit)

    def _level(self, prefix: str) -> tuple[builtins.list[ObjectInfo], builtins.list[str]]:
        """The objects directly under ``prefix`` and its sub-prefixes.

        One ListObjectsV2 with ``delimiter=/``; keys relative to this storage, claims and
        folder markers left out.
        """
        objects: list[ObjectInfo] | None = None
        raw = self._raw_client()
        if raw is not None:
            with contextlib.suppress(_s3list.FallBack):
                objects, common, _ = raw.walk(self.prefix + prefix, len(self.prefix), "/")
        if objects is None:
            objects, common = [], []
            for page_objects, page_common in self._boto_pages(prefix, "/"):
                objects.extend(page_objects)
                common.extend(page_common)
        claims = self.prefix + CLAIMS_DIR + "/"
        subdirs = sorted(p[len(self.prefix) :] for p in common if p != claims)
        return list(self._kept(objects)), subdirs

    def _fast_list(self, prefix: str) -> builtins.list[ObjectInfo] | None:
        """The whole listing through :mod:`hashsync.storage._s3list`, or None to use boto3.

        boto3's paginator spends ~100 us per object parsing XML into dicts and datetimes; a
        sync of 20,000 files spent most of its time there. The fast path signs the same
        ListObjectsV2 requests with botocore's signer and parses them with ElementTree,
        listing top-level "directories" in parallel. It is used for path-style endpoints
        (custom S3-compatible stores), where the request URL is simple to build; anything
        unusual (an error answer, a redirect) falls back to boto3, which maps the errors.
        """
        raw = self._raw_client()
        if raw is None:
            return None
        try:
            return _s3list.list_objects(raw, root_prefix=self.prefix, prefix=prefix)
        except _s3list.FallBack:
            return None

    def _raw_client(self) -> Any:
        """The lean request path (:mod:`._s3list`) for path-style endpoints, else None."""
        if not self._path_style:
            return None
        if self._static is None and (self._session is None or _sigv4.proxied(self.endpoint_url)):
            return None
        if self._raw is None:
            with _loader_lock:
                if self._raw is None:
                    self._raw = _s3list.RawClient(
                        endpoint_url=self.endpoint_url,
                        region=self._region(),
                        credentials=self._credential_source(),
                        bucket=self.bucket,
                        timeout=self.read_timeout,
                        ca_bundle=self._static.ca_bundle if self._static else None,
                    )
        return self._raw

    def _region(self) -> str:
        if self._static is not None:
            return self._static.region
        return self.client.meta.region_name or "us-east-1"

    def _credential_source(self) -> Callable[[], _sigv4.Credentials | None] | None:
        if self.anonymous:
            return None
        if self._static is not None:
            fixed = self._static.credentials
            return lambda: fixed
        found = self._session.get_credentials()
        if found is None:
            return None

        def current() -> _sigv4.Credentials:
            # Asked per request: botocore refreshes expiring (assumed-role, SSO) credentials.
            frozen = found.get_frozen_credentials()
            return _sigv4.Credentials(frozen.access_key, frozen.secret_key, frozen.token)

        return current

    def _put_small(
        self,
        key: str,
        data: bytes,
        md5_b64: str,
        metadata: dict[str, str],
        conditions: dict[str, str],
    ) -> dict[str, Any]:
        """PutObject of an in-memory body: the lean path first, boto3 if it cannot answer.

        The body's CRC64NVME goes along as S3's native full-object checksum, which the store
        checks on arrival and keeps (readers with ``ChecksumMode`` get it back); a store that
        refuses the request gets it again without the header, and if that succeeds, no more
        headers.
        """
        checksum: dict[str, str] = {}
        if self._native_checksums:
            crc = metadata.get(CRC64_METADATA) or hashsync.hash_bytes(data, "crc64nvme")
            checksum["ChecksumCRC64NVME"] = _b64_hex(crc)
        try:
            return self._put_once(key, data, md5_b64, metadata, {**conditions, **checksum})
        except HashsyncError as e:
            if not checksum or not _may_refuse_checksums(e):
                raise
            # A store that does not know the header; only if the plain request then succeeds
            # is the header blamed (and dropped for this storage's later uploads).
            answer = self._put_once(key, data, md5_b64, metadata, conditions)
            self._native_checksums = False
            return answer

    def _put_once(
        self,
        key: str,
        data: bytes,
        md5_b64: str,
        metadata: dict[str, str],
        conditions: dict[str, str],
    ) -> dict[str, Any]:
        raw = self._raw_client()
        if raw is not None:
            headers = {"Content-MD5": md5_b64, "Content-Length": str(len(data))}
            if "ChecksumCRC64NVME" in conditions:
                headers["x-amz-checksum-crc64nvme"] = conditions["ChecksumCRC64NVME"]
            headers.update({f"x-amz-meta-{k}": v for k, v in metadata.items()})
            if "IfMatch" in conditions:
                headers["If-Match"] = conditions["IfMatch"]
            if "IfNoneMatch" in conditions:
                headers["If-None-Match"] = conditions["IfNoneMatch"]
            try:
                answer = raw.put(self._full(key), data, headers)
                return {"ETag": answer.get("etag", "")}
            except _s3list.FallBack:
                pass  # boto3 repeats the request and maps whatever went wrong
        return self._call(
            "PUT",
            key,
            self.client.put_object,
            Bucket=self.bucket,
            Key=self._full(key),
            Body=data,
            ContentMD5=md5_b64,
            Metadata=metadata,
            **conditions,
        )

    # -- downloading -------------------------------------------------------------------

    def copy(self, key: str, destination: Sink) -> None:
        """Download ``key`` into ``destination`` atomically and verified.

        Parts of ``part_size`` are fetched in parallel with ranged GETs pinned to the ETag
        seen by a HEAD first (``If-Match``), so all parts come from one version. The file is
        checked against the size and (MD5-based) ETag, fsynced, given the object's
        Last-Modified as mtime and renamed into place. A part whose connection drops is
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
            head = self._head(key, ChecksumMode="ENABLED")
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
        if raw is None or key in self._listed_large:
            # Known to be large from a listing: the ranged GET would fetch a part for nothing.
            return False
        try:
            got = raw.get_small(self._full(key), self.part_size)
        except _s3list.FallBack:
            return False
        if got is None:
            return False
        headers, body = got
        import email.utils

        modified = email.utils.parsedate_to_datetime(headers.get("last-modified", ""))
        head = {
            "ETag": headers.get("etag", ""),
            "ContentLength": int(headers["content-length"]),
            "LastModified": modified,
            "ServerSideEncryption": headers.get("x-amz-server-side-encryption"),
            "SSECustomerAlgorithm": headers.get("x-amz-server-side-encryption-customer-algorithm"),
            "Metadata": {
                k[len("x-amz-meta-") :]: v
                for k, v in headers.items()
                if k.startswith("x-amz-meta-")
            },
        }

        def fill(tmp: Path) -> str:
            report = current_progress()
            with open(tmp, "wb") as fh:
                fh.write(body)
            if report is not None:
                report(len(body))
            if self.verify:
                self._verify_download(key, head, tmp, body=body)
            stamp = modified.timestamp()
            os.utime(tmp, (stamp, stamp))
            return _clean_etag(head["ETag"])

        sink.receive(key, fill)
        return True

    def _download(self, key: str, head: dict[str, Any], tmp: Path) -> str:
        """Fill ``tmp`` with the object's version that ``head`` describes; return its ETag."""
        size = int(head["ContentLength"])
        etag = _clean_etag(head["ETag"])
        ranges = [
            (start, min(start + self.part_size, size)) for start in range(0, size, self.part_size)
        ]
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
        mtime = head["LastModified"].timestamp()
        os.utime(tmp, (mtime, mtime))
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
        while offset < end:
            kwargs: dict[str, Any] = {
                "Bucket": self.bucket,
                "Key": self._full(key),
                "IfMatch": _quoted(etag),
            }
            if offset != 0 or end != size:
                kwargs["Range"] = f"bytes={offset}-{end - 1}"
            response = self._call("GET", key, self.client.get_object, **kwargs)
            body = response["Body"]
            try:
                while offset < end:
                    chunk = body.read(min(_READ_CHUNK, end - offset))
                    if not chunk:
                        break
                    os.pwrite(fd, chunk, offset)
                    offset += len(chunk)
                    if report is not None:
                        report(len(chunk))
            except Exception as exc:
                error = self._error(exc, key, "GET")
                if not isinstance(error, StorageUnavailable):
                    raise error from exc
                failures += 1
                if failures >= self.max_attempts:
                    raise error from exc
                wait_before_retry(failures)
                continue
            finally:
                with contextlib.suppress(Exception):
                    body.close()
            if offset < end:
                # The server closed the body early without an error: retry the rest.
                failures += 1
                if failures >= self.max_attempts:
                    raise StorageUnavailable(
                        errno.EIO, f"GET {self!r} {key!r}: body ended at byte {offset} of {size}"
                    )

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
        native = _native_crc64(head)
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
            [int(recorded)]
            if recorded.isdigit() and _MIN_PART <= int(recorded) <= _MAX_PART
            else []
        )
        etag = _clean_etag(head["ETag"])
        # Part HEADs asked for this check, by part number: the first one serves twice.
        asked: dict[int, dict[str, Any] | None] = {}

        def first_part_size() -> list[int]:
            # The size of part 1 is the part size of an upload by any tool that uses one
            # size; asked only when the usual candidates did not match.
            if 1 not in asked:
                asked[1] = self._part_head(key, 1, etag)
            span = _part_span(asked[1])
            return [span[0]] if span is not None and _MIN_PART <= span[0] <= _MAX_PART else []

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
            conditions["IfMatch"] = _quoted(if_match)
        if if_none_match:
            conditions["IfNoneMatch"] = "*"
        metadata = {PART_SIZE_METADATA: str(self.part_size)}
        report = current_progress()
        with open_nofollow(path) as fh:
            before = settled_fstat(fh.fileno())
            if before is None:
                raise _changed(path, key)
            size = before.st_size

            def unchanged() -> None:
                # Called after everything was read and before the object becomes visible:
                # a file written to meanwhile would be stored torn (with a checksum that
                # matches the torn body), so the upload is abandoned instead. The path is
                # checked too: a file replaced by rename leaves the open descriptor intact.
                if not same_version(before, os.fstat(fh.fileno())) or not same_version(
                    before, stat_or_none(path)
                ):
                    raise _changed(path, key)

            if size < self.part_size:
                data = fh.read(size + 1)
                if len(data) != size:
                    raise _changed(path, key)
                unchanged()
                # A second read must give the same bytes: writes through a shared mmap move no
                # timestamp, and one read racing them may see a mix that never existed whole.
                if os.pread(fh.fileno(), size + 1, 0) != data:
                    raise _changed(path, key)
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
                    metadata[CRC64_METADATA] = hashsync.hash_file(
                        f"/proc/self/fd/{fh.fileno()}" if _PROC_FD else path, "crc64nvme"
                    )
                except FileChanged:
                    raise _changed(path, key) from None
                identity = {
                    "dev": before.st_dev,
                    "ino": before.st_ino,
                    "size": size,
                    "mtime_ns": before.st_mtime_ns,
                    "ctime_ns": before.st_ctime_ns,
                    "part_size": self.part_size,
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
        etag = _clean_etag(response.get("ETag", ""))
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
        that refuses to create such an upload raises :class:`_ChecksumRefused` before any
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
                    self.client.abort_multipart_upload(
                        Bucket=self.bucket, Key=full, UploadId=old_id
                    )
            jr.remove(record)
        native: dict[str, str] = {}
        if crc64nvme is not None:
            native = {"ChecksumAlgorithm": "CRC64NVME", "ChecksumType": "FULL_OBJECT"}
        if upload_id is None:
            try:
                upload_id = self._call(
                    "CreateMultipartUpload",
                    key,
                    self.client.create_multipart_upload,
                    Bucket=self.bucket,
                    Key=full,
                    Metadata=metadata,
                    **native,
                )["UploadId"]
            except HashsyncError as exc:
                if not native or not _may_refuse_checksums(exc):
                    raise
                raise _ChecksumRefused(str(exc)) from exc
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
            response = self._call(
                "CompleteMultipartUpload",
                key,
                self.client.complete_multipart_upload,
                Bucket=self.bucket,
                Key=full,
                UploadId=upload_id,
                MultipartUpload={"Parts": sent},
                **(conditions or {}),
                **(
                    {"ChecksumCRC64NVME": _b64_hex(crc64nvme), "ChecksumType": "FULL_OBJECT"}
                    if crc64nvme is not None
                    else {}
                ),
            )
        except BaseException:
            with contextlib.suppress(Exception):
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=full, UploadId=upload_id)
            jr.remove(entry)
            raise
        jr.remove(entry)
        return response

    def _list_parts(self, key: str, upload_id: str) -> dict[int, tuple[str, int]] | None:
        """The parts an unfinished upload holds, ``{number: (etag, size)}``; None if it is gone."""
        held: dict[int, tuple[str, int]] = {}
        marker = 0
        try:
            while True:
                page = self._call(
                    "ListParts",
                    key,
                    self.client.list_parts,
                    Bucket=self.bucket,
                    Key=self._full(key),
                    UploadId=upload_id,
                    PartNumberMarker=marker,
                )
                for part in page.get("Parts", []):
                    held[int(part["PartNumber"])] = (_clean_etag(part["ETag"]), int(part["Size"]))
                if not page.get("IsTruncated"):
                    return held
                marker = int(page.get("NextPartNumberMarker") or 0)
                if not marker:
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
        count = -(-size // self.part_size)
        if count > _MAX_PARTS:
            raise InvalidArgument(
                f"{key!r} needs {count} parts of {self.part_size} bytes; S3 allows "
                f"{_MAX_PARTS}: use a part_size of at least {-(-size // _MAX_PARTS)}"
            )
        full = self._full(key)
        digests: list[bytes] = [b""] * count
        crcs: list[str] = [""] * count

        def sent_as_announced() -> None:
            # The bytes actually sent must be the bytes the metadata's CRC64NVME describes: a
            # writer that timestamps cannot reveal (a shared mmap) would otherwise be stored torn.
            whole = crcs[0]
            for number in range(2, count + 1):
                length = min(self.part_size, size - (number - 1) * self.part_size)
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
            offset = (number - 1) * self.part_size
            length = min(self.part_size, size - offset)
            data = os.pread(fd, length, offset)
            if len(data) != length:
                raise IntegrityError(f"{key!r}: file shrank during the upload")
            digest = hashlib.md5(data, usedforsecurity=False)
            digests[number - 1] = digest.digest()
            crcs[number - 1] = hashsync.hash_bytes(data, "crc64nvme")
            checksum = {"ChecksumCRC64NVME": _b64_hex(crcs[number - 1])} if native else {}
            if held is not None and held == (digest.hexdigest(), length):
                # A resumed upload already holds exactly these bytes.
                if report is not None:
                    report(length)
                return {"PartNumber": number, "ETag": _quoted(held[0]), **checksum}
            part = self._call(
                "UploadPart",
                key,
                self.client.upload_part,
                Bucket=self.bucket,
                Key=full,
                UploadId=upload_id,
                PartNumber=number,
                Body=data,
                ContentMD5=base64.b64encode(digest.digest()).decode(),
                **checksum,
            )
            if report is not None:
                report(length)
            return {"PartNumber": number, "ETag": part["ETag"], **checksum}

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
        except _ChecksumRefused:
            self._native_checksums = native = False
            identity = None if identity is None else {**identity, "native_checksum": False}
            response = self._multipart(
                key, metadata, count, send, conditions, sent_as_announced, identity=identity
            )
        combined = hashlib.md5(b"".join(digests), usedforsecurity=False).hexdigest()
        return response, f"{combined}-{count}"

    def copy_object_from(self, source: S3Storage, key: str) -> None:
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
        etag = _clean_etag(head["ETag"])
        copy_source = {"Bucket": source.bucket, "Key": source._full(key)}
        metadata = {PART_SIZE_METADATA: str(self.part_size)}
        # Keep the whole-content checksum: a store's ETag of copied parts may not be a content
        # hash (SeaweedFS's is not), and the checksum still verifies later downloads.
        crc = (head.get("Metadata") or {}).get(CRC64_METADATA)
        if crc:
            metadata[CRC64_METADATA] = crc
        full = self._full(key)
        report = current_progress()
        if size <= _MAX_COPY_OBJECT:
            self._call(
                "CopyObject",
                key,
                self.client.copy_object,
                Bucket=self.bucket,
                Key=full,
                CopySource=copy_source,
                CopySourceIfMatch=_quoted(etag),
                MetadataDirective="COPY",
            )
            if report is not None:
                report(size)
            return
        count = -(-size // self.part_size)

        def send(upload_id: str, number: int, _held: object) -> dict[str, Any]:
            start = (number - 1) * self.part_size
            end = min(start + self.part_size, size) - 1
            part = self._call(
                "UploadPartCopy",
                key,
                self.client.upload_part_copy,
                Bucket=self.bucket,
                Key=full,
                UploadId=upload_id,
                PartNumber=number,
                CopySource=copy_source,
                CopySourceIfMatch=_quoted(etag),
                CopySourceRange=f"bytes={start}-{end}",
            )
            if report is not None:
                report(end + 1 - start)
            return {"PartNumber": number, "ETag": part["CopyPartResult"]["ETag"]}

        self._multipart(key, metadata, count, send)

    def delete(self, key: str) -> None:
        """Delete the object ``key``.

        Raises:
            NotFound: No object has this key (S3 itself would accept the delete silently).
        """
        self._head(key)
        self._call(
            "DELETE", key, self.client.delete_object, Bucket=self.bucket, Key=self._full(key)
        )

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
        batches = [valid[i : i + _DELETE_BATCH] for i in range(0, len(valid), _DELETE_BATCH)]

        def one_by_one(batch: list[str]) -> None:
            for key in batch:
                try:
                    self._call(
                        "DELETE",
                        key,
                        self.client.delete_object,
                        Bucket=self.bucket,
                        Key=self._full(key),
                    )
                except HashsyncError as e:
                    outcomes[where[self._full(key)]] = e

        def send(batch: list[str]) -> None:
            try:
                answer = self._call(
                    "DELETE",
                    None,
                    self.client.delete_objects,
                    Bucket=self.bucket,
                    Delete={"Objects": [{"Key": self._full(k)} for k in batch], "Quiet": True},
                )
            except HashsyncError:
                one_by_one(batch)
                return
            for error in answer.get("Errors", []):
                full = error.get("Key", "")
                code = str(error.get("Code", ""))
                if full not in where:
                    continue
                message = redact(
                    f"DELETE key {full[len(self.prefix) :]!r} (s3://{self.bucket}/{full}): "
                    f"{error.get('Message') or code} ({code})"
                )
                outcomes[where[full]] = error_for_status(None, message, code=code)

        run_on_threads(send, batches, _DELETE_PARALLEL, fail_fast=True)
        return outcomes

    # -- sync seams -------------------------------------------------------------------

    def location(self) -> tuple[tuple[str, ...], str] | None:
        """``(("s3", endpoint, bucket), prefix)``, the endpoint normalised (scheme, host case)."""
        parts = urllib.parse.urlsplit(self.endpoint_url)
        endpoint = f"{parts.scheme.lower()}://{(parts.netloc or '').lower()}"
        return ("s3", endpoint, self.bucket), self.prefix

    def can_copy_server_side(self, source: Storage) -> bool:
        """True for another S3Storage on the same endpoint (CopyObject / UploadPartCopy)."""
        return isinstance(source, S3Storage) and source.endpoint_url == self.endpoint_url

    def transfer_from(self, key: str, source: Storage) -> None:
        """Upload, server-side copy (from S3 on the same endpoint), or copy through a temp dir."""
        if self.can_copy_server_side(source):
            self.copy_object_from(source, key)  # type: ignore[arg-type]
            return
        transfer_through_staging(self, key, source)

    def reclaim_abandoned(self) -> int:
        """Abort unfinished uploads that dead runs of this host left here (the journal's)."""
        return self.abort_abandoned_uploads()

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
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": self.prefix + prefix}
        while True:
            page = self._call(
                "ListMultipartUploads", prefix, self.client.list_multipart_uploads, **kwargs
            )
            for upload in page.get("Uploads", []):
                full = upload["Key"]
                if not full.startswith(self.prefix + prefix):
                    raise _s3list.outside_prefix(full, self.prefix + prefix)
                yield IncompleteUpload(
                    full[len(self.prefix) :],
                    upload["UploadId"],
                    upload["Initiated"].astimezone(datetime.UTC),
                )
            if not page.get("IsTruncated"):
                return
            kwargs["KeyMarker"] = page.get("NextKeyMarker", "")
            kwargs["UploadIdMarker"] = page.get("NextUploadIdMarker", "")

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
            self._call(
                "AbortMultipartUpload",
                upload.key,
                self.client.abort_multipart_upload,
                Bucket=self.bucket,
                Key=self._full(upload.key),
                UploadId=upload.upload_id,
            )
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
                self.client.abort_multipart_upload(
                    Bucket=self.bucket, Key=info["key"], UploadId=info["upload_id"]
                )
                aborted += 1
            jr.remove(record)
        return aborted

    # -- conditional writes ------------------------------------------------------------

    def _current_etag(self, key: str) -> str | None:
        try:
            return _clean_etag(self._head(key)["ETag"])
        except NotFound:
            return None

    def copy_from_if_local_is_newer(self, key: str, source: FilesystemStorage) -> bool:
        """Upload ``source``'s file if its mtime is later than the object's Last-Modified.

        The upload is conditional on the ETag seen when deciding, so an object another
        writer uploaded meanwhile (which is newer still) is kept.

        Returns:
            True if uploaded; False if the object is as new or newer.
        """
        validate_key(key)
        path = source_file(source, key)
        try:
            head = self._head(key)
        except NotFound:
            head = None
        if head is not None:
            remote = head["LastModified"].timestamp()
            if path.stat().st_mtime <= remote:
                return False
        try:
            self._conditional_upload(key, path, None if head is None else _clean_etag(head["ETag"]))
        except PreconditionFailed:
            return False
        return True

    def copy_from_if_overwriting_hash(
        self, key: str, hash: str | None, source: FilesystemStorage
    ) -> None:
        """Upload ``source``'s file only if the object's ETag is still ``hash``.

        Sends ``If-Match`` (or ``If-None-Match: *`` when ``hash`` is ``None``); see the
        module documentation for how atomic each store makes this.

        Raises:
            PreconditionFailed: The object has another ETag, is missing although ``hash``
                was given, exists although ``hash`` is ``None``, or another writer holds
                the claim on this version (``conditional_writes="claim"``).
        """
        validate_key(key)
        expected = None if hash is None else normalize_hash(hash)
        path = source_file(source, key)
        self._conditional_upload(key, path, expected)

    def _conditional_upload(self, key: str, path: Path, expected: str | None) -> None:
        with self._claim(key, expected):
            current = self._current_etag(key)
            if current != expected:
                raise PreconditionFailed(_mismatch(key, self, expected, current))
            try:
                self._upload(key, path, if_match=expected, if_none_match=expected is None)
            except NotFound as exc:
                # AWS answers If-Match on a missing key with 404 NoSuchKey.
                raise PreconditionFailed(_mismatch(key, self, expected, None)) from exc
            except PreconditionFailed as exc:
                raise PreconditionFailed(
                    f"{_mismatch(key, self, expected, self._current_etag(key))} "
                    f"(the store refused the write: {exc})"
                ) from exc

    def write_bytes(
        self, key: str, data: bytes, *, create_only: bool = False, if_hash: str | None = None
    ) -> str:
        """Store ``data`` with one PutObject, its condition checked by the store alone.

        Unlike :meth:`copy_from_if_overwriting_hash` there is no HEAD first, so a store that
        ignores ``If-None-Match`` / ``If-Match`` really does ignore them here (which is how
        :mod:`hashsync.treecache` finds such stores out). With ``conditional_writes="claim"``
        the write also takes the claim on the version it replaces.

        Returns:
            The new object's ETag (checked against the MD5 of ``data``).

        Raises:
            PreconditionFailed: The store refused the condition.
            InvalidArgument: Both conditions were given.
        """
        validate_key(key)
        if create_only and if_hash is not None:
            raise InvalidArgument("give create_only or if_hash, not both")
        expected = None if if_hash is None else normalize_hash(if_hash)
        conditions: dict[str, str] = {}
        if create_only:
            conditions["IfNoneMatch"] = "*"
        elif expected is not None:
            conditions["IfMatch"] = _quoted(expected)
        md5 = hashlib.md5(data)
        claim = self._claim(key, expected) if conditions else contextlib.nullcontext()
        with claim:
            try:
                answer = self._put_small(
                    key, data, base64.b64encode(md5.digest()).decode(), {}, conditions
                )
            except NotFound as exc:
                if expected is None:
                    raise
                raise PreconditionFailed(_mismatch(key, self, expected, None)) from exc
        etag = _clean_etag(answer.get("ETag", ""))
        if etag and etag != md5.hexdigest():
            raise IntegrityError(
                f"the store answered ETag {etag} for {key!r}, not the MD5 {md5.hexdigest()} of "
                "what was sent"
            )
        return etag or md5.hexdigest()

    def delete_if_hash_matches(self, key: str, hash: str) -> None:
        """Delete the object only if its ETag is ``hash`` (``If-Match`` on DeleteObject).

        Raises:
            PreconditionFailed: The object has another ETag.
            NotFound: No object has this key.
        """
        expected = normalize_hash(hash)
        current = _clean_etag(self._head(key)["ETag"])
        if current != expected:
            raise PreconditionFailed(_mismatch(key, self, expected, current))
        self._call(
            "DELETE",
            key,
            self.client.delete_object,
            Bucket=self.bucket,
            Key=self._full(key),
            IfMatch=_quoted(expected),
        )

    @contextlib.contextmanager
    def _claim(self, key: str, expected: str | None) -> Iterator[None]:
        if self.conditional_writes != "claim":
            yield
            return
        name = hashlib.sha256(f"{key}\0{expected or ''}".encode()).hexdigest()
        claim = f"{self.prefix}{CLAIMS_DIR}/{name}"
        body = json.dumps(
            {
                "key": key,
                "expected": expected,
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "time": time.time(),
            }
        ).encode()
        for attempt in range(2):
            try:
                self._call(
                    "PUT",
                    key,
                    self.client.put_object,
                    Bucket=self.bucket,
                    Key=claim,
                    Body=body,
                    IfNoneMatch="*",
                )
                break
            except PreconditionFailed:
                if attempt == 0 and self._break_stale_claim(key, claim):
                    continue
                raise PreconditionFailed(
                    f"another writer is replacing version {expected or '(absent)'} of "
                    f"{key!r} in {self!r} (claim {claim} exists)"
                ) from None
        try:
            yield
        finally:
            with contextlib.suppress(Exception):
                self.client.delete_object(Bucket=self.bucket, Key=claim)

    def _break_stale_claim(self, key: str, claim: str) -> bool:
        try:
            head = self._call("HEAD", key, self.client.head_object, Bucket=self.bucket, Key=claim)
        except NotFound:
            return True  # released meanwhile: try again
        age = time.time() - head["LastModified"].timestamp()
        if age <= self.claim_ttl:
            return False
        with contextlib.suppress(NotFound, PreconditionFailed):
            # If-Match: of two writers breaking the same stale claim, only one deletes it.
            self._call(
                "DELETE",
                key,
                self.client.delete_object,
                Bucket=self.bucket,
                Key=claim,
                IfMatch=head["ETag"],
            )
        return True


def _may_refuse_checksums(exc: HashsyncError) -> bool:
    """Whether a failed request could be a store that does not know S3's checksum headers.

    Not when the store answered about access, existence, a condition or its own health, nor
    when it checked the checksum and found the data wrong (BadDigest).
    """
    if isinstance(exc, PreconditionFailed | PermissionDenied | NotFound | StorageUnavailable):
        return False
    return "BadDigest" not in str(exc)


class _ChecksumRefused(Exception):
    """The store would not create a multipart upload with a native checksum."""


def _b64_hex(hex_digest: str) -> str:
    """A hex digest as S3's checksum headers write it (base64 of the big-endian bytes)."""
    return base64.b64encode(bytes.fromhex(hex_digest)).decode()


def _native_crc64(head: dict[str, Any]) -> str | None:
    """The object's native full-object CRC64NVME (hex) from a HEAD with ChecksumMode, if any."""
    value = head.get("ChecksumCRC64NVME")
    if not value or head.get("ChecksumType", "FULL_OBJECT") != "FULL_OBJECT":
        return None
    try:
        raw = base64.b64decode(value, validate=True)
    except ValueError:
        return None
    return raw.hex() if len(raw) == 8 else None


def _part_span(head: dict[str, Any] | None) -> tuple[int, int | None, int | None, int] | None:
    """``(length, start, object size, parts count)`` from a ``HEAD ?partNumber=N`` answer.

    Start and object size come from Content-Range and are None if the store sends none. None
    for an answer without a parts count (a store that ignored ``partNumber``) or whose
    Content-Range contradicts its length.
    """
    if head is None:
        return None
    count = head.get("PartsCount")
    length = head.get("ContentLength")
    if not isinstance(count, int) or count < 1 or not isinstance(length, int) or length < 0:
        return None
    content_range = head.get("ContentRange")
    if not content_range:
        return length, None, None, count
    unit, _, spec = str(content_range).strip().partition(" ")
    span, _, total = spec.partition("/")
    first, _, last = span.partition("-")
    if unit != "bytes" or not (first.isdigit() and last.isdigit() and total.isdigit()):
        return None
    if int(last) - int(first) + 1 != length:
        return None
    return length, int(first), int(total), count


def _mismatch(key: str, store: object, expected: str | None, current: str | None) -> str:
    if expected is None:
        return f"key {key!r} already exists in {store!r} (create-only write)"
    if current is None:
        return f"key {key!r} does not exist in {store!r} (expected ETag {expected})"
    return f"key {key!r} in {store!r} has ETag {current}, not the expected {expected}"


_PROC_FD = os.path.isdir("/proc/self/fd")


def _changed(path: Path, key: str) -> FileChanged:
    error = FileChanged(f"{str(path)!r} changed while it was uploaded as {key!r}")
    error.path = str(path)
    return error


def _stream_errors() -> tuple[type[BaseException], ...]:
    """Exceptions a response body raises when the connection breaks mid-read."""
    import http.client

    import urllib3.exceptions

    return (urllib3.exceptions.HTTPError, http.client.HTTPException)
