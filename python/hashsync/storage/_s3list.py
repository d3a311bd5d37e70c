"""Lean S3 requests for path-style endpoints: signed by botocore, sent with urllib3.

boto3 spends a few milliseconds of Python per request (its event system, serialisers and
parsers) and ~100 us per listed object; with many small files that, not the network, bounds a
sync. Two hot operations therefore have a lean path: ListObjectsV2 (parsed with ElementTree;
the listing is split at the first "directory" level, one request with ``delimiter=/``, and the
subtrees are listed in parallel) and the single-request PutObject of a small file. Anything
unexpected raises :class:`FallBack`, and the caller repeats the operation through boto3, which
maps errors to :mod:`hashsync.errors`.
"""

from __future__ import annotations

import concurrent.futures as cf
import datetime
import urllib.parse
import xml.etree.ElementTree as ET
from typing import Any

from hashsync.errors import IntegrityError
from hashsync.storage.base import ObjectInfo

__all__ = ["FallBack", "RawClient", "list_objects"]

_NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"
# Subtrees listed at once: enough to hide the server's per-page latency.
_PARALLEL = 8


class FallBack(Exception):
    """The fast path cannot answer; use boto3."""


class RawClient:
    """Signed requests to one bucket of a path-style endpoint (thread-safe)."""

    def __init__(
        self, endpoint_url: str, region: str, credentials: Any, bucket: str, timeout: float
    ) -> None:
        import urllib3
        from botocore.auth import S3SigV4Auth

        self.base = endpoint_url.rstrip("/") + "/" + urllib.parse.quote(bucket)
        frozen = credentials.get_frozen_credentials() if credentials is not None else None
        self.signer = S3SigV4Auth(frozen, "s3", region) if frozen is not None else None
        self.http = urllib3.PoolManager(
            maxsize=32,
            retries=urllib3.Retry(total=3, backoff_factor=0.2, redirect=False),
            timeout=urllib3.Timeout(connect=10, read=timeout),
        )

    def put(self, key: str, data: bytes, headers: dict[str, str]) -> dict[str, str]:
        """PUT ``data`` at ``key``; returns the response headers, or raises FallBack."""
        from botocore.awsrequest import AWSRequest

        url = f"{self.base}/{urllib.parse.quote(key, safe='/~')}"
        request = AWSRequest(method="PUT", url=url, data=data, headers=headers)
        if self.signer is not None:
            self.signer.add_auth(request)
        try:
            response = self.http.request(
                "PUT", url, body=data, headers=dict(request.headers.items()), retries=False
            )
        except Exception as exc:
            raise FallBack(str(exc)) from exc
        if response.status != 200:
            raise FallBack(f"HTTP {response.status}")
        return {k.lower(): v for k, v in response.headers.items()}

    def get_small(self, key: str, limit: int) -> tuple[dict[str, str], bytes] | None:
        """GET ``key`` if it is at most ``limit`` bytes: (headers, body), or None if larger.

        One ranged request: the first ``limit`` bytes and, in Content-Range, the total size.
        A larger object's body is not read (the connection is dropped instead).
        """
        from botocore.awsrequest import AWSRequest

        url = f"{self.base}/{urllib.parse.quote(key, safe='/~')}"
        headers = {"Range": f"bytes=0-{limit - 1}"}
        request = AWSRequest(method="GET", url=url, headers=headers)
        if self.signer is not None:
            self.signer.add_auth(request)
        try:
            response = self.http.request(
                "GET",
                url,
                headers=dict(request.headers.items()),
                preload_content=False,
                retries=False,
            )
        except Exception as exc:
            raise FallBack(str(exc)) from exc
        try:
            answer = {k.lower(): v for k, v in response.headers.items()}
            if response.status == 206:
                total = answer.get("content-range", "").rpartition("/")[2]
            elif response.status == 200:
                total = answer.get("content-length", "")
            elif response.status == 416:
                # An empty object has no byte 0 to range over.
                return None
            else:
                raise FallBack(f"HTTP {response.status}")
            if not total.isdigit():
                raise FallBack("no object size in the answer")
            if int(total) > limit:
                return None
            try:
                body = response.read()
            except Exception as exc:
                raise FallBack(str(exc)) from exc
            if len(body) != int(total):
                raise FallBack("short body")
            answer["content-length"] = total
            return answer, body
        finally:
            response.release_conn() if response.status in (200, 206) else response.close()

    def page(self, prefix: str, token: str | None, delimiter: str | None) -> ET.Element:
        from botocore.awsrequest import AWSRequest

        params = {"list-type": "2", "prefix": prefix, "encoding-type": "url"}
        if token:
            params["continuation-token"] = token
        if delimiter:
            params["delimiter"] = delimiter
        query = urllib.parse.urlencode(sorted(params.items()), quote_via=urllib.parse.quote)
        url = f"{self.base}?{query}"
        request = AWSRequest(method="GET", url=url)
        if self.signer is not None:
            self.signer.add_auth(request)
        try:
            response = self.http.request("GET", url, headers=dict(request.headers.items()))
        except Exception as exc:  # connection errors: let boto3 retry and map them
            raise FallBack(str(exc)) from exc
        if response.status != 200:
            raise FallBack(f"HTTP {response.status}")
        try:
            return ET.fromstring(response.data)
        except ET.ParseError as exc:
            raise FallBack(str(exc)) from exc

    def walk(
        self,
        prefix: str,
        root_len: int,
        delimiter: str | None = None,
        *,
        max_pages: int | None = None,
    ) -> tuple[list[ObjectInfo], list[str], bool]:
        """List ``prefix`` page by page: (objects, common prefixes, whether it was all)."""
        out: list[ObjectInfo] = []
        pages = 0
        common: list[str] = []
        token = None
        # S3 form-encodes keys (space as "+", "+" as "%2B"), as botocore decodes them.
        unquote = urllib.parse.unquote_plus
        parse_time = datetime.datetime.fromisoformat
        while True:
            root = self.page(prefix, token, delimiter)
            for item in root.iter(_NS + "Contents"):
                key = etag = modified = None
                size = 0
                for child in item:
                    tag = child.tag[len(_NS) :]
                    if tag == "Key":
                        key = unquote(child.text or "")
                    elif tag == "Size":
                        size = int(child.text or 0)
                    elif tag == "ETag":
                        etag = (child.text or "").strip('"') or None
                    elif tag == "LastModified":
                        modified = parse_time((child.text or "").replace("Z", "+00:00"))
                if key is None or modified is None:
                    raise FallBack("incomplete Contents element")
                if not key.startswith(prefix):
                    raise outside_prefix(key, prefix)
                out.append(
                    ObjectInfo(key[root_len:], size, modified.astimezone(datetime.UTC), etag)
                )
            for cp in root.iter(_NS + "CommonPrefixes"):
                p = cp.findtext(_NS + "Prefix")
                if p:
                    p = unquote(p)
                    if not p.startswith(prefix):
                        raise outside_prefix(p, prefix)
                    common.append(p)
            truncated = (root.findtext(_NS + "IsTruncated") or "false") == "true"
            token = root.findtext(_NS + "NextContinuationToken")
            if not truncated:
                return out, common, True
            pages += 1
            if max_pages is not None and pages >= max_pages:
                return out, common, False
            if not token:
                raise FallBack("truncated page without a continuation token")


