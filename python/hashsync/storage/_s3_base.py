"""The S3 storage's foundation: configuration, the request path and its errors.

Settings (from arguments and the environment, or resolved once by botocore), the client every
request goes through (:mod:`hashsync.storage._s3list`, the Rust transport), and the mapping of
what it raises to :mod:`hashsync.errors`.
"""

from __future__ import annotations

import base64
import datetime
import errno
import os
import threading
import urllib.parse
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

import hashsync
from hashsync._redact import redact
from hashsync.errors import (
    HashsyncError,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    PreconditionFailed,
    StorageUnavailable,
    error_for_status,
)
from hashsync.storage import _s3_settings, _s3list
from hashsync.storage.base import (
    ReadWriteStorage,
    validate_key,
)
from hashsync.storage.local import normalize_hash
from hashsync.storage.upload_options import UploadOptions

if TYPE_CHECKING:
    from botocore.client import BaseClient


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
DELETE_BATCH = 1000
DELETE_PARALLEL = 8
# The largest object a single CopyObject may copy.
MAX_COPY_OBJECT = 5 * 1024**3
MAX_PARTS = 10_000
MIN_PART = 5 * 1024**2
MAX_PART = 5 * 1024**3

_loader_lock = threading.Lock()
_shared_loader: Any = None


def botocore_session() -> Any:
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


def quoted_etag(etag: str) -> str:
    return f'"{etag}"'


def clean_etag(value: str) -> str:
    return normalize_hash(value)


