"""The Google Cloud Storage JSON API, sent through hashsync's Rust transport.

One request path for every GCS operation (the same keep-alive pool, GIL released, as S3's):
object metadata, listings, ranged downloads straight into a file, single-request and
resumable uploads, server-side rewrites, deletes. Answers are JSON; object names are
percent-encoded whole (``/`` too), as the API requires.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import errno
import json
import os
import re
import urllib.parse
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from hashsync._redact import redact
from hashsync._retry import wait_before_retry
from hashsync.errors import (
    HashsyncError,
    IntegrityError,
    InvalidArgument,
    NotFound,
    StorageUnavailable,
    error_for_status,
)
from hashsync.storage._gcs_auth import Tokens
from hashsync.storage._s3list import proxy_for, transport

__all__ = [
    "DEFAULT_ENDPOINT",
    "is_loopback",
    "GCSClient",
    "GCSObject",
    "emulator_endpoint",
    "object_path",
]

DEFAULT_ENDPOINT = "https://storage.googleapis.com"
_API = "/storage/v1"
_UPLOAD = "/upload/storage/v1"
# Throttling and server errors: retried with backoff (Google's retry guidance).
_RETRY_STATUS = {408, 429, 500, 502, 503, 504}
# JSON answers (metadata, listing pages) are small; a larger one is not a GCS answer.
_ANSWER_LIMIT = 32 * 1024**2
_CERTIFICATE = re.compile(r"certificate|UnknownIssuer|NotValidForName|BadSignature", re.I)

_REASONS = {404: "not found", 401: "denied", 403: "denied", 412: "precondition failed"}

_T = TypeVar("_T")


def is_loopback(host: str | None) -> bool:
    """Whether ``host`` names this machine (127.0.0.1, ::1, localhost, *.localhost)."""
    host = (host or "").lower().strip("[]")
    return host in ("127.0.0.1", "::1", "localhost") or host.endswith(".localhost")


def emulator_endpoint() -> str | None:
    """The endpoint ``STORAGE_EMULATOR_HOST`` names, as google-cloud-storage reads it.

    ``host:port`` means ``http://host:port``; a value with a scheme is used as it is.
    """
    host = os.environ.get("STORAGE_EMULATOR_HOST", "").strip()
    if not host:
        return None
    return host.rstrip("/") if "://" in host else f"http://{host.rstrip('/')}"


def object_path(bucket: str, name: str) -> str:
    """``/b/BUCKET/o/NAME`` with the name percent-encoded whole (``/`` becomes ``%2F``)."""
    return f"/b/{bucket}/o/{urllib.parse.quote(name, safe='')}"


def _hex_of_b64(value: Any, length: int) -> str | None:
    """The hex of a base64 checksum field of ``length`` bytes, or None if absent or malformed."""
    if not isinstance(value, str) or not value:
        return None
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return None
    return raw.hex() if len(raw) == length else None


def parse_time(value: Any) -> datetime.datetime | None:
    """An RFC 3339 time of the API (``2026-12-06T10:00:00.123Z``) as an aware datetime."""
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=datetime.UTC)
    return parsed.astimezone(datetime.UTC)


@dataclass(frozen=True)
class GCSObject:
    """What hashsync reads from an object resource.

    Attributes:
        name: The object's full name in the bucket.
        size: Bytes.
        md5: The MD5 of the content (hex); None for composite objects, which have none.
        crc32c: The CRC32C of the content (hex of the big-endian value).
        generation: The version of the content (changes on every write).
        metageneration: The version of the metadata.
        updated: When the object was last written.
        metadata: Custom metadata.
    """

    name: str
    size: int
    md5: str | None
    crc32c: str | None
    generation: str
    metageneration: str
    updated: datetime.datetime
    metadata: dict[str, str]

    @classmethod
    def from_resource(cls, resource: Any, what: str) -> GCSObject:
        """Read an object resource, refusing one without what hashsync relies on.

        Raises:
            IntegrityError: A field is missing or malformed (never guessed at: a wrong size
                or date would make a sync skip or delete the wrong thing).
        """
        if not isinstance(resource, dict):
            raise IntegrityError(f"{what}: the answer is not an object resource")
        name = resource.get("name")
        size = resource.get("size")
        updated = parse_time(resource.get("updated"))
        generation = resource.get("generation")
        if (
            not isinstance(name, str)
            or not str(size).isdigit()
            or updated is None
            or not str(generation).isdigit()
        ):
            raise IntegrityError(
                f"{what}: an object resource without a usable name, size, generation or "
                "updated time"
            )
        md5 = _hex_of_b64(resource.get("md5Hash"), 16)
        crc = _hex_of_b64(resource.get("crc32c"), 4)
        if md5 is None and crc is None:
            raise IntegrityError(f"{what}: {name!r} has neither an md5Hash nor a crc32c")
        metadata = resource.get("metadata")
        return cls(
            name=name,
            size=int(str(size)),
            md5=md5,
            crc32c=crc,
            generation=str(generation),
            metageneration=str(resource.get("metageneration") or "1"),
            updated=updated,
            metadata={str(k): str(v) for k, v in metadata.items()}
            if isinstance(metadata, dict)
            else {},
        )

    @property
    def hash(self) -> str:
        """``"md5:<hex>"``, or ``"crc32c:<hex>"`` for a composite object (no MD5)."""
        return f"md5:{self.md5}" if self.md5 is not None else f"crc32c:{self.crc32c}"


def _error_message(body: bytes | None) -> str:
    """The ``error.message`` of a JSON error answer, else the start of the body."""
    if not body:
        return ""
    try:
        data = json.loads(body)
    except ValueError:
        return body[:200].decode("utf-8", "replace").strip()
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return error["message"]
    return body[:200].decode("utf-8", "replace").strip()


def _origin(url: str) -> tuple[str, str]:
    parts = urllib.parse.urlsplit(url)
    return parts.scheme.lower(), parts.netloc.lower()


class GCSClient:
    """Requests to one GCS endpoint, retried and turned into hashsync errors.

    Args:
        endpoint: ``https://storage.googleapis.com``, or an emulator's address.
        tokens: Where the ``Authorization`` header comes from.
        timeout: Seconds allowed for each of sending and receiving an answer.
        connect_timeout: Seconds allowed to connect.
        max_attempts: Attempts per request (connection failures, 408, 429 and 5xx retried).
    """

    def __init__(
        self,
        endpoint: str,
        tokens: Tokens,
        *,
        timeout: float,
        connect_timeout: float | None,
        max_attempts: int,
    ) -> None:
        self.endpoint = endpoint.rstrip("/")
        self.tokens = tokens
        self.max_attempts = max_attempts
        # Never through a proxy to this machine: an emulator, a test server, a local gateway
        # (a proxy would see an http endpoint's bearer token in clear).
        proxy = (
            None
            if is_loopback(urllib.parse.urlsplit(self.endpoint).hostname)
            else (proxy_for(self.endpoint))
        )
        self.http = transport(self.endpoint, timeout, None, proxy, connect_timeout)

    # -- the request loop ----------------------------------------------------------------

    def _attempts(
        self,
        what: str,
        once: Callable[[dict[str, str]], tuple[int, dict[str, str], bytes | None, _T]],
        ok: Callable[[int], bool],
        attempts: int | None = None,
    ) -> _T:
        """Call ``once(auth_headers)`` until GCS accepts, or retrying cannot help.

        ``once`` returns (status, headers, error body, result). A 401 refreshes the token
        once (it may have expired in flight); throttling, server errors and requests that got
        no answer are retried with backoff; anything else raises the hashsync error of the
        status, naming ``what``.
        """
        limit = attempts or self.max_attempts
        failures = 0
        refreshed = False
        force = False
        while True:
            auth = self.tokens.headers(force=force)
            force = False
            try:
                status, headers, error_body, result = once(auth)
            except ValueError as exc:
                raise InvalidArgument(redact(f"{what}: {exc}")) from None
            except OSError as exc:
                if exc.errno is not None:
                    raise  # a local file failed (a download's target): not the store's doing
                if _CERTIFICATE.search(str(exc)):
                    raise StorageUnavailable(
                        errno.EIO,
                        f"{what}: the TLS certificate of {self.endpoint} is not trusted: {exc}",
                    ) from None
                failures += 1
                if failures >= limit:
                    code = (
                        errno.ECONNREFUSED if isinstance(exc, ConnectionRefusedError) else errno.EIO
                    )
                    raise StorageUnavailable(
                        code,
                        f"{what}: {self.endpoint} unreachable after {failures} attempts: {exc}",
                    ) from None
                wait_before_retry(failures)
                continue
            if ok(status):
                return result
            if status == 401 and not refreshed and self.tokens.credentials is not None:
                refreshed = force = True
                continue
            failures += 1
            if status in _RETRY_STATUS and failures < limit:
                wait_before_retry(failures)
                continue
            message = _error_message(error_body) or _REASONS.get(status, "refused")
            text = redact(f"{what}: {message} (HTTP {status})")
            if status == 400 and re.search(
                r"(MD5|CRC32C|checksum).*(match|mismatch)", message, re.I
            ):
                raise IntegrityError(text)  # GCS refused data that did not match its checksum
            if status == 400:
                raise InvalidArgument(text)  # an invalid name, parameter or request
            raise error_for_status(status, text)

    def send(
        self,
        method: str,
        target: str,
        *,
        what: str,
        query: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
        body: bytes | None = None,
        accept: tuple[int, ...] = (),
        attempts: int | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        """One request with a short answer: (status, lower-case headers, body).

        ``target`` is a path below the endpoint (``/storage/v1/b/...``) or, for a resumable
        upload's session, a full URL on the endpoint. A status of 300 or more, other than
        those in ``accept``, raises (after retries where they could help; ``attempts``
        overrides how many).
        """
        url = target if "://" in target else self.endpoint + target
        if query:
            url += ("&" if "?" in url else "?") + urllib.parse.urlencode(query)
        sent = list((headers or {}).items())

        def once(auth: dict[str, str]) -> tuple[int, dict[str, str], bytes | None, Any]:
            status, pairs, data = self.http.request(
                method, url, sent + list(auth.items()), body, max_body=_ANSWER_LIMIT
            )
            answer = dict(pairs)
            return status, answer, data, (status, answer, data)

        status, answer, data = self._attempts(
            what, once, lambda status: status < 300 or status in accept, attempts
        )
        if data is None:
            raise IntegrityError(f"{what}: an answer larger than {_ANSWER_LIMIT} bytes")
        return status, answer, data

    def json(
        self,
        method: str,
        target: str,
        *,
        what: str,
        query: dict[str, str] | None = None,
        payload: Any = None,
        accept: tuple[int, ...] = (),
    ) -> tuple[int, Any]:
        """A request whose body and answer are JSON: (status, parsed answer or None)."""
        headers = {"Accept": "application/json"}
        body = None
        if payload is not None:
            headers["Content-Type"] = "application/json; charset=UTF-8"
            body = json.dumps(payload).encode()
        status, _, data = self.send(
            method, target, what=what, query=query, headers=headers, body=body, accept=accept
        )
        return status, _parse_json(data, what) if data.strip() else None

    # -- objects -------------------------------------------------------------------------

    def get_object(self, bucket: str, name: str, *, what: str) -> GCSObject:
        """The object's metadata (``objects.get``).

        Raises:
            NotFound: No such object (or bucket).
        """
        _, resource = self.json("GET", _API + object_path(bucket, name), what=what)
        return GCSObject.from_resource(resource, what)

    def list_page(
        self,
        bucket: str,
        prefix: str,
        token: str | None,
        delimiter: str | None,
        *,
        what: str,
        max_results: int = 1000,
    ) -> tuple[list[Any], list[str], str | None]:
        """One page of ``objects.list``: (object resources, prefixes, next page token)."""
        query = {"prefix": prefix, "maxResults": str(max_results)}
        if token:
            query["pageToken"] = token
        if delimiter:
            query["delimiter"] = delimiter
        _, page = self.json("GET", f"{_API}/b/{bucket}/o", what=what, query=query)
        if not isinstance(page, dict):
            raise IntegrityError(f"{what}: the listing is not a JSON object")
        items = page.get("items") or []
        prefixes = page.get("prefixes") or []
        following = page.get("nextPageToken")
        if following and following == token:
            raise IntegrityError(f"{what}: the store gave the same page token twice")
        token = following
        if not isinstance(items, list) or not isinstance(prefixes, list):
            raise IntegrityError(f"{what}: a listing page without a list of items")
        return items, [p for p in prefixes if isinstance(p, str)], token or None

    def delete(self, bucket: str, name: str, *, what: str, generation: str | None = None) -> None:
        """``objects.delete``, only of ``generation`` if given (``ifGenerationMatch``).

        Raises:
            NotFound: No such object.
            PreconditionFailed: The object is of another generation.
        """
        query = {"ifGenerationMatch": generation} if generation is not None else None
        self.send("DELETE", _API + object_path(bucket, name), what=what, query=query)

    def get_into(
        self,
        bucket: str,
        name: str,
        generation: str,
        fd: int,
        offset: int,
        end: int,
        *,
        ranged: bool,
        what: str,
        progress: Callable[[int], object] | None = None,
    ) -> tuple[int, tuple[str, str] | None]:
        """GET bytes ``offset..end`` of ``generation`` of the object into ``fd`` at ``offset``.

        Pinned with ``ifGenerationMatch``: another generation answers 412
        (:class:`~hashsync.errors.PreconditionFailed`), and a generation header that names
        another one stops the body (``("changed", generation)``). Returns (bytes written, why
        it stopped early or None), as :meth:`S3Transport.get_into` does.
        """
        url = (
            f"{self.endpoint}{_API}{object_path(bucket, name)}?alt=media"
            f"&ifGenerationMatch={generation}"
        )
        # The bytes as stored, even for an object stored gzip-encoded (gsutil cp -z): without
        # this, GCS decompresses on the fly, ignores Range, and the bytes match no checksum
        # (rclone downloads such objects as stored too). The transport never decompresses.
        headers = [("Accept-Encoding", "gzip")]
        if ranged:
            headers.append(("Range", f"bytes={offset}-{end - 1}"))

        def once(auth: dict[str, str]) -> tuple[int, dict[str, str], bytes | None, Any]:
            status, pairs, written, problem, error_body = self.http.get_into(
                url, headers + list(auth.items()), fd, offset, end, progress=progress
            )
            answer = dict(pairs)
            seen = answer.get("x-goog-generation")
            if status in (200, 206) and seen and seen != generation and problem is None:
                # Written already, but the caller discards the file on "changed".
                problem = ("changed", seen)
            return status, answer, error_body, (written, problem)

        return self._attempts(what, once, lambda status: status in (200, 206))

    # -- uploads -------------------------------------------------------------------------

    def insert(
        self,
        bucket: str,
        resource: dict[str, Any],
        data: bytes,
        *,
        what: str,
        conditions: dict[str, str],
    ) -> GCSObject:
        """Store ``data`` with ``resource`` (name, checksums, metadata) in one request.

        ``uploadType=multipart``: the checksums in ``resource`` are checked by GCS before the
        object exists.
        """
        boundary = f"hashsync-{uuid.uuid4().hex}"
        body = b"".join(
            [
                f"--{boundary}\r\nContent-Type: application/json; charset=UTF-8\r\n\r\n".encode(),
                json.dumps(resource).encode(),
                f"\r\n--{boundary}\r\nContent-Type: application/octet-stream\r\n\r\n".encode(),
                data,
                f"\r\n--{boundary}--\r\n".encode(),
            ]
        )
        _, _, answer = self.send(
            "POST",
            f"{_UPLOAD}/b/{bucket}/o",
            what=what,
            query={"uploadType": "multipart", **conditions},
            headers={"Content-Type": f"multipart/related; boundary={boundary}"},
            body=body,
        )
        return GCSObject.from_resource(_parse_json(answer, what), what)

    def start_resumable(
        self,
        bucket: str,
        resource: dict[str, Any],
        size: int,
        *,
        what: str,
        conditions: dict[str, str],
    ) -> str:
        """Open a resumable upload session of ``size`` bytes; return its URL.

        Raises:
            IntegrityError: The session URL is not on this endpoint (the bearer token is
                only ever sent to the endpoint it was meant for).
        """
        _, headers, _ = self.send(
            "POST",
            f"{_UPLOAD}/b/{bucket}/o",
            what=what,
            query={"uploadType": "resumable", **conditions},
            headers={
                "Content-Type": "application/json; charset=UTF-8",
                "X-Upload-Content-Type": "application/octet-stream",
                "X-Upload-Content-Length": str(size),
            },
            body=json.dumps(resource).encode(),
        )
        session = headers.get("location", "")
        if not session:
            raise IntegrityError(f"{what}: the store opened no upload session (no Location)")
        if _origin(session) != _origin(self.endpoint):
            raise IntegrityError(
                f"{what}: the upload session is at {_origin(session)[1]!r}, not on "
                f"{self.endpoint}; refusing to send credentials there"
            )
        return session

    def put_chunk(
        self,
        session: str,
        data: bytes,
        start: int,
        total: int,
        *,
        what: str,
        checksums: dict[str, str] | None = None,
    ) -> tuple[int, GCSObject | None]:
        """Send bytes ``start..start+len(data)`` of a session; return (bytes it holds, object).

        The object is returned once the last byte arrived; before that, what the store says
        it holds (a chunk may be taken in part). ``checksums`` (``X-Goog-Hash``) go with the
        last chunk: GCS refuses to create an object whose content does not match them.
        """
        end = start + len(data)
        if data:
            span = f"bytes {start}-{end - 1}/{total}"
        else:
            span = f"bytes */{total}"  # nothing left to send: ask for the object
        headers = {"Content-Range": span}
        if checksums and end == total:
            headers["X-Goog-Hash"] = ",".join(f"{k}={v}" for k, v in checksums.items())
        # One attempt: resending a chunk blindly could repeat bytes the session holds; the
        # caller asks the session what it has (session_status) and resumes from there.
        return self._session_put(session, total, headers, data, what=what, attempts=1)

    def _session_put(
        self,
        session: str,
        total: int,
        headers: dict[str, str],
        data: bytes | None,
        *,
        what: str,
        attempts: int | None,
    ) -> tuple[int, GCSObject | None]:
        """One PUT to a session: (bytes it holds, the object once complete)."""
        try:
            status, answer, body = self.send(
                "PUT", session, what=what, headers=headers, body=data, accept=(308,),
                attempts=attempts,
            )  # fmt: skip
        except NotFound:
            raise _expired(what) from None
        if status == 308:
            return _persisted(answer.get("range")), None
        return total, GCSObject.from_resource(_parse_json(body, what), what)

    def cancel_session(self, session: str, *, what: str) -> None:
        """End an unfinished upload session (GCS answers 499); failures are ignored."""
        try:
            self.send("DELETE", session, what=what, accept=(499,), attempts=1)
        except (HashsyncError, OSError):
            pass

    def session_status(
        self, session: str, total: int, *, what: str
    ) -> tuple[int, GCSObject | None]:
        """How many bytes a session holds (and the object, if it is complete)."""
        headers = {"Content-Range": f"bytes */{total}"}
        return self._session_put(session, total, headers, None, what=what, attempts=None)

    def rewrite(
        self,
        source_bucket: str,
        source_name: str,
        bucket: str,
        name: str,
        *,
        what: str,
        source_generation: str,
    ) -> GCSObject:
        """Copy an object server-side (``objects.rewrite``), following rewrite tokens.

        The source is pinned to ``source_generation`` (``ifSourceGenerationMatch``).
        """
        target = (
            f"{_API}{object_path(source_bucket, source_name)}/rewriteTo{object_path(bucket, name)}"
        )
        token: str | None = None
        while True:
            query = {"ifSourceGenerationMatch": source_generation}
            if token:
                query["rewriteToken"] = token
            _, answer = self.json("POST", target, what=what, query=query, payload={})
            if not isinstance(answer, dict):
                raise IntegrityError(f"{what}: the rewrite answer is not a JSON object")
            if answer.get("done", True) and isinstance(answer.get("resource"), dict):
                return GCSObject.from_resource(answer["resource"], what)
            token = answer.get("rewriteToken")
            if not isinstance(token, str) or not token:
                raise IntegrityError(f"{what}: an unfinished rewrite without a rewriteToken")

    def create_bucket(self, bucket: str, project: str | None, *, what: str) -> None:
        """``buckets.insert``; an existing bucket of the caller's is not an error."""
        query = {"project": project} if project else None
        status, _ = self.json(
            "POST", f"{_API}/b", what=what, query=query, payload={"name": bucket}, accept=(409,)
        )
        if status == 409:
            # Taken: fine if it is ours (readable), an error naming it otherwise.
            self.json("GET", f"{_API}/b/{bucket}", what=f"{what} (the name is taken)")


def _expired(what: str) -> StorageUnavailable:
    # GCS forgets a session after a week, or once it was cancelled: the upload starts over.
    return StorageUnavailable(errno.EIO, f"{what}: the upload session has expired; upload again")


def _persisted(value: str | None) -> int:
    """The bytes a session holds, from a 308 answer's ``Range: bytes=0-N`` (none: 0)."""
    if not value:
        return 0
    match = re.fullmatch(r"\s*bytes=0-(\d+)\s*", value)
    if match is None:
        raise HashsyncError(f"an upload session answered with an unusable Range {value!r}")
    return int(match[1]) + 1


def _parse_json(data: bytes | None, what: str) -> Any:
    try:
        return json.loads(data or b"")
    except ValueError:
        raise IntegrityError(f"{what}: the answer is not JSON") from None
