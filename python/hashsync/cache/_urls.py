"""FiftyOne-style URL helpers: a local path for any URL, downloading into the ``urls`` cache."""

from __future__ import annotations

import errno
import hashlib
import os
import threading
import urllib.parse
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from hashsync._redact import redact
from hashsync.cache import _settings
from hashsync.cache._tiers import CopyToLocalCache
from hashsync.errors import InvalidArgument, NotFound
from hashsync.storage.base import Storage, validate_key

__all__ = ["download_many", "local_path", "url_cache", "url_key"]

# Parameters of presigned URLs: they change on every signing, never the content.
_SIGNING = {
    "x-amz-algorithm",
    "x-amz-credential",
    "x-amz-date",
    "x-amz-expires",
    "x-amz-signedheaders",
    "x-amz-signature",
    "x-amz-security-token",
    "signature",
    "expires",
    "awsaccesskeyid",
}


def url_key(url: str) -> tuple[str, str, str, str]:
    """Split a remote URL into ``(cache key, scheme, storage base, key at the storage)``.

    The cache key is ``s3/BUCKET/KEY`` (``gs/BUCKET/KEY``) or ``SCHEME/HOST[:PORT]/PATH`` (a
    hub's PATH starts with the dataset), plus a directory for a query string (signing
    parameters of presigned URLs left out), so cached files keep their real names.
    Credentials in the URL never enter the key.

    Raises:
        InvalidArgument: Not an ``s3://``, ``gs://``, ``http(s)://`` or ``hub(s)://`` URL of a
            file.
    """
    if not isinstance(url, str) or not url.strip():
        raise InvalidArgument(f"not a URL: {url!r}")
    scheme, sep, rest = url.partition("://")
    if sep and scheme.lower() in ("s3", "gs"):
        # Literally, as S3Storage / GCSStorage.from_url and aws s3 take them: "#", "?" and
        # "%" are characters of object names, not a fragment, a query or an escape.
        scheme = scheme.lower()
        bucket, _, key = rest.partition("/")
        if not bucket or not key:
            raise InvalidArgument(f"{url!r} names no object (expected {scheme}://BUCKET/KEY)")
        validate_key(key)
        return f"{scheme}/{bucket}/{key}", scheme, f"{scheme}://{bucket}", key
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number in range
    except ValueError as exc:
        raise InvalidArgument(f"not a valid URL: {redact(url)!r} ({exc})") from None
    scheme = parts.scheme.lower()
    if scheme in ("http", "https"):
        host = parts.hostname or ""
        if not host:
            raise InvalidArgument(f"{url!r} has no host")
        netloc = host + (f":{parts.port}" if parts.port else "")
        key = urllib.parse.unquote(parts.path.lstrip("/"))
        if not key or key.endswith("/"):
            raise InvalidArgument(f"{url!r} names no file")
        validate_key(key)
        kept = [
            (k, v)
            for k, v in urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
            if k.lower() not in _SIGNING
        ]
        where = f"{scheme}/{netloc}"
        if kept:
            where += "/q-" + hashlib.sha256(urllib.parse.urlencode(kept).encode()).hexdigest()[:12]
        userinfo = parts.netloc.rpartition("@")[0]
        base = urllib.parse.urlunsplit(
            (scheme, (userinfo + "@" if userinfo else "") + netloc, "/", parts.query, "")
        )
        return f"{where}/{key}", scheme, base, key
    if scheme in ("hub", "hubs"):
        host = parts.hostname or ""
        if not host or "@" in parts.netloc:
            raise InvalidArgument(
                f"{redact(url)!r} is not a hub URL (hub://HOST:PORT/DATASET/PATH)"
            )
        netloc = host + (f":{parts.port}" if parts.port else "")
        dataset, _, key = urllib.parse.unquote(parts.path.lstrip("/")).partition("/")
        if not dataset or not key or key.endswith("/"):
            raise InvalidArgument(f"{url!r} names no file (hub://HOST:PORT/DATASET/PATH)")
        validate_key(dataset)
        validate_key(key)
        base = f"{scheme}://{netloc}/{urllib.parse.quote(dataset, safe='')}"
        return f"{scheme}/{netloc}/{dataset}/{key}", scheme, base, key
    raise InvalidArgument(
        f"cannot fetch {url!r}: not a local path or an s3, gs, http(s) or hub URL"
    )