class S3Base(ReadWriteStorage):
    """Configuration, request paths and error mapping of :class:`~hashsync.storage.S3Storage`."""

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
        conditional_writes: Literal["native", "claim", "best-effort"] = "native",
        claim_ttl: float = 3600.0,
        verify: bool = True,
        client: BaseClient | None = None,
        upload: UploadOptions | None = None,
        request_payer: Literal["requester"] | None = None,
    ) -> None:
        if not isinstance(bucket, str) or not bucket or "/" in bucket:
            raise InvalidArgument(f"invalid bucket name {bucket!r}")
        if not MIN_PART <= part_size <= MAX_PART:
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
                "upload": upload,
                "request_payer": request_payer,
            }
        )
        if upload is not None and not isinstance(upload, UploadOptions):
            raise InvalidArgument(f"upload must be an UploadOptions, not {upload!r}")
        if request_payer not in (None, "requester"):
            raise InvalidArgument(f"request_payer must be 'requester', not {request_payer!r}")
        #: What every upload carries besides the content (type, encryption, class, ...).
        self.upload = upload or UploadOptions()
        self.request_payer = request_payer
        if conditional_writes not in ("native", "claim", "best-effort"):
            raise InvalidArgument(
                "conditional_writes must be 'native', 'claim' or 'best-effort', not "
                f"{conditional_writes!r}"
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
        self.connect_timeout = connect_timeout
        self._client_lock = threading.Lock()
        self._static: _s3_settings.StaticSettings | None = None
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
            self._static = _s3_settings.static_settings(**settings)
            if self._static is None:
                client = self._make_client(**settings, connect_timeout=connect_timeout)
            else:
                # Everything the transport needs is known: the botocore client (a quarter of a
                # second to import and build) is built only if something asks for it.
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

        session = botocore_session()
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
            # SigV4 explicitly: botocore still presigns with SigV2 by default on some
            # endpoints, which AWS no longer accepts in new regions.
            options["signature_version"] = UNSIGNED if anonymous else "s3v4"
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
            if not _s3_settings.is_aws(probe):
                addressing_style = "path"
        client = build(addressing_style)
        if addressing_style is None:
            if not _s3_settings.is_aws(client.meta.endpoint_url):
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

    # -- errors ------------------------------------------------------------------------

    def _where(self, key: str | None) -> str:
        if key is None:
            return f"s3://{self.bucket}/{self.prefix}"
        return f"key {key!r} (s3://{self.bucket}/{self.prefix}{key})"

    def _refusal(
        self, status: int | None, code: str, message: str, where: str, action: str
    ) -> HashsyncError:
        """The hashsync error for the store's error answer (status, S3 error code, message)."""
        # A HEAD's answer has no body: say what its status means.
        said = {404: "not found", 403: "access denied", 401: "not authorized"}
        message = redact(message or code or said.get(status or 0) or f"HTTP {status}")
        text = f"{action} {where}: {message} ({code or f'HTTP {status}'})"
        if code == "NoSuchBucket":
            return NotFound(
                errno.ENOENT,
                f"{action} {where}: bucket {self.bucket!r} does not exist (NoSuchBucket)",
            )
        error = error_for_status(status, text, code=code)
        if isinstance(error, StorageUnavailable):
            return StorageUnavailable(errno.EAGAIN, f"{text}, after {self.max_attempts} attempts")
        return error

    def _raw_error(self, exc: _s3list.ErrorAnswer, key: str | None, action: str) -> HashsyncError:
        """Translate an error of the Rust transport path into a hashsync error."""
        where = self._where(key)
        if exc.status is not None:
            return self._refusal(exc.status, exc.code, exc.message, where, action)
        if exc.code == "InvalidRequest":
            return InvalidArgument(redact(f"{action} {where}: {exc.message}"))
        if exc.code == "CertificateError":
            return StorageUnavailable(
                errno.EPROTO,
                f"{action} {where}: the store's TLS certificate is not trusted: "
                f"{redact(exc.message)} (a store with its own certificate authority needs "
                "AWS_CA_BUNDLE naming that authority's PEM file)",
            )
        return self._unreachable(exc.message, where, action)

    def _unreachable(self, reason: str, where: str, action: str) -> StorageUnavailable:
        """The error for a request that got no answer after every attempt."""
        refused = "refused" in reason.lower() or "connect" in reason.lower()
        return StorageUnavailable(
            errno.ECONNREFUSED if refused else errno.EIO,
            f"{action} {where}: store unreachable after {self.max_attempts} attempts: "
            f"{redact(reason)}",
        )

    # -- reading -----------------------------------------------------------------------

    def _full(self, key: str) -> str:
        return self.prefix + validate_key(key)

    def _head(self, key: str, *, checksum: bool = False, full: str | None = None) -> dict[str, Any]:
        """HeadObject: botocore-shaped fields (:func:`head_fields`).

        Args:
            key: The object (named in errors).
            checksum: Ask for the native full-object checksum (``x-amz-checksum-mode``).
            full: The object's whole key when it is outside the storage's keys (claims).
        """
        headers = {"x-amz-checksum-mode": "ENABLED"} if checksum else {}
        full = self._full(key) if full is None else full
        try:
            return head_fields(self._raw_client().head(full, headers))
        except _s3list.ErrorAnswer as exc:
            raise self._raw_error(exc, key, "HEAD") from None

    def _raw_client(self) -> _s3list.RawClient:
        """The client every request goes through (the Rust transport, :mod:`._s3list`).

        Its settings are known without botocore for a custom endpoint with credentials from
        arguments or the environment; otherwise botocore resolves them once (endpoint,
        region, addressing, credentials with their refresh, proxies, CA bundle) and sends
        nothing itself.
        """
        if self._raw is None:
            with _loader_lock:
                if self._raw is None:
                    self._raw = self._new_raw_client()
        return self._raw

    def _new_raw_client(self) -> _s3list.RawClient:
        proxy = _s3list.proxy_for(self.endpoint_url)
        if self._static is not None:
            region, ca_bundle = self._static.region, self._static.ca_bundle
        else:
            client = self.client
            region = client.meta.region_name or "us-east-1"
            if self._session is None:
                # A client given by the caller: where would it send a request for this
                # bucket? Its presigned URL says (no request is made).
                url = client.generate_presigned_url(
                    "head_object", Params={"Bucket": self.bucket, "Key": "k"}, ExpiresIn=60
                )
                host = urllib.parse.urlsplit(url).hostname or ""
                self._path_style = not host.startswith(self.bucket.lower() + ".")
            proxies = getattr(client.meta.config, "proxies", None) or {}
            proxy = proxies.get(self.endpoint_url.partition("://")[0].lower()) or proxy
            session = getattr(getattr(client, "_endpoint", None), "http_session", None)
            verify = getattr(session, "_verify", None)
            ca_bundle = verify if isinstance(verify, str) else None
        return _s3list.RawClient(
            endpoint_url=self.endpoint_url,
            region=region,
            credentials=self._credential_source(),
            bucket=self.bucket,
            timeout=self.read_timeout,
            ca_bundle=ca_bundle,
            max_attempts=self.max_attempts,
            connect_timeout=self.connect_timeout,
            virtual=not self._path_style,
            proxy=proxy,
            always={"x-amz-request-payer": "requester"} if self.request_payer else None,
        )

    def _credential_source(self) -> Callable[[], _s3_settings.Credentials | None] | None:
        if self.anonymous:
            return None
        if self._static is not None:
            fixed = self._static.credentials
            return lambda: fixed
        if self._session is not None:
            found = self._session.get_credentials()
        else:
            # A client given by the caller: the credentials its requests would be signed with.
            from botocore import UNSIGNED

            if self.client.meta.config.signature_version is UNSIGNED:
                return None
            signer = getattr(self.client, "_request_signer", None)
            found = getattr(signer, "_credentials", None)
        if found is None:
            where = f"s3://{self.bucket}/{self.prefix}"

            def missing() -> _s3_settings.Credentials:
                raise PermissionDenied(
                    errno.EACCES,
                    f"{where}: no AWS credentials found (set AWS_ACCESS_KEY_ID / AWS_PROFILE, "
                    "or use anonymous=True for a public bucket)",
                )

            return missing

        def current() -> _s3_settings.Credentials:
            # Asked per request: botocore refreshes expiring (assumed-role, SSO) credentials.
            frozen = found.get_frozen_credentials()
            return _s3_settings.Credentials(frozen.access_key, frozen.secret_key, frozen.token)

        return current

    def _put_small(
        self,
        key: str,
        data: bytes,
        md5_b64: str,
        metadata: dict[str, str],
        conditions: dict[str, str],
    ) -> dict[str, Any]:
        """PutObject of an in-memory body, with S3's native checksum where the store takes it.

        The body's CRC64NVME goes along as S3's native full-object checksum, which the store
        checks on arrival and keeps (readers with ``ChecksumMode`` get it back); a store that
        refuses the request gets it again without the header, and if that succeeds, no more
        headers.
        """
        checksum: dict[str, str] = {}
        if self._native_checksums:
            crc = metadata.get(CRC64_METADATA) or hashsync.hash_bytes(data, "crc64nvme")
            checksum["ChecksumCRC64NVME"] = b64_of_hex(crc)
        try:
            return self._put_once(key, data, md5_b64, metadata, {**conditions, **checksum})
        except HashsyncError as e:
            if not checksum or not may_refuse_checksums(e):
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
        *,
        full: str | None = None,
    ) -> dict[str, Any]:
        """One PutObject; ``full`` addresses an object outside the storage's keys (claims)."""
        # Encryption and ACL on every write (bucket policies demand them of all objects);
        # content type, metadata and class on the storage's own keys, not on claims.
        headers = self.upload.s3_policy_headers() if full else self.upload.s3_headers(key)
        full = self._full(key) if full is None else full
        headers.update({"Content-MD5": md5_b64, "Content-Length": str(len(data))})
        if "ChecksumCRC64NVME" in conditions:
            headers["x-amz-checksum-crc64nvme"] = conditions["ChecksumCRC64NVME"]
        headers.update({f"x-amz-meta-{k}": v for k, v in metadata.items()})
        if "IfMatch" in conditions:
            headers["If-Match"] = conditions["IfMatch"]
        if "IfNoneMatch" in conditions:
            headers["If-None-Match"] = conditions["IfNoneMatch"]
        try:
            answer = self._raw_client().put(full, data, headers)
        except _s3list.ErrorAnswer as exc:
            raise self._raw_error(exc, key, "PUT") from None
        return {
            "ETag": answer.get("etag", ""),
            "ServerSideEncryption": answer.get("x-amz-server-side-encryption"),
        }


