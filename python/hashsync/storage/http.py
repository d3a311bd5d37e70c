"""HTTPStorage: read-only access to files on a plain HTTP(S) server.

Keys are URL paths below a base URL. Downloads use ``Range`` (with ``If-Range``) to resume
after a dropped connection instead of starting over; ``ETag`` is the hash and
``Last-Modified`` the modification time. Listing reads the server's HTML directory indexes
(Python's ``http.server``, nginx ``autoindex``, Apache ``mod_autoindex``), the way fsspec's
HTTP filesystem does.

Credentials may be part of the base URL: ``https://user:password@host/data`` sends them as
HTTP Basic authentication (never in the request URL), and a query string
(``https://host/data?token=abc``) is appended to the URL of every key. Neither appears in
``repr()`` or in error messages: those go through :func:`hashsync._redact.redact`.
"""

from __future__ import annotations

import base64
import datetime
import email.utils
import errno
import html.parser
import http.client
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from hashsync._redact import redact, redact_url
from hashsync._retry import wait_before_retry
from hashsync._threads import run_on_threads
from hashsync.errors import (
    HashsyncError,
    IntegrityError,
    InvalidArgument,
    NotFound,
    StorageUnavailable,
    error_for_status,
)
from hashsync.storage.base import (
    ByteCallback,
    ObjectInfo,
    ReadOnlyStorage,
    current_progress,
    validate_key,
    validate_prefix,
)
from hashsync.storage.local import normalize_hash
from hashsync.storage.sink import Sink, as_sink
from hashsync.verify import verify_file

__all__ = ["HTTPStorage"]

_CHUNK = 1024**2
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")
_RETRY_STATUS = {408, 429, 500, 502, 503, 504}


class _Links(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.hrefs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            for name, value in attrs:
                if name == "href" and value:
                    self.hrefs.append(value)


class _RedirectHandler(urllib.request.HTTPRedirectHandler):
    """Follows redirects, but sends ``Authorization`` only to the origin it was meant for.

    urllib copies every header of a request to the redirected one, so a server could
    otherwise have the credentials sent to a host of its choosing.
    """

    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: IO[bytes],
        code: int,
        msg: str,
        headers: http.client.HTTPMessage,
        newurl: str,
    ) -> urllib.request.Request | None:
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None and _origin(newurl) != _origin(req.full_url):
            for name in [n for n in new.headers if n.lower() == "authorization"]:
                del new.headers[name]
        return new


def _origin(url: str) -> tuple[str, str | None, int | None]:
    parts = urllib.parse.urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
    default = {"http": 80, "https": 443}.get(parts.scheme)
    return parts.scheme, parts.hostname, port or default


def http_date(value: str | None) -> datetime.datetime | None:
    """Parse an HTTP date header (``Last-Modified``) to an aware datetime; None if absent or bad."""
    if not value:
        return None
    try:
        parsed = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=datetime.UTC)
    return parsed.astimezone(datetime.UTC)


