"""Lean S3 requests for path-style endpoints: signed by :mod:`._sigv4`, sent with http.client.

boto3 spends a few milliseconds of Python per request (its event system, serialisers and
parsers) and ~100 us per listed object; with many small files that, not the network, bounds a
sync. Two hot operations therefore have a lean path: ListObjectsV2 (parsed with ElementTree;
the listing is split at the first "directory" level, one request with ``delimiter=/``, and the
subtrees are listed in parallel) and the single-request PutObject of a small file. Anything
unexpected raises :class:`FallBack`, and the caller repeats the operation through boto3, which
maps errors to :mod:`hashsync.errors`.
"""

from __future__ import annotations

import datetime
import http.client
import re
import threading
import time
import urllib.parse
import xml.etree.ElementTree as ET
from collections.abc import Callable
from typing import Any

from hashsync._threads import run_on_threads
from hashsync.errors import IntegrityError
from hashsync.storage._sigv4 import Credentials, sign
from hashsync.storage.base import ObjectInfo

__all__ = ["FallBack", "RawClient", "list_objects"]

_NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"
# Subtrees listed at once: enough to hide the server's per-page latency.
_PARALLEL = 8


def whole_seconds(moment: datetime.datetime) -> datetime.datetime:
    """``moment`` in UTC without its fraction of a second.

    A listing may give milliseconds (rclone does; AWS always lists ``.000``) while HEAD's
    Last-Modified is an HTTP date in whole seconds, and a download takes its mtime from
    the latter: both must name the same instant, or a size-and-mtime comparison sees every
    downloaded file as older than the object.
    """
    return moment.astimezone(datetime.UTC).replace(microsecond=0)


def content_range_total(value: str, start: int) -> str:
    """The total size in ``Content-Range: bytes START-END/TOTAL``, if the span starts at ``start``.

    Returns "" (no usable size) when the header is malformed or the span starts elsewhere.
    """
    unit, _, rest = value.strip().partition(" ")
    span, _, total = rest.partition("/")
    first = span.partition("-")[0]
    if unit.lower() != "bytes" or not first.isdigit() or int(first) != start:
        return ""
    return total if total.isdigit() else ""


class FallBack(Exception):
    """The fast path cannot answer; use boto3."""


class _Connections:
    """Keep-alive HTTP connections to one endpoint, one borrowed per request (thread-safe).

    http.client rather than urllib3: it is already loaded for other reasons, costs nothing
    extra at start-up, and spends less Python per request. A connection that sat idle may have
    been closed by the server; a request that fails on such a reused connection before any
    answer arrived is sent once more on a fresh one.
    """

    _IDLE_SECONDS = 4.0

    def __init__(self, endpoint_url: str, timeout: float, ca_bundle: str | None) -> None:
        parts = urllib.parse.urlsplit(endpoint_url)
        self.https = parts.scheme.lower() == "https"
        self.host = parts.hostname or ""
        self.port = parts.port
        self.timeout = timeout
        self.ca_bundle = ca_bundle
        self._idle: list[tuple[float, http.client.HTTPConnection]] = []
        self._lock = threading.Lock()
        self._context: Any = None

    def _new(self) -> http.client.HTTPConnection:
        if not self.https:
            return http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        if self._context is None:
            import ssl

            self._context = ssl.create_default_context(cafile=self.ca_bundle)
        return http.client.HTTPSConnection(
            self.host, self.port, timeout=self.timeout, context=self._context
        )

    def _take(self) -> tuple[http.client.HTTPConnection, bool]:
        now = time.monotonic()
        with self._lock:
            while self._idle:
                since, conn = self._idle.pop()
                if now - since < self._IDLE_SECONDS:
                    return conn, True
                conn.close()
        return self._new(), False

    def request(
        self, method: str, target: str, headers: dict[str, str], body: bytes | None = None
    ) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        """Send a request; the caller reads the answer and then calls :meth:`done`."""
        for attempt in (0, 1):
            conn, reused = self._take()
            try:
                conn.request(method, target, body=body, headers=headers)
                return conn, conn.getresponse()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError) as exc:
                conn.close()
                if not reused or attempt:
                    raise FallBack(str(exc)) from exc
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                raise FallBack(str(exc)) from exc
        raise AssertionError("unreachable")

    def close(self) -> None:
        """Close the idle connections (borrowed ones close when returned)."""
        with self._lock:
            idle, self._idle = self._idle, []
        for _, conn in idle:
            conn.close()

    def done(
        self, conn: http.client.HTTPConnection, response: http.client.HTTPResponse, reuse: bool
    ) -> None:
        """Return ``conn`` to the pool if its answer was read to the end, else close it."""
        if reuse and response.isclosed() and not response.will_close:
            with self._lock:
                self._idle.append((time.monotonic(), conn))
        else:
            conn.close()