def may_refuse_checksums(exc: HashsyncError) -> bool:
    """Whether a failed request could be a store that does not know S3's checksum headers.

    Not when the store answered about access, existence, a condition or its own health, nor
    when it checked the checksum and found the data wrong (BadDigest).
    """
    if isinstance(exc, PreconditionFailed | PermissionDenied | NotFound | StorageUnavailable):
        return False
    return "BadDigest" not in str(exc)


class ChecksumRefused(Exception):
    """The store would not create a multipart upload with a native checksum."""


def b64_of_hex(hex_digest: str) -> str:
    """A hex digest as S3's checksum headers write it (base64 of the big-endian bytes)."""
    return base64.b64encode(bytes.fromhex(hex_digest)).decode()


def native_crc64(head: dict[str, Any]) -> str | None:
    """The object's native full-object CRC64NVME (hex) from a HEAD with ChecksumMode, if any."""
    value = head.get("ChecksumCRC64NVME")
    if not value or head.get("ChecksumType", "FULL_OBJECT") != "FULL_OBJECT":
        return None
    try:
        raw = base64.b64decode(value, validate=True)
    except ValueError:
        return None
    return raw.hex() if len(raw) == 8 else None


def part_span(head: dict[str, Any] | None) -> tuple[int, int | None, int | None, int] | None:
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


def mismatch_message(key: str, store: object, expected: str | None, current: str | None) -> str:
    if expected is None:
        return f"key {key!r} already exists in {store!r} (create-only write)"
    if current is None:
        return f"key {key!r} does not exist in {store!r} (expected ETag {expected})"
    return f"key {key!r} in {store!r} has ETag {current}, not the expected {expected}"


def head_fields(headers: dict[str, str]) -> dict[str, Any]:
    """A HEAD answer's headers (lower-case names) as the fields botocore's HeadObject gives."""
    import email.utils

    out: dict[str, Any] = {
        "ETag": headers.get("etag", ""),
        "ContentLength": int(headers.get("content-length") or 0),
        "Metadata": {
            k[len("x-amz-meta-") :]: v for k, v in headers.items() if k.startswith("x-amz-meta-")
        },
    }
    modified = headers.get("last-modified")
    if modified:
        out["LastModified"] = email.utils.parsedate_to_datetime(modified)
    for field, name in (
        ("ChecksumCRC64NVME", "x-amz-checksum-crc64nvme"),
        ("ChecksumType", "x-amz-checksum-type"),
        ("ContentRange", "content-range"),
        ("ServerSideEncryption", "x-amz-server-side-encryption"),
        ("SSECustomerAlgorithm", "x-amz-server-side-encryption-customer-algorithm"),
    ):
        if name in headers:
            out[field] = headers[name]
    parts = headers.get("x-amz-mp-parts-count", "")
    if parts.isdigit():
        out["PartsCount"] = int(parts)
    return out
