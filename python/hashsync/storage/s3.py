"""S3Storage: any S3-compatible object store, through hashsync's Rust transport.

The class is assembled from one module per job: ``_s3_base`` (configuration, the request
path, errors), ``_s3_ops`` (multipart, copy and delete requests), ``_s3_reading`` (HEAD,
listings, downloads), ``_s3_writing`` (uploads, copies, deletes, unfinished uploads) and
``_s3_conditional`` (conditional writes, claims). Requests are signed and sent by
:class:`hashsync._native.S3Transport`; botocore only resolves settings that arguments and the
environment do not decide (profiles, SSO, instance metadata, AWS endpoints).

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
* moto's server (5.x) honours them everywhere except ``If-Match`` on
  CompleteMultipartUpload, where only the HEAD check holds (``"claim"`` closes that too).
* A store that ignores the headers altogether (``rclone serve s3``, 1.75) would overwrite
  silently, and claims cannot help there (creating one is a create-only write). The first
  conditional write on a store checks it once (:mod:`hashsync.storage.conditions`: two
  create-only writes raced, a create-only and a wrong ``If-Match`` write of an existing key),
  and create-only / if-hash writes on such a store raise
  :class:`~hashsync.errors.ConditionsNotEnforced` (a :class:`~hashsync.errors.PreconditionFailed`)
  naming the store, unless ``conditional_writes="best-effort"`` accepts the HEAD check
  alone. ``copy_from_if_local_is_newer`` is best effort on every store.

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

import contextlib
import urllib.parse
from typing import Any

from hashsync._redact import redact_url
from hashsync.errors import InvalidArgument
from hashsync.storage._s3_base import (
    CLAIMS_DIR,
    CRC64_METADATA,
    PART_SIZE_METADATA,
    IncompleteUpload,
)
from hashsync.storage._s3_conditional import S3Conditional
from hashsync.storage.base import Storage, validate_key
from hashsync.storage.local import transfer_through_staging

__all__ = [
    "CLAIMS_DIR",
    "CRC64_METADATA",
    "PART_SIZE_METADATA",
    "IncompleteUpload",
    "S3Storage",
]


class S3Storage(S3Conditional):
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
            errors are retried with exponential backoff (as botocore's "standard" mode).
        connect_timeout: Seconds to wait for a connection.
        read_timeout: Seconds to wait for data on an open connection.
        conditional_writes: ``"native"`` relies on the store's If-Match / If-None-Match;
            ``"claim"`` adds a claim object so that even stores whose multipart completion
            is not atomic (SeaweedFS) let exactly one writer win. In both modes the first
            conditional write checks once that the store enforces the headers at all
            (:mod:`hashsync.storage.conditions`); where it does not, create-only and if-hash
            writes are refused with :class:`~hashsync.errors.ConditionsNotEnforced` instead
            of silently overwriting. ``"best-effort"`` skips that check: the HEAD before the
            write is then all that holds off another writer. See the module docs.
        claim_ttl: Seconds after which another writer's claim counts as abandoned.
        verify: Check downloads against the object's ETag (MD5-based ETags only; objects
            encrypted with SSE-KMS or SSE-C have ETags that are not content hashes). A
            multipart ETag of uneven parts is checked with the part sizes the store reports
            (``HEAD ?partNumber=N``); a store that does not report them leaves such an object
            unverifiable, and it is downloaded with a :class:`~hashsync.errors.HashsyncWarning`.
        client: A ready boto3 S3 client whose settings to use instead of resolving them:
            its endpoint, region, addressing, credentials, proxies and CA bundle (the
            endpoint and credential arguments are then ignored). Requests are still sent by
            hashsync's transport, so the client's event handlers do not run.

    Raises:
        InvalidArgument: A bad bucket, prefix, part size or option.
    """

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

    def presign(self, key: str, expires_in: int = 3600) -> str:
        """A URL that lets anyone GET ``key`` for ``expires_in`` seconds (``aws s3 presign``).

        Signed locally with this storage's credentials (no request is sent); the object need
        not exist yet.

        Raises:
            InvalidArgument: Anonymous storages cannot sign; ``expires_in`` outside 1 s to
                7 days (SigV4's limit).
        """
        if self.anonymous:
            raise InvalidArgument("an anonymous storage has no credentials to sign a URL with")
        if not 1 <= expires_in <= 7 * 24 * 3600:
            raise InvalidArgument(f"expires_in must be 1 to 604800 seconds, not {expires_in}")
        params: dict[str, Any] = {"Bucket": self.bucket, "Key": self._full(validate_key(key))}
        if self.request_payer:
            params["RequestPayer"] = self.request_payer
        return str(
            self.client.generate_presigned_url("get_object", Params=params, ExpiresIn=expires_in)
        )

    def reclaim_abandoned(self) -> int:
        """Abort unfinished uploads that dead runs of this host left here (the journal's)."""
        return self.abort_abandoned_uploads()
