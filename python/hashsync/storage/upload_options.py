"""What an upload carries besides the content: the options of ``aws s3 cp`` / ``aws s3 sync``.

:class:`UploadOptions` holds them once, for a storage (``S3Storage(..., upload=...)``) or a
sync (``hashsync.sync(..., upload=...)``); the CLI's ``--content-type``, ``--cache-control``,
``--content-encoding``, ``--metadata``, ``--storage-class``, ``--sse``, ``--sse-kms-key-id`` and
``--acl`` fill it. Content decides what a sync copies: a change of these options alone does not
make a file "changed".
"""

from __future__ import annotations

import json
import mimetypes
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from hashsync.errors import InvalidArgument

__all__ = ["ACLS", "STORAGE_CLASSES", "UploadOptions", "parse_metadata"]

#: The storage classes ``aws s3 cp --storage-class`` offers.
STORAGE_CLASSES = (
    "STANDARD",
    "REDUCED_REDUNDANCY",
    "STANDARD_IA",
    "ONEZONE_IA",
    "INTELLIGENT_TIERING",
    "GLACIER",
    "DEEP_ARCHIVE",
    "GLACIER_IR",
    "EXPRESS_ONEZONE",
)
#: S3's canned ACLs (``--acl``).
ACLS = (
    "private",
    "public-read",
    "public-read-write",
    "authenticated-read",
    "aws-exec-read",
    "bucket-owner-read",
    "bucket-owner-full-control",
    "log-delivery-write",
)
_SSE = ("AES256", "aws:kms", "aws:kms:dsse")
# Metadata names hashsync writes itself; a user's value under them would be overwritten.
_RESERVED = ("hashsync-", "mtime")
_TOKEN = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


def _header_value(what: str, value: str) -> str:
    if not value.isascii() or any(c in value for c in "\r\n\0"):
        raise InvalidArgument(f"{what} must be printable ASCII on one line: {value!r}")
    return value


def parse_metadata(text: str) -> dict[str, str]:
    """``KEY=VALUE,KEY2=VALUE2`` (or a JSON object), as ``aws s3 cp --metadata`` takes it.

    Raises:
        InvalidArgument: Neither form, or a pair without ``=``.
    """
    text = text.strip()
    if text.startswith("{"):
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise InvalidArgument(f"--metadata is not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise InvalidArgument("--metadata JSON must be an object of names to values")
        return {str(k): str(v) for k, v in data.items()}
    out: dict[str, str] = {}
    for pair in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = pair.partition("=")
        if not sep or not name.strip():
            raise InvalidArgument(f"--metadata takes KEY=VALUE pairs, not {pair!r}")
        out[name.strip()] = value.strip()
    return out


@dataclass(frozen=True)
class UploadOptions:
    """How objects are stored, beside their content (the ``aws s3 cp`` options of that name).

    Attributes:
        content_type: ``Content-Type`` of every upload; None guesses it from the key's name
            with the standard ``mimetypes`` tables (as aws and s5cmd do), unless
            ``guess_mime_type`` is off (the store's default then: ``binary/octet-stream``).
        guess_mime_type: Guess the type when ``content_type`` is None.
        cache_control: ``Cache-Control``.
        content_encoding: ``Content-Encoding`` (the content is sent as it is).
        metadata: User metadata (``x-amz-meta-*``); names are case-insensitive, values ASCII.
        storage_class: ``STANDARD``, ``STANDARD_IA``, ``GLACIER``, ... (:data:`STORAGE_CLASSES`).
        sse: Server-side encryption: ``AES256`` or ``aws:kms`` (or ``aws:kms:dsse``).
        sse_kms_key_id: The KMS key of ``aws:kms`` (else the account's default key).
        acl: A canned ACL, e.g. ``bucket-owner-full-control`` (:data:`ACLS`).

    Raises:
        InvalidArgument: An unknown storage class, encryption or ACL, a KMS key without
            ``aws:kms``, or a header value that cannot be sent.
    """

    content_type: str | None = None
    guess_mime_type: bool = True
    cache_control: str | None = None
    content_encoding: str | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)
    storage_class: str | None = None
    sse: str | None = None
    sse_kms_key_id: str | None = None
    acl: str | None = None

    def __post_init__(self) -> None:
        if self.storage_class is not None and self.storage_class not in STORAGE_CLASSES:
            known = ", ".join(STORAGE_CLASSES)
            raise InvalidArgument(f"unknown storage class {self.storage_class!r} (one of {known})")
        if self.sse is not None and self.sse not in _SSE:
            raise InvalidArgument(f"--sse must be AES256 or aws:kms, not {self.sse!r}")
        if self.sse_kms_key_id is not None and not (self.sse or "").startswith("aws:kms"):
            raise InvalidArgument("--sse-kms-key-id needs --sse aws:kms")
        if self.acl is not None and self.acl not in ACLS:
            raise InvalidArgument(f"unknown canned ACL {self.acl!r} (one of {', '.join(ACLS)})")
        for what, value in (
            ("--content-type", self.content_type),
            ("--cache-control", self.cache_control),
            ("--content-encoding", self.content_encoding),
            ("--sse-kms-key-id", self.sse_kms_key_id),
        ):
            if value is not None:
                _header_value(what, value)
        clean: dict[str, str] = {}
        for name, value in dict(self.metadata).items():
            low = str(name).lower()
            if not low or not all(c in _TOKEN for c in low):
                raise InvalidArgument(f"metadata name {name!r} is not a valid header name")
            if low.startswith(_RESERVED):
                raise InvalidArgument(f"metadata name {name!r} is reserved by hashsync")
            clean[low] = _header_value(f"metadata {name!r}", str(value))
        object.__setattr__(self, "metadata", clean)

    def to_dict(self) -> dict[str, Any]:
        """The options as keyword arguments (what a pickled storage is rebuilt from)."""
        return {
            "content_type": self.content_type,
            "guess_mime_type": self.guess_mime_type,
            "cache_control": self.cache_control,
            "content_encoding": self.content_encoding,
            "metadata": dict(self.metadata),
            "storage_class": self.storage_class,
            "sse": self.sse,
            "sse_kms_key_id": self.sse_kms_key_id,
            "acl": self.acl,
        }

    def type_for(self, key: str) -> str | None:
        """The ``Content-Type`` an upload of ``key`` gets (None: the store's default)."""
        if self.content_type is not None:
            return self.content_type
        if not self.guess_mime_type:
            return None
        return mimetypes.guess_type(key.rpartition("/")[2], strict=False)[0]

    def s3_policy_headers(self) -> dict[str, str]:
        """What every write must carry where a bucket policy demands it: encryption, ACL."""
        headers: dict[str, str] = {}
        if self.sse is not None:
            headers["x-amz-server-side-encryption"] = self.sse
        if self.sse_kms_key_id is not None:
            headers["x-amz-server-side-encryption-aws-kms-key-id"] = self.sse_kms_key_id
        if self.acl is not None:
            headers["x-amz-acl"] = self.acl
        return headers

    def s3_headers(self, key: str) -> dict[str, str]:
        """The headers of a PutObject / CreateMultipartUpload of a user's file ``key``."""
        headers = self.s3_policy_headers()
        content_type = self.type_for(key)
        if content_type is not None:
            headers["Content-Type"] = content_type
        if self.cache_control is not None:
            headers["Cache-Control"] = self.cache_control
        if self.content_encoding is not None:
            headers["Content-Encoding"] = self.content_encoding
        if self.storage_class is not None:
            headers["x-amz-storage-class"] = self.storage_class
        headers.update({f"x-amz-meta-{k}": v for k, v in self.metadata.items()})
        return headers
