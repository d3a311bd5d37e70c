"""HubStorage: one dataset of a hub as a read-only storage (``hub://host:port/dataset``).

Keys are the dataset's manifest paths (below an optional prefix). The hash is the manifest's
``"sha256:<hex>"`` of the whole content, so ``hashsync sync hub://gpu-box:8000/mnist ./mnist``
compares by content: the local side is hashed with SHA-256 (through the hash state cache) and
only files whose content differs are downloaded, each verified while it streams and renamed
into place only when complete. A cache given a ``HubStorage`` as its tier keeps the manifest
hash as the entry's version and revalidates with one ``HEAD`` per key.

Needs no server dependencies (the client's urllib3 comes with boto3).
"""

from __future__ import annotations

import datetime
import errno
import hashlib
import os
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hashsync._redact import redact
from hashsync._retry import wait_before_retry
from hashsync.errors import IntegrityError, InvalidArgument, NotFound, StorageUnavailable
from hashsync.hub._manifest import ALGORITHM, valid_dataset_name
from hashsync.hub.client import DatasetHubClient
from hashsync.storage.base import (
    ObjectInfo,
    ReadOnlyStorage,
    SyncListing,
    current_progress,
    validate_key,
    validate_prefix,
)
from hashsync.storage.http import http_date
from hashsync.storage.sink import Sink, as_sink

__all__ = ["HubStorage"]

_CHUNK = 1024 * 1024
_EPOCH = datetime.datetime.fromtimestamp(0, datetime.UTC)


def _api_key_from_environment() -> str | None:
    for name in ("HASHSYNC_HUB_API_KEY", "DSX_API_KEY"):
        value = os.environ.get(name, "")
        # The server accepts a comma-separated list; a client sends the first.
        first = value.split(",")[0].strip()
        if first:
            return first
    return None