def outside_prefix(key: str, prefix: str) -> IntegrityError:
    """The error for a listing that names a key the request did not ask for.

    Stripping the prefix from such a key would make up a different key (a sync could then
    download or delete the wrong object), so the whole listing is refused.
    """
    return IntegrityError(
        f"the store listed {key!r}, which is outside the requested prefix {prefix!r}; "
        "refusing a listing that does not match the request"
    )


def list_objects(lister: RawClient, *, root_prefix: str, prefix: str) -> list[ObjectInfo]:
    """Every object under ``root_prefix + prefix``, keys relative to ``root_prefix``."""
    full = root_prefix + prefix
    # Up to 1,000 objects come in one page: most syncs (CI jobs, pipelines) need no more.
    first, _, complete = lister.walk(full, len(root_prefix), max_pages=1)
    if complete:
        return first
    # Larger: split at the first "/" after the prefix, then list the subtrees side by side.
    top, subtrees, _ = lister.walk(full, len(root_prefix), delimiter="/")
    if subtrees:
        with cf.ThreadPoolExecutor(min(_PARALLEL, len(subtrees))) as pool:
            for objects, _, _ in pool.map(lambda p: lister.walk(p, len(root_prefix)), subtrees):
                top.extend(objects)
        # S3's order (UTF-8 byte order, which code-point order of str matches).
        top.sort(key=lambda o: o.key)
    return top
