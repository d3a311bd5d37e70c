"""Lean S3 requests for path-style endpoints, signed and sent by the Rust transport.

boto3 spends a few milliseconds of Python per request (its event system, serialisers and
parsers) and ~100 us per listed object; with many small files that, not the network, bounds a
sync. The hot operations therefore go through :class:`hashsync._native.S3Transport` (SigV4,
a keep-alive pool and the wire in Rust, without the interpreter lock): ListObjectsV2 (parsed
with ElementTree; the listing is split at the first "directory" level, one request with
``delimiter=/``, and the subtrees are listed in parallel), the GET of a small object and the
single-request PutObject. The store's refusals, and answers that lack what their operation
must carry, raise :class:`ErrorAnswer`, which the storage maps to :mod:`hashsync.errors`.
"""

from __future__ import annotations

import datetime
import html
import os
import re
import threading
import urllib.parse
import xml.etree.ElementTree as ET
from collections.abc import Callable
from typing import TypeVar

from hashsync._native import S3Transport
from hashsync._retry import wait_before_retry
from hashsync._threads import run_on_threads
from hashsync.errors import IntegrityError, InvalidArgument
from hashsync.storage._s3_settings import Credentials
from hashsync.storage.base import ObjectInfo

__all__ = ["ErrorAnswer", "RawClient", "list_objects", "transport"]

_T = TypeVar("_T")
# What one try gives: (status, answer headers, the body of an error answer, the result).
_Attempt = tuple[int, dict[str, str], bytes | None, _T]
# A TLS failure no retry can fix (rustls's words for an untrusted or mismatched certificate).
_CERTIFICATE = re.compile(r"certificate|UnknownIssuer|NotValidForName|BadSignature", re.I)

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