class _UrlCache(CopyToLocalCache):
    """The ``urls`` cache: each key's tier is the storage its URL names."""

    def __init__(
        self,
        directory: Path,
        *,
        storage_options: dict[str, dict[str, Any]] | None = None,
        **options: Any,
    ) -> None:
        self._sources: dict[str, tuple[str, str]] = {}
        self._storages: dict[str, Storage] = {}
        # Per scheme ("s3", "gs"): what open_storage gets for that scheme's URLs.
        self._storage_options = {k: dict(v) for k, v in (storage_options or {}).items() if v}
        self._lock = threading.Lock()
        # The tier list is per key; the placeholder keeps CopyToLocalCache's checks happy.
        super().__init__([_NoTier()], directory, **options)

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state["_storages"] = {}
        state.pop("_lock", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        state["_lock"] = threading.Lock()
        super().__setstate__(state)

    def register(self, url: str) -> str:
        cache_key, _scheme, base, key = url_key(url)
        with self._lock:
            self._sources[cache_key] = (base, key)
        return cache_key

    def _missing(self, key: str) -> str:
        with self._lock:
            source = self._sources.get(key)
        if source is None:
            return f"{key!r} not found"
        base, name = source
        return f"{redact(base.rstrip('/'))}/{name} not found"

    def _storage(self, base: str) -> Storage:
        from hashsync.storage import open_storage

        with self._lock:
            storage = self._storages.get(base)
            if storage is None:
                options = self._storage_options.get(base.partition("://")[0].lower(), {})
                storage = self._storages[base] = open_storage(base, **options)
            return storage

    def _tiers(self, key: str) -> list[tuple[Storage, str]]:
        with self._lock:
            source = self._sources.get(key)
        if source is None:
            return []
        return [(self._storage(source[0]), source[1])]


class _NoTier(Storage):
    """Stands in for the per-key tiers of the URL cache; never asked for anything."""

    def _nothing(self, *args: Any, **kwargs: Any) -> Any:
        raise NotFound(errno.ENOENT, "no source registered for this key")

    copy = get_hash = get_last_modified = get_size = _nothing

    def list(self, prefix: str = "", *, hashes: bool = True) -> Any:
        return iter(())


_shared: dict[tuple[str, int], _UrlCache] = {}
_shared_lock = threading.Lock()


def url_cache(
    directory: str | os.PathLike[str] | None = None,
    *,
    name: str | None = None,
    storage_options: dict[str, dict[str, Any]] | None = None,
    **options: Any,
) -> CopyToLocalCache:
    """A cache of URLs: by default the one :func:`local_path` downloads into.

    Args:
        directory: Where the cache lives; default ``$HASHSYNC_CACHE_DIR/caches/NAME``.
        name: The cache's name under the caches directory (default ``urls``).
        storage_options: Options for the storages URLs name, per scheme
            (``{"s3": {"endpoint_url": ...}, "gs": {...}}``).
        **options: For the cache (``max_size_bytes``, ``num_workers``, ...).
    """
    storage_options = {k: v for k, v in (storage_options or {}).items() if v} or None
    if directory is None:
        directory = _settings.caches_dir() / (name or "urls")
    directory = Path(directory)
    if options or storage_options or name not in (None, "urls"):
        return _UrlCache(directory, storage_options=storage_options, **options)
    tag = (str(directory), os.getpid())
    with _shared_lock:
        cache = _shared.get(tag)
        if cache is None:
            cache = _shared[tag] = _UrlCache(directory)
        return cache


def local_path(url: str | os.PathLike[str]) -> Path:
    """A local path with the content of ``url``, downloaded (verified) into the cache if needed.

    A local path (or ``file://`` URL) comes back as is, so code can treat every location
    alike. ``s3://``, ``gs://``, ``http(s)://`` and ``hub://`` URLs are cached in
    ``$HASHSYNC_CACHE_DIR/caches/urls`` under their bucket or host and path, and checked
    against their source on every call (one HEAD; with ``HASHSYNC_OFFLINE=1`` only cached
    files are served).

    Raises:
        NotFound: The remote has no such object (offline: it is not cached).
        InvalidArgument: Not a path or a supported URL.
    """
    text = os.fspath(url)
    if not text.strip():
        raise InvalidArgument("an empty string is not a path or URL")
    try:
        parts = urllib.parse.urlsplit(text)
    except ValueError as exc:
        raise InvalidArgument(f"not a valid URL: {redact(text)!r} ({exc})") from None
    if parts.scheme in ("", "file") or (len(parts.scheme) == 1 and text[1:2] == ":"):
        return Path(urllib.parse.unquote(parts.path) if parts.scheme == "file" else text)
    cache = url_cache()
    assert isinstance(cache, _UrlCache)
    return cache.get(cache.register(text))


def download_many(urls: Iterable[str | os.PathLike[str]], *, progress: bool = True) -> list[Path]:
    """:func:`local_path` of many URLs, downloaded in parallel; paths in the same order."""
    items = [os.fspath(u) for u in urls]
    cache = url_cache()
    assert isinstance(cache, _UrlCache)
    remote: dict[int, str] = {}
    out: list[Path | None] = []
    for i, text in enumerate(items):
        parts = urllib.parse.urlsplit(text)
        if parts.scheme in ("", "file"):
            out.append(local_path(text))
        else:
            out.append(None)
            remote[i] = cache.register(text)
    fetched = cache.get_many(list(remote.values()), progress=progress)
    for i, path in zip(remote, fetched, strict=True):
        out[i] = path
    return [p for p in out if p is not None]
