"""S3's multipart, copy and delete operations: each request built, and its XML answer read, here.

They are sent by the Rust transport (:meth:`S3Base._raw_client`), like every other request.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import re
import urllib.parse
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

from hashsync.storage import _s3list
from hashsync.storage._s3_base import S3Base

__all__ = ["PartCopyUnsupported", "PartsPage", "S3Requests", "UploadsPage"]

_S3_NS = "http://s3.amazonaws.com/doc/2006-03-01/"
# Characters XML 1.0 cannot carry at all, even as references: such keys go one request each.
_NOT_IN_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


class PartCopyUnsupported(Exception):
    """The store does not implement UploadPartCopy (the upload is aborted; copy another way)."""


class PartsPage(NamedTuple):
    """One ListParts page: ``(number, etag, size)`` per part, and where the next page starts."""

    parts: list[tuple[int, str, int]]
    next_marker: int | None


class UploadsPage(NamedTuple):
    """One ListMultipartUploads page: ``(full key, upload id, initiated)``, and the next markers."""

    uploads: list[tuple[str, str, datetime.datetime]]
    next_markers: tuple[str, str] | None


def xml_text(value: str) -> str:
    """``value`` as XML character data that a parser gives back unchanged.

    A carriage return is written as a reference: a literal one would be read back as a
    line feed (XML normalises line ends).
    """
    return (
        value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("\r", "&#13;")
    )


def fits_xml(key: str) -> bool:
    """Whether ``key`` can be named in an XML request body (DeleteObjects)."""
    return _NOT_IN_XML.search(key) is None


def _children(element: ET.Element, name: str) -> Iterator[ET.Element]:
    """Direct children named ``name``, in S3's namespace or in none (stores differ)."""
    for child in element:
        if child.tag == name or child.tag == f"{{{_S3_NS}}}{name}":
            yield child


def _text(element: ET.Element, name: str) -> str | None:
    for child in _children(element, name):
        return child.text or ""
    return None


def _parse(data: bytes, what: str) -> ET.Element:
    try:
        return ET.fromstring(data)
    except ET.ParseError as exc:
        raise _s3list.ErrorAnswer(
            200, "MalformedAnswer", f"unreadable {what} answer: {exc}"
        ) from None


def _timestamp(value: str | None) -> datetime.datetime:
    if not value:
        return datetime.datetime.fromtimestamp(0, datetime.UTC)
    moment = datetime.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return moment.astimezone(datetime.UTC)


def complete_body(parts: Sequence[dict[str, Any]]) -> bytes:
    """The CompleteMultipartUpload document for botocore-shaped part entries."""
    out = [f'<CompleteMultipartUpload xmlns="{_S3_NS}">']
    for part in parts:
        out.append(f"<Part><PartNumber>{int(part['PartNumber'])}</PartNumber>")
        out.append(f"<ETag>{xml_text(str(part['ETag']))}</ETag>")
        if part.get("ChecksumCRC64NVME"):
            out.append(f"<ChecksumCRC64NVME>{part['ChecksumCRC64NVME']}</ChecksumCRC64NVME>")
        out.append("</Part>")
    out.append("</CompleteMultipartUpload>")
    return "".join(out).encode()


def delete_body(keys: Sequence[str]) -> bytes:
    """The DeleteObjects document (quiet: the answer names only failures)."""
    objects = "".join(f"<Object><Key>{xml_text(k)}</Key></Object>" for k in keys)
    return f'<Delete xmlns="{_S3_NS}"><Quiet>true</Quiet>{objects}</Delete>'.encode()


def copy_source(bucket: str, full_key: str) -> str:
    """The ``x-amz-copy-source`` value for an object (percent-encoded ``bucket/key``)."""
    return urllib.parse.quote(f"{bucket}/{full_key}", safe="/~")