class ErrorAnswer(Exception):
    """The store refused a request (after retries, where retrying could help), or never answered.

    Attributes:
        status: The HTTP status; None when no answer came (connection refused, timeout).
        code: S3's error code from the answer's XML ("" if none).
        message: S3's message, or what went wrong on the way.
    """

    def __init__(self, status: int | None, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


# Error codes worth another try, whatever the status (throttling, a store busy or restarting).
_RETRY_CODES = frozenset(
    ("SlowDown", "RequestTimeout", "InternalError", "ServiceUnavailable", "Throttling",
     "ThrottlingException", "RequestTimeTooSkewed")
)  # fmt: skip


def _retryable(status: int, code: str) -> bool:
    return status >= 500 or status in (408, 429) or code in _RETRY_CODES


def error_fields(body: bytes | None) -> tuple[str, str]:
    """(Code, Message) of S3's error XML; empty strings where the body has none."""
    text = (body or b"")[: 64 << 10].decode("utf-8", "replace")
    found = [re.search(rf"<{tag}>([^<]*)</{tag}>", text) for tag in ("Code", "Message")]
    return tuple(html.unescape(m.group(1)).strip() if m else "" for m in found)  # type: ignore[return-value]


# The longest answer :meth:`RawClient.call` reads: a ListParts or ListMultipartUploads page of
# 1,000 entries with long keys stays well below it.
_ANSWER_LIMIT = 16 << 20


def _is_error_document(data: bytes) -> bool:
    """Whether an XML answer's root element is ``<Error>``."""
    head = data[:512].lstrip()
    if head.startswith(b"<?xml"):
        head = head[head.find(b"?>") + 2 :].lstrip()
    return head.startswith(b"<Error>") or head.startswith(b"<Error ")


# One pool per (timeouts, CA bundle, proxy), shared by every storage of the process.
_transports: dict[tuple[float, float, str | None, str | None], S3Transport] = {}
_transports_lock = threading.Lock()
# Bumped in a forked child: the parent's pooled connections must never carry the child's
# requests (two processes writing one socket interleave their requests).
_generation = 0


def _forget_parents_pools() -> None:
    global _generation
    _generation += 1
    _transports.clear()


os.register_at_fork(after_in_child=_forget_parents_pools)


def _default_ca_file() -> str | None:
    """The CA file OpenSSL (and so Python's ssl and botocore) trusts by default, if any."""
    import ssl

    paths = ssl.get_default_verify_paths()
    for candidate in (paths.cafile, paths.openssl_cafile):
        if candidate and os.path.isfile(candidate):
            return candidate
    return None


def _signing(credentials: Credentials | None) -> tuple[str, str, str | None] | None:
    if credentials is None:
        return None
    return (credentials.access_key, credentials.secret_key, credentials.token)


def proxy_for(url: str) -> str | None:
    """The proxy the environment names for ``url``, as botocore (and urllib) choose it.

    ``https_proxy`` / ``http_proxy`` by the URL's scheme, else ``all_proxy``; none for a host
    ``no_proxy`` names.
    """
    import urllib.request

    proxies = urllib.request.getproxies_environment()
    parts = urllib.parse.urlsplit(url)
    found = proxies.get(parts.scheme.lower()) or proxies.get("all")
    bypass = urllib.request.proxy_bypass_environment  # type: ignore[attr-defined]
    if not found or bypass(parts.netloc, proxies):
        return None
    return found if "://" in found else f"http://{found}"


def transport(
    endpoint_url: str,
    timeout: float,
    ca_bundle: str | None,
    proxy: str | None = None,
    connect_timeout: float | None = None,
) -> S3Transport:
    """The shared Rust transport for requests to ``endpoint_url``."""
    if ca_bundle is None and urllib.parse.urlsplit(endpoint_url).scheme.lower() == "https":
        ca_bundle = _default_ca_file()
    connect = timeout if connect_timeout is None else connect_timeout
    with _transports_lock:
        found = _transports.get((timeout, connect, ca_bundle, proxy))
        if found is None:
            try:
                found = S3Transport(
                    timeout=timeout, connect_timeout=connect, ca_bundle=ca_bundle, proxy=proxy
                )
            except ValueError as exc:
                raise InvalidArgument(f"{exc} (from the environment's proxy settings)") from None
            _transports[(timeout, connect, ca_bundle, proxy)] = found
        return found


_AWS_S3_HOST = re.compile(r"^s3([.-][a-z0-9-]+)?\.amazonaws\.com(\.cn)?$")


def bucket_base(endpoint_url: str, bucket: str, virtual: bool) -> tuple[str, str]:
    """(base URL, the path a bucket-level request adds) for ``bucket`` at ``endpoint_url``.

    Path-style puts the bucket in the path (``https://host/bucket``); virtual-hosted in the
    host name (``https://bucket.host``), as AWS prefers, unless the bucket cannot be a DNS
    label there (dots over https would not match the certificate; capitals, underscores).
    """
    endpoint = endpoint_url.rstrip("/")
    dns_safe = re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", bucket) is not None
    https = endpoint.lower().startswith("https://")
    if virtual and dns_safe and not (https and "." in bucket):
        scheme, _, rest = endpoint.partition("://")
        return f"{scheme}://{bucket}.{rest}", "/"
    return f"{endpoint}/{urllib.parse.quote(bucket)}", ""


def regional_endpoint(endpoint_url: str, region: str) -> str:
    """``endpoint_url`` moved to ``region`` if it is one of AWS's S3 endpoints, else unchanged."""
    parts = urllib.parse.urlsplit(endpoint_url)
    host = (parts.hostname or "").lower()
    found = _AWS_S3_HOST.match(host)
    if found is None or not re.fullmatch(r"[a-z0-9-]+", region):
        return endpoint_url
    suffix = ".amazonaws.com" + (found.group(2) or "")
    return f"{parts.scheme}://s3.{region}{suffix}"


def _region_named(headers: dict[str, str], body: bytes | None) -> str:
    """The bucket's region an answer names (a redirect's header, or an error's <Region>)."""
    named = headers.get("x-amz-bucket-region", "")
    if not named and body:
        found = re.search(rb"<Region>([a-z0-9-]+)</Region>", body[: 64 << 10])
        named = found.group(1).decode() if found else ""
    return named


class RawClient:
    """Signed requests to one bucket of an S3 endpoint (thread-safe).

    A bucket in another region than the one configured is followed once its region is
    named (AWS's 301 with ``x-amz-bucket-region``, or a 400 naming the expected region):
    requests are then signed for that region and, on AWS, sent to its endpoint.

    Args:
        endpoint_url: The store's endpoint.
        region: The signing region.
        credentials: Called before each request for the current credentials (refreshable
            ones stay fresh); None, or None returned, sends unsigned requests.
        bucket: The bucket.
        timeout: Seconds to wait for each of sending and receiving an answer.
        ca_bundle: CA certificates for https endpoints (``AWS_CA_BUNDLE``).
        max_attempts: Tries of a request that failed in a way another try could fix.
        virtual: Virtual-hosted addressing (the bucket in the host name) where the bucket's
            name allows it.
        proxy: The proxy URL to send requests through (:func:`proxy_for`).
        connect_timeout: Seconds to wait for a connection (default: ``timeout``).
    """

    def __init__(
        self,
        endpoint_url: str,
        region: str,
        credentials: Callable[[], Credentials | None] | None,
        bucket: str,
        timeout: float,
        ca_bundle: str | None = None,
        max_attempts: int = 5,
        *,
        virtual: bool = False,
        proxy: str | None = None,
        connect_timeout: float | None = None,
        always: dict[str, str] | None = None,
    ) -> None:
        self.bucket = bucket
        # Headers of every request (x-amz-request-payer), signed like the others.
        self.always = dict(always or {})
        self.virtual = virtual
        self.base, self._bucket_path = bucket_base(endpoint_url, bucket, virtual)
        self.max_attempts = max(1, max_attempts)
        self.region = region
        self.credentials = credentials
        self._endpoint = endpoint_url
        self._where = (endpoint_url, timeout, ca_bundle, proxy, connect_timeout)
        self._http = transport(*self._where)
        self._generation = _generation

    def _move_to(self, region: str) -> None:
        """Sign for ``region`` from now on (and on AWS, send to its endpoint)."""
        self._endpoint = regional_endpoint(self._endpoint, region)
        self.base, self._bucket_path = bucket_base(self._endpoint, self.bucket, self.virtual)
        self.region = region

    def _target(self, key: str | None, query: dict[str, str] | None = None) -> str:
        """The path and query of ``key`` (the bucket for None) after :attr:`base`."""
        target = self._bucket_path if key is None else "/" + urllib.parse.quote(key, safe="/~")
        if query:
            encoded = urllib.parse.urlencode(sorted(query.items()), quote_via=urllib.parse.quote)
            target += "?" + encoded
        return target

    @property
    def http(self) -> S3Transport:
        """This process's transport (a forked child gets a pool of its own)."""
        if self._generation != _generation:
            self._http = transport(*self._where)
            self._generation = _generation
        return self._http

    @staticmethod
    def _malformed(status: int, reason: str) -> ErrorAnswer:
        """The error for an answer without what its operation must carry."""
        return ErrorAnswer(status, "MalformedAnswer", reason)

    def close(self) -> None:
        """Nothing to release: the transport's pool is shared and closes idle connections."""

    def _attempts(
        self,
        once: Callable[[tuple[str, str, str | None] | None], _Attempt[_T]],
        ok: Callable[[int], bool],
    ) -> _T:
        """Call ``once(credentials)`` until the store accepts, or retrying cannot help.

        ``once`` returns (status, answer headers, the body of an error answer, the result). A
        status ``ok`` accepts returns the result; throttling, server errors and requests that
        got no answer (OSError) are tried again up to ``max_attempts`` times; an answer
        naming the bucket's region moves there (twice at most); anything else raises
        :class:`ErrorAnswer`.
        """
        failures = 0
        moves = 0
        while True:
            credentials = self.credentials() if self.credentials is not None else None
            try:
                status, headers, error_body, result = once(_signing(credentials))
            except ValueError as exc:
                raise ErrorAnswer(None, "InvalidRequest", str(exc)) from exc
            except OSError as exc:
                if exc.errno is not None:
                    raise  # a local file failed (get_into): not the store's doing
                if _CERTIFICATE.search(str(exc)):
                    # Another try meets the same certificate.
                    raise ErrorAnswer(None, "CertificateError", str(exc)) from exc
                failures += 1
                if failures >= self.max_attempts:
                    raise ErrorAnswer(None, "", str(exc)) from exc
                wait_before_retry(failures)
                continue
            if ok(status):
                return result
            if status in (301, 307, 400) and moves < 2:
                named = _region_named(headers, error_body)
                if named and named != self.region:
                    self._move_to(named)
                    moves += 1
                    continue
            code, message = error_fields(error_body)
            header_message = headers.get("x-amz-error-message", "")
            failures += 1
            if _retryable(status, code) and failures < self.max_attempts:
                wait_before_retry(failures)
                continue
            raise ErrorAnswer(status, code, message or header_message)

    def _send(
        self,
        method: str,
        target: str,
        headers: dict[str, str],
        body: bytes | None = None,
        max_body: int = 1 << 62,
        *,
        accept: tuple[int, ...] = (),
        error_in_ok: bool = False,
    ) -> tuple[int, dict[str, str], bytes | None]:
        """(status, lower-case headers, body or None if longer than ``max_body``).

        ``target`` is the path and query after :attr:`base` (:meth:`_target`). A status of
        300 or more, other than those in ``accept``, raises :class:`ErrorAnswer`; throttling,
        server errors and requests that got no answer are tried again first. With
        ``error_in_ok``, a 200 whose body is an ``<Error>`` document counts as that error.
        """

        def once(
            credentials: tuple[str, str, str | None] | None,
        ) -> _Attempt[tuple[int, dict[str, str], bytes | None]]:
            status, pairs, data = self.http.request(
                method,
                self.base + target,
                list({**self.always, **headers}.items()),
                body,
                credentials=credentials,
                region=self.region,
                # Room for an error answer's XML even when a short body is asked for.
                max_body=max(max_body, 64 << 10),
            )
            answer = dict(pairs)
            if data is not None and len(data) > max_body:
                data = None
            if error_in_ok and status == 200 and data is not None and _is_error_document(data):
                code, _ = error_fields(data)
                # Retried like the status it stands for (InternalError, SlowDown: 5xx).
                status = 500 if code in _RETRY_CODES or not code else 400
            return status, answer, data, (status, answer, data)

        return self._attempts(once, lambda status: status < 300 or status in accept)

    def call(
        self,
        method: str,
        key: str | None,
        query: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
        body: bytes | None = None,
        *,
        accept: tuple[int, ...] = (),
        error_in_ok: bool = False,
    ) -> tuple[int, dict[str, str], bytes]:
        """One request with a short answer: (status, lower-case headers, body).

        ``key`` None addresses the bucket. A status of 300 or more, other than those in
        ``accept``, raises :class:`ErrorAnswer` (after retries where they could help). With
        ``error_in_ok``, a 200 whose body is an ``<Error>`` document counts as that error:
        CompleteMultipartUpload and the copies answer 200 before their work is done, and
        report a failure in the body.
        """
        status, answer, data = self._send(
            method,
            self._target(key, query),
            dict(headers or {}),
            body,
            _ANSWER_LIMIT,
            accept=accept,
            error_in_ok=error_in_ok,
        )
        if data is None:
            raise ErrorAnswer(status, "", f"an answer larger than {_ANSWER_LIMIT} bytes")
        return status, answer, data

    def put(self, key: str, data: bytes, headers: dict[str, str]) -> dict[str, str]:
        """PUT ``data`` at ``key``; returns the response headers."""
        url = self._target(key)
        _, answer, _ = self._send("PUT", url, headers, data, max_body=1 << 20)
        return answer

    def get_small(self, key: str, limit: int) -> tuple[dict[str, str], bytes] | None:
        """GET ``key`` if it is at most ``limit`` bytes: (headers, body), or None if larger.

        One ranged request: the first ``limit`` bytes and, in Content-Range, the total size.
        A larger object's body is not read (the connection is dropped instead).
        """
        url = self._target(key)
        status, answer, body = self._send(
            "GET", url, {"Range": f"bytes=0-{limit - 1}"}, max_body=limit, accept=(416,)
        )
        span = answer.get("content-range")
        if status in (200, 206) and span is not None:
            # Judged by Content-Range, never by status alone: rclone answers a ranged GET
            # with 200 and the part asked for.
            total = content_range_total(span, 0)
        elif status == 200:
            total = answer.get("content-length", "")  # Range ignored: the whole object
        elif status == 416:
            # An empty object has no byte 0 to range over.
            return None
        else:
            return None  # another success status: the HEAD + ranged GET path judges
        # Without a size, a version or a date, or with a body shorter than the size, the
        # HEAD + ranged GET path judges.
        if not total.isdigit() or int(total) > limit or body is None:
            return None
        if "etag" not in answer or "last-modified" not in answer:
            return None
        if len(body) != int(total):
            return None
        answer["content-length"] = total
        return answer, body

    def head(self, key: str, headers: dict[str, str]) -> dict[str, str]:
        """HEAD ``key``: the answer's headers (lower-case names)."""
        url = self._target(key)
        status, answer, _ = self._send("HEAD", url, headers)
        for needed in ("etag", "last-modified", "content-length"):
            if needed not in answer:
                raise self._malformed(status, f"the HEAD answer has no {needed.title()} header")
        return answer

    def upload_part(
        self, key: str, upload_id: str, number: int, data: bytes, headers: dict[str, str]
    ) -> str:
        """UploadPart ``number`` of ``upload_id``; returns the part's ETag."""
        url = self._target(key, {"partNumber": str(number), "uploadId": upload_id})
        status, answer, _ = self._send("PUT", url, headers, data, max_body=1 << 20)
        etag = answer.get("etag", "")
        if not etag:
            raise self._malformed(status, "the UploadPart answer has no ETag header")
        return etag

    def get_into(
        self,
        key: str,
        fd: int,
        offset: int,
        end: int,
        *,
        ranged: bool,
        etag: str,
        progress: Callable[[int], object] | None = None,
    ) -> tuple[int, tuple[str, str] | None]:
        """GET bytes ``offset..end`` of ``key``'s version ``etag`` into ``fd`` at ``offset``.

        The body is written by the transport, without the GIL. Returns (bytes written, why it
        stopped early or None): ``("changed", etag)`` for another version of the object,
        ``("range", header)`` for a Content-Range that does not cover ``offset``,
        ``("broken", message)`` for a body that broke off. ``progress`` is told the bytes
        written, every few MiB, as they land; what it raises stops the download.

        Raises:
            ErrorAnswer: The store refused (after retries), or never answered.
        """
        url = self._target(key)
        headers = {"If-Match": f'"{etag}"'}
        if ranged:
            headers["Range"] = f"bytes={offset}-{end - 1}"

        def once(
            credentials: tuple[str, str, str | None] | None,
        ) -> _Attempt[tuple[int, tuple[str, str] | None]]:
            status, pairs, written, problem, error_body = self.http.get_into(
                self.base + url,
                list({**self.always, **headers}.items()),
                fd,
                offset,
                end,
                credentials=credentials,
                region=self.region,
                pinned_etag=etag,
                progress=progress,
            )
            return status, dict(pairs), error_body, (written, problem)

        written, problem = self._attempts(once, lambda status: status in (200, 206))
        return written, problem

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
        status, _, data = self._send("GET", self._target(None, params), {})
        if data is None:
            raise self._malformed(status, "no listing in the answer")
        return data

    def page(self, prefix: str, token: str | None, delimiter: str | None) -> ET.Element:
        """One parsed ListObjectsV2 page."""
        try:
            root = ET.fromstring(self._page_bytes(prefix, token, delimiter))
        except ET.ParseError as exc:
            raise self._malformed(200, f"unreadable listing: {exc}") from None
        if root.tag != _NS + "ListBucketResult":
            # Elements looked up in S3's namespace would not be found: an answer in another
            # (or none) would read as an empty listing, and a sync would act on that.
            raise self._malformed(200, f"the listing's root element is {root.tag!r}")
        return root

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
                raise self._malformed(200, "a truncated page without a continuation token")
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
                    raise self._malformed(200, "a listed object without Key or LastModified")
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
                raise self._malformed(200, "a truncated page without a continuation token")


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