class RawClient:
    """Signed requests to one bucket of a path-style endpoint (thread-safe).

    Args:
        endpoint_url: The store's endpoint.
        region: The signing region.
        credentials: Called before each request for the current credentials (refreshable
            ones stay fresh); None, or None returned, sends unsigned requests.
        bucket: The bucket.
        timeout: Connect and read timeout in seconds.
        ca_bundle: CA certificates for https endpoints (``AWS_CA_BUNDLE``).
    """

    def __init__(
        self,
        endpoint_url: str,
        region: str,
        credentials: Callable[[], Credentials | None] | None,
        bucket: str,
        timeout: float,
        ca_bundle: str | None = None,
    ) -> None:
        self.base = endpoint_url.rstrip("/") + "/" + urllib.parse.quote(bucket)
        self.region = region
        self.credentials = credentials
        self.http = _Connections(endpoint_url, timeout, ca_bundle)

    def close(self) -> None:
        """Close pooled connections."""
        self.http.close()

    def _send(
        self, method: str, url: str, headers: dict[str, str], body: bytes | None = None
    ) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        credentials = self.credentials() if self.credentials is not None else None
        if credentials is not None:
            headers = sign(method, url, headers, body, credentials, self.region)
        parts = urllib.parse.urlsplit(url)
        target = parts.path + ("?" + parts.query if parts.query else "")
        return self.http.request(method, target, headers, body)

    def _read(self, conn: http.client.HTTPConnection, response: http.client.HTTPResponse) -> bytes:
        try:
            body = response.read()
        except (OSError, http.client.HTTPException) as exc:
            self.http.done(conn, response, reuse=False)
            raise FallBack(str(exc)) from exc
        self.http.done(conn, response, reuse=True)
        return body

    def put(self, key: str, data: bytes, headers: dict[str, str]) -> dict[str, str]:
        """PUT ``data`` at ``key``; returns the response headers, or raises FallBack."""
        url = f"{self.base}/{urllib.parse.quote(key, safe='/~')}"
        conn, response = self._send("PUT", url, headers, data)
        self._read(conn, response)
        if response.status != 200:
            raise FallBack(f"HTTP {response.status}")
        return {k.lower(): v for k, v in response.getheaders()}

    def get_small(self, key: str, limit: int) -> tuple[dict[str, str], bytes] | None:
        """GET ``key`` if it is at most ``limit`` bytes: (headers, body), or None if larger.

        One ranged request: the first ``limit`` bytes and, in Content-Range, the total size.
        A larger object's body is not read (the connection is dropped instead).
        """
        url = f"{self.base}/{urllib.parse.quote(key, safe='/~')}"
        conn, response = self._send("GET", url, {"Range": f"bytes=0-{limit - 1}"})
        answer = {k.lower(): v for k, v in response.getheaders()}
        span = answer.get("content-range")
        if response.status in (200, 206) and span is not None:
            # Judged by Content-Range, never by status alone: rclone answers a ranged GET
            # with 200 and the part asked for.
            total = content_range_total(span, 0)
        elif response.status == 200:
            total = answer.get("content-length", "")  # Range ignored: the whole object
        else:
            self._read(conn, response)
            if response.status == 416:
                # An empty object has no byte 0 to range over.
                return None
            raise FallBack(f"HTTP {response.status}")
        if not total.isdigit() or int(total) > limit:
            self.http.done(conn, response, reuse=False)
            if not total.isdigit():
                raise FallBack("no object size in the answer")
            return None
        body = self._read(conn, response)
        if len(body) != int(total):
            raise FallBack("short body")
        answer["content-length"] = total
        return answer, body

    def _page_bytes(
        self, prefix: str, token: str | None, delimiter: str | None, max_keys: int | None = None
    ) -> bytes:
        params = {"list-type": "2", "prefix": prefix, "encoding-type": "url"}
        if token:
            params["continuation-token"] = token
        if delimiter:
            params["delimiter"] = delimiter
        if max_keys:
            params["max-keys"] = str(max_keys)
        query = urllib.parse.urlencode(sorted(params.items()), quote_via=urllib.parse.quote)
        conn, response = self._send("GET", f"{self.base}?{query}", {})
        data = self._read(conn, response)
        if response.status != 200:  # errors: boto3 retries and maps them
            raise FallBack(f"HTTP {response.status}")
        return data

    def page(self, prefix: str, token: str | None, delimiter: str | None) -> ET.Element:
        """One parsed ListObjectsV2 page."""
        try:
            return ET.fromstring(self._page_bytes(prefix, token, delimiter))
        except ET.ParseError as exc:
            raise FallBack(str(exc)) from exc

    def count(self, prefix: str, limit: int) -> int:
        """How many objects are under ``prefix``, counting up to ``limit``.

        An estimate for planning: pages are counted, not parsed; folder markers count too.
        """
        n, token = 0, None
        while n < limit:
            data = self._page_bytes(prefix, token, None, max_keys=min(1000, limit - n))
            # Keys are XML-escaped, so "<Key>" only ever opens an element.
            n += data.count(b"<Key>")
            if b"<IsTruncated>true</IsTruncated>" not in data:
                break
            found = re.search(rb"<NextContinuationToken>([^<]+)</NextContinuationToken>", data)
            if found is None:
                raise FallBack("truncated page without a continuation token")
            token = found.group(1).decode()
        return min(n, limit)

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
                out.append(ObjectInfo(key[root_len:], size, whole_seconds(modified), etag))
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
        # S3 lists in UTF-8 byte order; SeaweedFS lists a directory's keys before a sibling
        # "a.txt" < "a/x". Code-point order of str is UTF-8 byte order.
        first.sort(key=lambda o: o.key)
        return first
    # Larger: split at the first "/" after the prefix, then list the subtrees side by side.
    top, subtrees, _ = lister.walk(full, len(root_prefix), delimiter="/")
    if subtrees:
        walked = run_on_threads(
            lambda p: lister.walk(p, len(root_prefix)), subtrees, _PARALLEL, fail_fast=True
        )
        for objects, _, _ in walked:
            top.extend(objects)
        # S3's order (UTF-8 byte order, which code-point order of str matches).
        top.sort(key=lambda o: o.key)
    return top