class S3Requests(S3Base):
    """The operations beyond GET, PUT, HEAD and LIST, on the transport where it serves."""

    def _request(
        self,
        action: str,
        key: str | None,
        method: str,
        full: str | None,
        query: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
        body: bytes | None = None,
        *,
        error_in_ok: bool = False,
    ) -> tuple[dict[str, str], bytes]:
        """Send one request through the transport: (lower-case headers, body).

        ``key`` names the object in errors, ``full`` is the object addressed (None: the
        bucket).
        """
        try:
            _, answer, data = self._raw_client().call(
                method, full, query, headers, body, error_in_ok=error_in_ok
            )
        except _s3list.ErrorAnswer as exc:
            raise self._raw_error(exc, key, action) from None
        return answer, data

    def _xml(self, action: str, key: str | None, data: bytes) -> ET.Element:
        try:
            return _parse(data, action)
        except _s3list.ErrorAnswer as exc:
            raise self._raw_error(exc, key, action) from None

    # -- single objects -------------------------------------------------------------------

    def _delete_object(self, key: str, full: str, *, if_match: str | None = None) -> None:
        """DeleteObject (``If-Match`` when given: a conditional delete)."""
        headers = {"If-Match": if_match} if if_match is not None else {}
        self._request("DELETE", key, "DELETE", full, headers=headers)

    def _copy_object(self, key: str, full: str, source: str, if_match: str) -> None:
        """CopyObject of ``source`` (see :func:`copy_source`) with its metadata, pinned."""
        # The source's type and metadata are kept (as aws s3 sync copies); encryption, ACL and
        # class are this storage's.
        headers = self.upload.s3_policy_headers()
        if self.upload.storage_class is not None:
            headers["x-amz-storage-class"] = self.upload.storage_class
        headers.update(
            {
                "x-amz-copy-source": source,
                "x-amz-copy-source-if-match": if_match,
                "x-amz-metadata-directive": "COPY",
            }
        )
        self._request("CopyObject", key, "PUT", full, headers=headers, error_in_ok=True)

    # -- multipart uploads ----------------------------------------------------------------

    def _create_upload(
        self, key: str, full: str, metadata: dict[str, str], *, crc64nvme: bool
    ) -> str:
        """CreateMultipartUpload; returns the upload id."""
        headers = self.upload.s3_headers(key)
        headers.update({f"x-amz-meta-{k}": v for k, v in metadata.items()})
        if crc64nvme:
            headers["x-amz-checksum-algorithm"] = "CRC64NVME"
            headers["x-amz-checksum-type"] = "FULL_OBJECT"
        _, data = self._request(
            "CreateMultipartUpload", key, "POST", full, {"uploads": ""}, headers
        )
        upload_id = _text(self._xml("CreateMultipartUpload", key, data), "UploadId")
        if not upload_id:
            raise self._raw_error(
                _s3list.ErrorAnswer(200, "MalformedAnswer", "no UploadId in the answer"),
                key,
                "CreateMultipartUpload",
            )
        return upload_id

    def _complete_upload(
        self,
        key: str,
        full: str,
        upload_id: str,
        parts: Sequence[dict[str, Any]],
        conditions: dict[str, str],
        crc64nvme_b64: str | None,
    ) -> dict[str, Any]:
        """CompleteMultipartUpload (``conditions``: ``IfMatch`` / ``IfNoneMatch``)."""
        headers: dict[str, str] = {}
        if "IfMatch" in conditions:
            headers["If-Match"] = conditions["IfMatch"]
        if "IfNoneMatch" in conditions:
            headers["If-None-Match"] = conditions["IfNoneMatch"]
        if crc64nvme_b64 is not None:
            headers["x-amz-checksum-crc64nvme"] = crc64nvme_b64
            headers["x-amz-checksum-type"] = "FULL_OBJECT"
        answer, data = self._request(
            "CompleteMultipartUpload",
            key,
            "POST",
            full,
            {"uploadId": upload_id},
            headers,
            complete_body(parts),
            error_in_ok=True,
        )
        etag = _text(self._xml("CompleteMultipartUpload", key, data), "ETag")
        return {
            "ETag": etag or "",
            "ServerSideEncryption": answer.get("x-amz-server-side-encryption"),
        }

    def _abort_upload(self, key: str, full: str, upload_id: str) -> None:
        """AbortMultipartUpload (``NotFound`` when the store does not know the upload)."""
        self._request("AbortMultipartUpload", key, "DELETE", full, {"uploadId": upload_id})

    def _upload_part_copy(
        self,
        key: str,
        full: str,
        upload_id: str,
        number: int,
        source: str,
        if_match: str,
        span: str,
    ) -> str:
        """UploadPartCopy of bytes ``span`` (``bytes=A-B``) of ``source``; returns the ETag."""
        headers = {
            "x-amz-copy-source": source,
            "x-amz-copy-source-if-match": if_match,
            "x-amz-copy-source-range": span,
        }
        _, data = self._request(
            "UploadPartCopy",
            key,
            "PUT",
            full,
            {"partNumber": str(number), "uploadId": upload_id},
            headers,
            error_in_ok=True,
        )
        etag = _text(self._xml("UploadPartCopy", key, data), "ETag") if data.strip() else None
        if not etag:
            # rclone's server takes the request for an UploadPart with an empty body and
            # answers 200 without a CopyPartResult: that part now holds nothing.
            raise PartCopyUnsupported(
                f"the store at {self.endpoint_url} answered UploadPartCopy without a CopyPartResult"
            )
        return etag

    def _parts_page(self, key: str, full: str, upload_id: str, marker: int) -> PartsPage:
        """One ListParts page of an unfinished upload, from part ``marker`` on."""
        query = {"uploadId": upload_id}
        if marker:
            query["part-number-marker"] = str(marker)
        _, data = self._request("ListParts", key, "GET", full, query)
        root = self._xml("ListParts", key, data)
        parts = [
            (
                int(_text(p, "PartNumber") or 0),
                (_text(p, "ETag") or "").strip().strip('"'),
                int(_text(p, "Size") or 0),
            )
            for p in _children(root, "Part")
        ]
        truncated = (_text(root, "IsTruncated") or "false").strip() == "true"
        following = int(_text(root, "NextPartNumberMarker") or 0)
        return PartsPage(parts, following if truncated and following else None)

    def _uploads_page(
        self, prefix: str, full_prefix: str, markers: tuple[str, str] | None
    ) -> UploadsPage:
        """One ListMultipartUploads page under ``full_prefix`` (``prefix`` names it in errors)."""
        query = {"uploads": "", "prefix": full_prefix}
        if markers is not None:
            query["key-marker"], query["upload-id-marker"] = markers
        _, data = self._request("ListMultipartUploads", prefix, "GET", None, query)
        root = self._xml("ListMultipartUploads", prefix, data)
        uploads = [
            (
                _text(u, "Key") or "",
                _text(u, "UploadId") or "",
                _timestamp(_text(u, "Initiated")),
            )
            for u in _children(root, "Upload")
        ]
        truncated = (_text(root, "IsTruncated") or "false").strip() == "true"
        following = (
            _text(root, "NextKeyMarker") or "",
            _text(root, "NextUploadIdMarker") or "",
        )
        return UploadsPage(uploads, following if truncated else None)

    # -- batches ---------------------------------------------------------------------------

    def _delete_batch(self, fulls: Sequence[str]) -> list[tuple[str, str, str]]:
        """DeleteObjects of up to 1,000 keys (each must :func:`fits_xml`).

        Returns:
            ``(full key, code, message)`` for each key the store did not delete.
        """
        body = delete_body(fulls)
        headers = {
            "Content-MD5": base64.b64encode(
                hashlib.md5(body, usedforsecurity=False).digest()
            ).decode()
        }
        _, data = self._request(
            "DELETE", None, "POST", None, {"delete": ""}, headers, body, error_in_ok=True
        )
        root = self._xml("DeleteObjects", None, data)
        return [
            (_text(e, "Key") or "", _text(e, "Code") or "", _text(e, "Message") or "")
            for e in _children(root, "Error")
        ]