class HubStorage(ReadOnlyStorage):
    """The files of one hub dataset, read-only, hashed by the manifest's SHA-256.

    Pickled (for pool processes and Dask workers) without its API key: the other side takes
    its own from ``HASHSYNC_HUB_API_KEY``.

    Args:
        base_url: The hub, e.g. ``"http://gpu-box:8000"``.
        dataset: The dataset's name.
        prefix: Only the files below this path of the dataset (``"train/"``); keys are
            relative to it.
        api_key: A key the hub accepts; default ``$HASHSYNC_HUB_API_KEY`` (its first key) or
            ``$DSX_API_KEY``; None for a hub started with ``--no-auth``.
        timeout: Seconds to wait for a connection or for data.
        max_attempts: Attempts per download: a connection lost mid-file resumes with
            ``Range`` + ``If-Range`` (a file that changed meanwhile starts over).
        max_connections: Connections kept open to the hub (a sync downloads on many
            threads at once).

    Raises:
        InvalidArgument: Not an http(s) hub address, or not a dataset name.
    """

    hash_algorithm = ALGORITHM

    def __init__(
        self,
        base_url: str,
        dataset: str,
        *,
        prefix: str = "",
        api_key: str | None = None,
        timeout: float = 60.0,
        max_attempts: int = 3,
        max_connections: int = 32,
    ) -> None:
        if not isinstance(dataset, str) or not valid_dataset_name(dataset):
            raise InvalidArgument(f"not a dataset name: {dataset!r}")
        if prefix:
            validate_key(prefix.rstrip("/"))
            prefix = prefix.rstrip("/") + "/"
        if max_attempts < 1:
            raise InvalidArgument("max_attempts must be at least 1")
        if api_key is None:
            api_key = _api_key_from_environment()
        # The client's worker count only sizes its connection pool here.
        self.client = DatasetHubClient(
            base_url, api_key, cache_dir=None, timeout=timeout, num_workers=max_connections
        )
        self.dataset = dataset
        self.prefix = prefix
        self.max_attempts = max_attempts

    def __getstate__(self) -> dict[str, Any]:
        # Never the API key: the other side (a pool process, a Dask worker) takes its own from
        # HASHSYNC_HUB_API_KEY, as an S3Storage takes its credentials from the environment.
        return {
            "base_url": self.client.base_url,
            "dataset": self.dataset,
            "prefix": self.prefix,
            "timeout": self.client.timeout,
            "max_attempts": self.max_attempts,
            "max_connections": self.client.num_workers,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state)  # type: ignore[misc]

    @classmethod
    def from_url(cls, url: str, **options: Any) -> HubStorage:
        """Open ``hub://HOST[:PORT]/DATASET[/PREFIX]`` (``hubs://`` for a hub behind HTTPS).

        The port defaults to the server's (8000 for ``hub://``, 443 for ``hubs://``).

        Raises:
            InvalidArgument: The URL names no dataset, or has credentials (pass ``api_key=``
                or set ``HASHSYNC_HUB_API_KEY``: a key in a URL ends up in shell histories).
        """
        try:
            parts = urllib.parse.urlsplit(url)
            port = parts.port
        except ValueError as exc:
            raise InvalidArgument(f"not a valid hub URL: {redact(url)!r} ({exc})") from None
        scheme = parts.scheme.lower()
        if scheme not in ("hub", "hubs") or not parts.hostname:
            raise InvalidArgument(f"not a hub URL (hub://HOST:PORT/DATASET): {redact(url)!r}")
        if "@" in parts.netloc:
            raise InvalidArgument(
                f"{redact(url)!r}: put the API key in HASHSYNC_HUB_API_KEY or api_key=, "
                "not in the URL"
            )
        if parts.query or parts.fragment:
            raise InvalidArgument(f"{redact(url)!r}: a hub URL has no query or fragment")
        dataset, _, prefix = urllib.parse.unquote(parts.path.lstrip("/")).partition("/")
        if not dataset:
            raise InvalidArgument(f"{redact(url)!r} names no dataset (hub://HOST:PORT/DATASET)")
        host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
        if port is None and scheme == "hub":
            port = 8000
        http = "https" if scheme == "hubs" else "http"
        base = f"{http}://{host}" + (f":{port}" if port is not None else "")
        return cls(base, dataset, prefix=prefix, **options)

    def __repr__(self) -> str:
        parts = urllib.parse.urlsplit(self.client.base_url)
        scheme = "hubs" if parts.scheme == "https" else "hub"
        return f"HubStorage('{scheme}://{parts.netloc}/{self.dataset}/{self.prefix}')"

    def location(self) -> tuple[tuple[str, ...], str] | None:
        """``(("hub", base URL, dataset), prefix)``: two storages of one dataset overlap."""
        return ("hub", self.client.base_url, self.dataset), self.prefix

    def close(self) -> None:
        """Close the hub connections."""
        self.client._http.clear()

    # -- reading -----------------------------------------------------------------------

    def _path(self, key: str) -> str:
        return self.prefix + validate_key(key)

    def _head(self, key: str) -> Any:
        path = self._path(key)
        try:
            return self.client._request(self.client._file_url(self.dataset, path), method="HEAD")
        except NotFound:
            raise NotFound(errno.ENOENT, f"key {key!r} not found in {self!r}") from None

    def exists(self, key: str) -> bool:
        """Return whether the dataset has a file ``key`` (one HEAD request)."""
        try:
            self._head(key)
        except NotFound:
            return False
        return True

    def get_size(self, key: str) -> int:
        """Return the file's size (one HEAD request).

        Raises:
            NotFound: The dataset has no such file.
        """
        length = self._head(key).headers.get("Content-Length", "").strip()
        if not (length.isascii() and length.isdigit() and len(length) <= 19):
            raise IntegrityError(f"{self!r}: {key!r} was answered without a Content-Length")
        return int(length)

    def get_hash(self, key: str) -> str:
        """Return the manifest hash, ``"sha256:<hex>"`` (one HEAD request).

        Raises:
            NotFound: The dataset has no such file.
        """
        headers = self._head(key).headers
        value = headers.get("X-Hashsync-Hash") or ""
        if not value:
            etag = headers.get("ETag", "")
            if etag and not etag.startswith("W/"):
                value = f"{ALGORITHM}:{etag.strip(chr(34))}"
        if not value:
            # A seed (DSX) hub sends no ETag: the manifest has the hash.
            for info in self.list(key):
                if info.key == key and info.hash is not None:
                    return info.hash
            raise NotFound(errno.ENOENT, f"key {key!r} not found in {self!r}")
        return value

    def get_last_modified(self, key: str) -> datetime.datetime:
        """Return Last-Modified (whole seconds, UTC; one HEAD request).

        Raises:
            NotFound: The dataset has no such file.
        """
        value = http_date(self._head(key).headers.get("Last-Modified"))
        if value is None:
            raise IntegrityError(f"{self!r}: {key!r} was answered without a Last-Modified date")
        return value

    def list(self, prefix: str = "", *, hashes: bool = True) -> Iterator[ObjectInfo]:
        """Yield the dataset's files whose keys start with ``prefix``, from one manifest request.

        Raises:
            NotFound: The hub has no such dataset.
        """
        validate_prefix(prefix)
        start = self.prefix + prefix
        infos = []
        for entry in self.client.get_manifest(self.dataset):
            path = entry["path"]
            if not path.startswith(start):
                continue
            mtime = entry.get("mtime")
            modified = (
                datetime.datetime.fromtimestamp(int(mtime), datetime.UTC)
                if isinstance(mtime, int | float)
                else _EPOCH
            )
            infos.append(
                ObjectInfo(path[len(self.prefix) :], entry["size"], modified, entry["hash"])
            )
        yield from sorted(infos)

    def list_for_sync(self, rules: Any, **options: Any) -> SyncListing:
        """List for a sync (see :meth:`Storage.list_for_sync`).

        Files the hub could not read are an error of the listing, so a sync deletes nothing
        on their account.
        """
        listing = super().list_for_sync(rules, **options)
        left_out = self.client.unreadable.get(self.dataset, 0)
        if left_out:
            listing.errors.append(
                (
                    "",
                    f"the hub could not read {left_out} file(s) of dataset {self.dataset!r} "
                    "and left them out of its manifest (its log names them)",
                )
            )
        return listing

    # -- downloading -------------------------------------------------------------------

    def copy(self, key: str, destination: Sink) -> None:
        """Download ``key`` into ``destination``, verified against its SHA-256, atomically.

        The content is hashed while it streams and must match the manifest's hash and size
        (the manifest this storage listed; headers of the file's answer are not trusted for
        that), and no more than that size is read; the file gets the hub's Last-Modified as
        its mtime and appears under its name only when complete. A connection lost mid-file
        resumes with ``Range`` and ``If-Range``.

        Raises:
            NotFound: The dataset has no such file.
            IntegrityError: The data did not match the manifest's hash or size (or the file
                changed on the hub since its manifest was read: a new listing picks it up).
            StorageUnavailable: The hub could not be reached.
        """
        sink = as_sink(destination)
        url = self.client._file_url(self.dataset, self._path(key))
        report = current_progress()
        sink.receive(key, lambda tmp: self._download(key, url, tmp, report))

    def _download(self, key: str, url: str, tmp: Path, report: Any) -> str:
        # The manifest already read (a sync's listing) vouches for the content; the hub's
        # headers only pin the version a resumed request continues (If-Range). A file that
        # changed on the hub since is checked against the manifest read again, once.
        path = self._path(key)
        entry = self.client._entry(self.dataset, path, revalidate=False)
        try:
            return self._fetch(key, url, tmp, report, entry)
        except IntegrityError:
            fresh = self.client._entry(self.dataset, path)
            if fresh == entry:
                raise
            return self._fetch(key, url, tmp, report, fresh)

    def _fetch(self, key: str, url: str, tmp: Path, report: Any, entry: dict[str, Any]) -> str:
        """Download into ``tmp`` what ``entry`` names, reading no more than its size."""
        import urllib3

        size = entry["size"]
        what = f"{self!r}: {key!r}"
        digest = hashlib.sha256()
        have = 0
        want = entry["hash"].partition(":")[2]
        modified: datetime.datetime | None = None
        with open(tmp, "wb") as out:
            for attempt in range(self.max_attempts):
                headers = {}
                if have:
                    headers = {"Range": f"bytes={have}-", "If-Range": f'"{want}"'}
                try:
                    response = self.client._request(url, headers, stream=True, ok=(200, 206))
                except NotFound:
                    raise NotFound(errno.ENOENT, f"key {key!r} not found in {self!r}") from None
                try:
                    if response.status == 200:
                        # The whole file: the first answer, or the file changed (If-Range).
                        out.seek(0)
                        out.truncate()
                        digest, have = hashlib.sha256(), 0
                        modified = http_date(response.headers.get("Last-Modified"))
                    for chunk in self.client._chunks(response, size - have, what):
                        out.write(chunk)
                        digest.update(chunk)
                        have += len(chunk)
                        if report is not None:
                            report(len(chunk))
                    break
                except (urllib3.exceptions.HTTPError, OSError) as exc:
                    if attempt + 1 >= self.max_attempts:
                        raise StorageUnavailable(
                            errno.EIO,
                            f"GET {redact(self.client.base_url + url)}: connection lost at "
                            f"byte {have} after {attempt + 1} attempts: {exc}",
                        ) from None
                    wait_before_retry(attempt + 1)
            out.flush()
        if have != size:
            raise IntegrityError(f"{what}: received {have} bytes, the manifest says {size}")
        got = digest.hexdigest()
        if got != want:
            raise IntegrityError(f"{what}: content does not match its manifest {ALGORITHM} {want}")
        if modified is not None:
            stamp = modified.timestamp()
            os.utime(tmp, (stamp, stamp))  # the rename keeps it
        return f"{ALGORITHM}:{got}"