class HTTPStorage(ReadOnlyStorage):
    """Files served over HTTP(S), read-only.

    Args:
        base_url: URL that keys are relative to: key ``a/b.txt`` of
            ``https://host/data`` is ``https://host/data/a/b.txt``. A ``user:password@``
            in it (percent-encoded, as URLs require) is sent as HTTP Basic authentication;
            a query string is kept after every key:
            ``https://u:p@host/data?token=abc`` fetches ``https://host/data/a/b.txt?token=abc``
            with ``Authorization: Basic ...``. A fragment is ignored.
        headers: Extra request headers (e.g. ``{"Authorization": "Bearer ..."}``).
        timeout: Seconds to wait for a connection or for data.
        max_attempts: Attempts per request (connection errors, timeouts, 408/429/5xx are
            retried with exponential backoff), and per download for resuming.
        verify: Check downloads against the ETag as an S3 ETag (MD5 or multipart MD5).
            ``None`` (default) does so when the server is S3 (it sends ``x-amz-request-id``),
            since other servers' ETags are opaque; ``True`` always when the ETag has that
            form. A ``Content-MD5`` header is always checked.
        list_workers: Parallel HEAD requests when listing.

    Attributes:
        base_url: The base URL without credentials and query string, ending in ``/``.
        query: The base URL's query string (without ``?``), appended to every request; may
            hold a secret such as a token.

    Raises:
        InvalidArgument: ``base_url`` is not an http(s) URL, has an invalid port, or has
            credentials while ``headers`` has an ``Authorization`` header too.
    """

    def __init__(
        self,
        base_url: str,
        *,
        headers: dict[str, str] | None = None,
        timeout: float = 30.0,
        max_attempts: int = 5,
        verify: bool | None = None,
        list_workers: int = 8,
    ) -> None:
        shown = redact_url(base_url)
        parts = urllib.parse.urlsplit(base_url)
        userinfo, at, host = parts.netloc.rpartition("@")
        if parts.scheme.lower() not in ("http", "https") or not host:
            raise InvalidArgument(f"not an http(s) URL: {shown!r}")
        try:
            parts.port  # noqa: B018 - validates the port
        except ValueError:
            raise InvalidArgument(f"invalid port in {shown!r}") from None
        if max_attempts < 1:
            raise InvalidArgument("max_attempts must be at least 1")
        self.headers = dict(headers or {})
        self._auth: dict[str, str] = {}
        if at:
            if any(name.lower() == "authorization" for name in self.headers):
                raise InvalidArgument(
                    f"{shown!r} has credentials and headers has an Authorization header too"
                )
            user, _, password = userinfo.partition(":")
            pair = f"{urllib.parse.unquote(user)}:{urllib.parse.unquote(password)}"
            token = base64.b64encode(pair.encode("utf-8")).decode("ascii")
            self._auth["Authorization"] = f"Basic {token}"
        path = parts.path.rstrip("/") + "/"
        self.base_url = urllib.parse.urlunsplit((parts.scheme, host, path, "", ""))
        self.query = parts.query
        # What repr() shows: the URL as given (normalised), its secrets replaced.
        self._shown = redact_url(
            urllib.parse.urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))
        )
        self.timeout = timeout
        self.max_attempts = max_attempts
        self.verify = verify
        self.list_workers = list_workers
        self._opener = urllib.request.build_opener(_RedirectHandler)

    def __getstate__(self) -> dict[str, Any]:
        if self._auth or any(name.lower() == "authorization" for name in self.headers):
            # Credentials are never sent along (to pool processes, Dask workers).
            raise TypeError(
                f"{self!r} carries credentials (in its URL or an Authorization header) and is "
                "not pickled with them; build the storage where it is used instead"
            )
        state = self.__dict__.copy()
        state.pop("_opener", None)  # handlers hold sockets; rebuilt on the other side
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._opener = urllib.request.build_opener(_RedirectHandler)

    def __repr__(self) -> str:
        return f"HTTPStorage({self._shown!r})"

    def url(self, key: str) -> str:
        """Return the URL of ``key``: what is requested for it.

        It has the base URL's query string (which may be a secret token) but never its
        credentials; pass it through :func:`hashsync._redact.redact_url` before showing it.
        """
        return self._join(urllib.parse.quote(validate_key(key), safe="/"))

    def _join(self, quoted: str) -> str:
        """The request URL of an already percent-encoded path below the base URL."""
        url = self.base_url + quoted
        return f"{url}?{self.query}" if self.query else url

    # -- requests ----------------------------------------------------------------------

    def _request(
        self, method: str, url: str, key: str, headers: dict[str, str] | None = None
    ) -> http.client.HTTPResponse:
        request = urllib.request.Request(
            url, method=method, headers={**self.headers, **self._auth, **(headers or {})}
        )
        shown = redact_url(url)
        last: BaseException | None = None
        for attempt in range(self.max_attempts):
            if attempt:
                wait_before_retry(attempt)
            try:
                return self._opener.open(request, timeout=self.timeout)
            except urllib.error.HTTPError as exc:
                exc.close()
                if exc.code not in _RETRY_STATUS:
                    what = {404: "not found", 410: "gone", 401: "denied", 403: "denied"}
                    raise error_for_status(
                        exc.code,
                        redact(
                            f"{method} {shown}: key {key!r} {what.get(exc.code, exc.reason)} "
                            f"(HTTP {exc.code})"
                        ),
                    ) from None
                last = exc
            except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
                last = exc
        reason = getattr(last, "reason", last)
        raise StorageUnavailable(
            errno.ECONNREFUSED if isinstance(reason, ConnectionRefusedError) else errno.EIO,
            redact(
                f"{method} {shown}: {self!r} unreachable after {self.max_attempts} attempts: "
                f"{reason}"
            ),
        )

    def _head(self, key: str) -> http.client.HTTPResponse:
        url = self.url(key)
        response = self._request("HEAD", url, key)
        response.close()
        if response.status >= 300:
            raise HashsyncError(f"HEAD {redact_url(url)}: unexpected HTTP {response.status}")
        return response

    # -- reading -----------------------------------------------------------------------

    def exists(self, key: str) -> bool:
        """Return whether the server has ``key`` (a HEAD request).

        Not the default via :meth:`get_size`: a server may answer without Content-Length.
        """
        try:
            self._head(key)
        except NotFound:
            return False
        return True

    def get_size(self, key: str) -> int:
        """Return Content-Length.

        Raises:
            NotFound: The server answers 404 or 410.
        """
        length = self._head(key).headers.get("Content-Length")
        if length is None or not length.isdigit():
            raise HashsyncError(f"{redact_url(self.url(key))} gives no Content-Length")
        return int(length)

    def get_hash(self, key: str) -> str:
        """Return the ETag (without quotes or the ``W/`` weak marker).

        It is comparable with other storages' hashes when the server is S3 or one that, like
        S3, uses the content's MD5 or multipart ETag.

        Raises:
            NotFound: The server answers 404 or 410.
            HashsyncError: The server sends no ETag.
        """
        etag = self._head(key).headers.get("ETag")
        if not etag:
            raise HashsyncError(
                f"{redact_url(self.url(key))} has no ETag, "
                "so hashsync cannot hash it without downloading"
            )
        return normalize_hash(etag)

    def get_last_modified(self, key: str) -> datetime.datetime:
        """Return Last-Modified as a UTC datetime.

        Raises:
            NotFound: The server answers 404 or 410.
            HashsyncError: The server sends no Last-Modified.
        """
        value = http_date(self._head(key).headers.get("Last-Modified"))
        if value is None:
            raise HashsyncError(f"{redact_url(self.url(key))} has no Last-Modified date")
        return value

    def list(self, prefix: str = "", *, hashes: bool = True) -> Iterator[ObjectInfo]:
        """Yield the files below ``prefix`` found in the server's directory indexes.

        Every ``<a href>`` of an index page that points below it is followed: links ending
        in ``/`` are directories, the others files, each asked for its size, ETag and date
        with a HEAD request.

        Raises:
            HashsyncError: A directory's URL answers with something other than HTML.
        """
        validate_prefix(prefix)
        directory = prefix.rpartition("/")[0]
        keys = sorted(self._crawl(directory + "/" if directory else "", prefix))
        infos = run_on_threads(self._info, keys, self.list_workers, fail_fast=True)
        yield from (info for info in infos if info is not None)

    def _info(self, key: str) -> ObjectInfo | None:
        try:
            headers = self._head(key).headers
        except NotFound:
            return None  # vanished since the index was read
        length = headers.get("Content-Length", "")
        modified = http_date(headers.get("Last-Modified")) or datetime.datetime.fromtimestamp(
            0, datetime.UTC
        )
        etag = headers.get("ETag")
        return ObjectInfo(
            key,
            int(length) if length.isdigit() else 0,
            modified,
            normalize_hash(etag) if etag else None,
        )

    def _crawl(self, directory: str, prefix: str) -> set[str]:
        url = self._join(urllib.parse.quote(directory, safe="/"))
        try:
            response = self._request("GET", url, directory or "/")
        except NotFound:
            return set()
        with response:
            kind = response.headers.get_content_type()
            if kind not in ("text/html", "application/xhtml+xml"):
                raise HashsyncError(
                    f"{redact_url(url)} is not an HTML directory index ({kind}); "
                    "HTTPStorage cannot list it"
                )
            charset = response.headers.get_content_charset() or "utf-8"
            page = response.read().decode(charset, "replace")
            # Redirects (e.g. to add a trailing slash) change the base of relative links; the
            # query string (the base URL's, kept by the redirect) is not part of it.
            where = urllib.parse.urlsplit(response.geturl())._replace(query="", fragment="")
            base = where.geturl()
        parser = _Links()
        parser.feed(page)
        found: set[str] = set()
        for href in parser.hrefs:
            target = urllib.parse.urljoin(base, href)
            target = urllib.parse.urlsplit(target)._replace(query="", fragment="").geturl()
            if not target.startswith(base) or len(target) <= len(base):
                continue
            name = urllib.parse.unquote(target[len(base) :])
            stripped = name.rstrip("/")
            if not stripped or "/" in stripped:
                continue
            child = directory + stripped
            try:
                validate_key(child)
            except InvalidArgument:
                continue
            if name.endswith("/"):
                # Only descend where keys with the prefix can be.
                if child.startswith(prefix) or prefix.startswith(child + "/"):
                    found |= self._crawl(child + "/", prefix)
            elif child.startswith(prefix):
                found.add(child)
        return found

    # -- downloading -------------------------------------------------------------------

    def copy(self, key: str, destination: Sink) -> None:
        """Download ``key`` into ``destination`` atomically.

        A dropped connection is resumed with ``Range`` and ``If-Range`` (so a file changed on
        the server restarts from the beginning instead of being spliced). The result is
        checked against Content-Length and, when available, the MD5, then fsynced, given
        Last-Modified as mtime and renamed into place.

        Raises:
            NotFound: The server answers 404 or 410.
            IntegrityError: The data does not match its announced size or hash.
            StorageUnavailable: The server could not be reached (after retries).
        """
        sink = as_sink(destination)
        url = self.url(key)
        report = current_progress()
        sink.receive(key, lambda tmp: self._download(key, url, tmp, report))

    def _download(
        self, key: str, url: str, tmp: Path, report: ByteCallback | None = None
    ) -> str | None:
        """Fill ``tmp``; return the version fetched as :meth:`get_hash` gives it, if known."""
        offset = 0
        total: int | None = None
        validator: str | None = None
        first: http.client.HTTPMessage | None = None
        failures = 0
        with open(tmp, "wb") as out:
            while True:
                headers: dict[str, str] = {}
                if offset:
                    headers["Range"] = f"bytes={offset}-"
                    if validator:
                        headers["If-Range"] = validator
                response = self._request("GET", url, key, headers)
                with response:
                    if response.status == 206:
                        match = _CONTENT_RANGE.match(response.headers.get("Content-Range", ""))
                        if match is None or int(match[1]) != offset:
                            raise IntegrityError(
                                f"GET {redact_url(url)}: bad Content-Range "
                                f"{response.headers.get('Content-Range')!r}"
                            )
                        if match[3] != "*":
                            total = int(match[3])
                    else:
                        # A full answer (first request, or the file changed so If-Range
                        # failed): start from the beginning.
                        out.seek(0)
                        out.truncate()
                        offset = 0
                        first = response.headers
                        length = response.headers.get("Content-Length")
                        total = int(length) if length and length.isdigit() else None
                        etag = response.headers.get("ETag")
                        if etag and not etag.startswith("W/"):
                            validator = etag
                        else:
                            validator = response.headers.get("Last-Modified")
                    try:
                        while chunk := response.read(_CHUNK):
                            out.write(chunk)
                            offset += len(chunk)
                            if report is not None:
                                report(len(chunk))
                    except (OSError, http.client.HTTPException) as exc:
                        failures += 1
                        if failures >= self.max_attempts or not validator:
                            raise StorageUnavailable(
                                errno.EIO,
                                redact(
                                    f"GET {url}: connection lost at byte {offset} "
                                    f"after {failures} attempts: {exc}"
                                ),
                            ) from exc
                        wait_before_retry(failures)
                        continue
                if total is None or offset >= total:
                    break
                failures += 1
                if failures >= self.max_attempts or not validator:
                    raise StorageUnavailable(
                        errno.EIO,
                        f"GET {redact_url(url)}: body ended at byte "
                        f"{offset} of {total} after {failures} attempts",
                    )
            out.flush()
        assert first is not None
        if total is not None and offset != total:
            raise IntegrityError(
                f"GET {redact_url(url)}: received {offset} bytes, expected {total}"
            )
        self._verify(url, first, tmp)
        modified = http_date(first.get("Last-Modified"))
        if modified is not None:
            stamp = modified.timestamp()
            # Set on the temporary: the rename keeps it.
            os.utime(tmp, (stamp, stamp))
        etag = first.get("ETag")
        return normalize_hash(etag) if etag else None

    def _verify(self, url: str, headers: http.client.HTTPMessage, tmp: Path) -> None:
        md5 = None
        content_md5 = headers.get("Content-MD5")
        if content_md5:
            try:
                md5 = base64.b64decode(content_md5).hex()
            except ValueError:
                md5 = ""  # an undecodable Content-MD5 matches nothing
        verify = self.verify
        if verify is None:
            # Only S3-like servers promise that the ETag is the content's MD5.
            verify = "x-amz-request-id" in headers or "x-amz-id-2" in headers
        raw_etag = headers.get("ETag") or ""
        etag = normalize_hash(raw_etag) if verify and not raw_etag.startswith("W/") else None
        verify_file(tmp, what=f"GET {redact_url(url)}", md5=md5, etag=etag)
