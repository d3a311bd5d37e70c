"""hashsync as an fsspec filesystem, so pandas, pyarrow, polars and ``datasets`` use its caches.

Three ways in:

- alone: ``fsspec.filesystem("hashsync").open("s3://bucket/key")``, with full URLs (``s3://``,
  ``gs://``, ``http(s)://``, ``hub://`` or local paths);
- for plain URLs, opted into: after ``hashsync.fsspec.register("s3", "gs", "https")``,
  ``pandas.read_parquet("s3://bucket/t.parquet")`` goes through hashsync, with no s3fs;
- chained, ``fsspec.open("hashsync::s3://bucket/key")``, like ``simplecache::``. fsspec parses
  the inner URL with the inner protocol's own package (s3fs, gcsfs), so this form needs that
  package installed; without it, use :func:`register`.

Reads are served from a hashsync cache: a file is downloaded once, verified, and then shared
by every process on the machine (the cache's index is cross-process) within a byte budget;
each open asks the source once (a HEAD) whether the cached copy is still current. fsspec's
own ``filecache::`` and ``simplecache::`` verify nothing, grow without bound and are not safe
across processes. Writes (``"wb"``, ``"xb"``) are uploaded through the storage when the file
is closed, whole or not at all.

Storage options: ``cache`` (a name: the cache directory ``$HASHSYNC_CACHE_DIR/caches/NAME``;
default ``urls``, the one :func:`hashsync.cache.local_path` uses), ``cache_dir`` (any
directory instead), ``max_size_bytes`` and ``num_workers`` for that cache, ``endpoint_url``
(S3; s3fs's ``client_kwargs={"endpoint_url": ...}`` is taken too), ``anon`` (no credentials),
and ``s3={...}`` / ``gs={...}`` for anything else :class:`~hashsync.storage.S3Storage` or
:class:`~hashsync.storage.GCSStorage` take.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import hashlib
import os
import shutil
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Any, BinaryIO

try:
    import fsspec
    from fsspec.implementations.local import LocalFileSystem
except ImportError as _missing:  # pragma: no cover - exercised by a subprocess test
    from hashsync.errors import missing_extra

    raise missing_extra("hashsync.fsspec", "fsspec") from _missing
try:
    # fsspec >= 2025.10 hands a chained filesystem the inner path; before, only its own caches
    # got it, and the chained form's path arrives as ``fo`` instead (see _url).
    from fsspec.implementations.chained import ChainedFileSystem
except ImportError:  # pragma: no cover - older fsspec
    ChainedFileSystem = fsspec.AbstractFileSystem

from hashsync._fsspec_files import Upload, as_builtin, read_range
from hashsync.errors import NotFound
from hashsync.storage.local import SingleFileStorage

__all__ = ["HashsyncFileSystem", "register"]


def _hint_at_register() -> None:
    """Add to fsspec's "install s3fs" error that :func:`register` needs no s3fs at all.

    The chained form (``hashsync::s3://``) makes fsspec import the inner protocol's package
    before hashsync is asked anything, so the hint can only ride on fsspec's own message.
    """
    from fsspec.registry import known_implementations

    for name, package in (("s3", "s3fs"), ("s3a", "s3fs"), ("gs", "gcsfs"), ("gcs", "gcsfs")):
        spec = known_implementations.get(name)
        if spec is not None and "hashsync" not in spec.get("err", ""):
            spec["err"] = (
                f"{spec.get('err') or f'Install {package} to access {name}'} (or read "
                f"through hashsync without {package}: hashsync.fsspec.register({name!r}))"
            )


#: Seconds an info() answer is reused (never for content: see HashsyncFileSystem.info).
INFO_TTL = 1.0

#: URL schemes whose paths are ``BUCKET/KEY`` (fsspec calls Google's both ways).
_BUCKETS = {"s3": "s3", "s3a": "s3", "gs": "gs", "gcs": "gs"}
_REMOTE = (*_BUCKETS, "http", "https", "hub", "hubs")


#: Options fsspec itself hands every filesystem.
_FSSPEC_OWN = frozenset(
    {
        "skip_instance_cache",
        "use_listings_cache",
        "listings_expiry_time",
        "max_paths",
        "asynchronous",
        "loop",
    }
)


def _unknown_options(names: list[str]) -> str:
    return (
        f"hashsync.fsspec does not take {', '.join(names)}; it takes cache, cache_dir, "
        "max_size_bytes, num_workers, endpoint_url, anon, key, secret, token, profile, "
        "client_kwargs (endpoint_url, region_name), requester_pays, and s3={...} / gs={...} "
        "for anything S3Storage / GCSStorage take"
    )


class HashsyncFileSystem(ChainedFileSystem):
    """An fsspec filesystem that reads through a hashsync cache and writes through a storage.

    Paths are full URLs (``s3://bucket/key``, ``gs://``, ``http(s)://``, ``hub://``) or local
    paths; chained (``hashsync::s3://bucket/key``) they are the inner protocol's
    (``bucket/key``). Listings, ``info`` and writes go to the storage; ``open("rb")``,
    ``cat_file``, ``cat_ranges`` and ``get`` are served from the cache's verified copy.

    Args:
        cache: The cache's name (its directory under ``$HASHSYNC_CACHE_DIR/caches``).
        cache_dir: The cache's directory, instead of a name.
        max_size_bytes: The cache's byte budget (default: the configured one).
        num_workers: Threads for ``get`` of many files.
        endpoint_url: The S3 endpoint (``s3://`` URLs).
        anon: Send no credentials (public buckets).
        key: The S3 access key id (s3fs's name); needs ``secret``.
        secret: The S3 secret access key.
        token: An S3 session token.
        profile: A profile of the AWS config files.
        client_kwargs: s3fs's; its ``endpoint_url`` and ``region_name`` are taken.
        requester_pays: Send ``x-amz-request-payer: requester`` (s3fs's name).
        s3: More options for :class:`~hashsync.storage.S3Storage`.
        gs: More options for :class:`~hashsync.storage.GCSStorage`.
        target_protocol: Set by fsspec for the chained form: the inner protocol.
        target_options: Set by fsspec for the chained form: the inner protocol's options
            (``endpoint_url``, ``anon``, ``client_kwargs``, ``key``/``secret`` as s3fs names
            them).
        fo: Set by fsspec for the chained form: the inner path.
        **kwargs: fsspec's own (``skip_instance_cache``, ...); any other is refused
            (``ValueError``) rather than ignored.
    """

    protocol: Any = ("hashsync",)
    root_marker = ""

    def __init__(
        self,
        *,
        cache: str | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        max_size_bytes: int | None = None,
        num_workers: int | None = None,
        endpoint_url: str | None = None,
        anon: bool = False,
        key: str | None = None,
        secret: str | None = None,
        token: str | None = None,
        profile: str | None = None,
        client_kwargs: dict[str, Any] | None = None,
        requester_pays: bool = False,
        s3: dict[str, Any] | None = None,
        gs: dict[str, Any] | None = None,
        target_protocol: str | None = None,
        target_options: dict[str, Any] | None = None,
        fo: str | None = None,
        **kwargs: Any,
    ) -> None:
        # An option that would change where requests go or how they are signed must not be
        # dropped without a word: what is not understood is refused.
        unknown = sorted(set(kwargs) - _FSSPEC_OWN)
        if unknown:
            raise ValueError(_unknown_options(unknown))
        super().__init__(**kwargs)
        # s3fs's names, given directly or (chained) as the inner protocol's options.
        given: dict[str, Any] = {
            "endpoint_url": endpoint_url,
            "anon": anon,
            "key": key,
            "secret": secret,
            "token": token,
            "profile": profile,
            "client_kwargs": client_kwargs,
            "requester_pays": requester_pays,
        }
        unknown = sorted(set(target_options or {}) - set(given) - _FSSPEC_OWN)
        if unknown:
            raise ValueError(_unknown_options(unknown))
        for name, value in (target_options or {}).items():
            if name in given and not given[name]:
                given[name] = value
        client = dict(given["client_kwargs"] or {})
        endpoint = given["endpoint_url"] or client.pop("endpoint_url", None)
        region = client.pop("region_name", None)
        if client:
            raise ValueError(_unknown_options([f"client_kwargs[{k!r}]" for k in sorted(client)]))
        self._s3 = dict(s3 or {})
        self._gs = dict(gs or {})
        if endpoint:
            self._s3.setdefault("endpoint_url", endpoint)
        if region:
            self._s3.setdefault("region_name", region)
        if given["requester_pays"]:
            self._s3.setdefault("request_payer", "requester")
        if given["anon"]:
            self._s3.setdefault("anonymous", True)
            self._gs.setdefault("anonymous", True)
        if bool(given["key"]) != bool(given["secret"]):
            raise ValueError("key and secret go together: give both or neither")
        for ours, theirs in (
            ("aws_access_key_id", "key"),
            ("aws_secret_access_key", "secret"),
            ("aws_session_token", "token"),
            ("profile_name", "profile"),
        ):
            if given[theirs]:
                self._s3.setdefault(ours, given[theirs])
        scheme = (target_protocol or "").lower()
        if not scheme and len(type(self).protocol) == 1 and type(self).protocol[0] != "hashsync":
            scheme = type(self).protocol[0]
        self._bucket_scheme = _BUCKETS.get(scheme)
        self._fo = self._strip_protocol(fo) if fo else ""
        self._cache_options = {
            k: v
            for k, v in (("max_size_bytes", max_size_bytes), ("num_workers", num_workers))
            if v is not None
        }
        if cache is not None and cache_dir is not None:
            raise ValueError("give either cache (a name) or cache_dir, not both")
        if cache is not None and (not cache or "/" in cache or cache.startswith(".")):
            raise ValueError(f"cache must be a plain name, not {cache!r}")
        self._cache_where = (
            Path(cache_dir) if cache_dir is not None else None,
            cache,
        )
        self._cache: Any = None
        self._storages: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._local = LocalFileSystem()
        # info() answers of the last second: pandas and pyarrow ask isdir, info and isfile of
        # one path in a row before opening it, a round trip each. Content is never served
        # from this: open() and cat() ask the store whether the cached copy is current.
        self._recent: dict[str, tuple[float, dict[str, Any]]] = {}

    # -- paths ----------------------------------------------------------------------

    @classmethod
    def _strip_protocol(cls, path: Any) -> Any:
        if isinstance(path, list):
            return [cls._strip_protocol(p) for p in path]
        path = fsspec.utils.stringify_path(path)
        for head in ("hashsync::", "hashsync://"):
            if path.startswith(head):
                path = path[len(head) :]
        scheme, sep, rest = path.partition("://")
        if sep and scheme.lower() in _BUCKETS:
            # gcs:// and s3a:// are fsspec's other names; hashsync's are gs:// and s3://.
            return f"{_BUCKETS[scheme.lower()]}://{rest.rstrip('/')}"
        if sep:
            return path if rest.count("/") <= 0 else path.rstrip("/") or path
        return path.rstrip("/") or path

    def unstrip_protocol(self, name: str) -> str:
        """The full URL of ``name``."""
        return self._url(name)

    def _url(self, path: str) -> str:
        path = self._strip_protocol(path)
        if not path and self._fo:
            path = self._fo  # the chained form on an fsspec without ChainedFileSystem
        if "://" in path or self._bucket_scheme is None:
            return path
        return f"{self._bucket_scheme}://{path.lstrip('/')}"

    def _bare(self, path: str) -> bool:
        """Whether ``path`` was given as ``bucket/key`` (names then come back so too)."""
        return self._bucket_scheme is not None and "://" not in self._strip_protocol(path)

    @staticmethod
    def _out(url: str, bare: bool) -> str:
        """``url`` in the caller's form: without its scheme when the caller gave none."""
        return url.partition("://")[2] if bare else url

    @staticmethod
    def _is_remote(url: str) -> bool:
        return url.partition("://")[0].lower() in _REMOTE and "://" in url

    def _split(self, url: str) -> tuple[str, str]:
        """``(storage URL, key)``: where a URL's object is, and its key there."""
        scheme, _, rest = url.partition("://")
        scheme = scheme.lower()
        if scheme in ("s3", "gs"):
            bucket, _, key = rest.partition("/")
            if not bucket:
                raise ValueError(f"{url!r} names no bucket")
            return f"{scheme}://{bucket}", key
        parts = urllib.parse.urlsplit(url)
        if scheme in ("http", "https"):
            base = urllib.parse.urlunsplit((scheme, parts.netloc, "/", parts.query, ""))
            return base, urllib.parse.unquote(parts.path.lstrip("/"))
        dataset, _, key = urllib.parse.unquote(parts.path.lstrip("/")).partition("/")
        if not dataset:
            raise ValueError(f"{url!r} names no dataset (hub://HOST:PORT/DATASET/PATH)")
        return f"{scheme}://{parts.netloc}/{urllib.parse.quote(dataset, safe='')}", key

    def _storage(self, base: str) -> Any:
        with self._lock:
            storage = self._storages.get(base)
        if storage is None:
            from hashsync.storage import open_storage

            scheme = base.partition("://")[0]
            options = self._s3 if scheme == "s3" else self._gs if scheme == "gs" else {}
            with as_builtin(base):
                storage = open_storage(base, **options)
            with self._lock:
                storage = self._storages.setdefault(base, storage)
        return storage

    def _cache_for_reads(self) -> Any:
        with self._lock:
            if self._cache is None:
                from hashsync.cache._urls import url_cache

                directory, name = self._cache_where
                self._cache = url_cache(
                    directory=directory,
                    name=name,
                    storage_options={"s3": self._s3, "gs": self._gs},
                    **self._cache_options,
                )
            return self._cache

    def cached_path(self, path: str) -> Path:
        """A local path holding ``path``'s content, verified, from the cache (fetched if needed)."""
        url = self._url(path)
        if not self._is_remote(url):
            return Path(url)
        cache = self._cache_for_reads()
        with as_builtin(url):
            return Path(cache.get(cache.register(url)))

    def _open_verified(self, path: str) -> BinaryIO:
        """The file's verified content, open: from the cache, or privately if it cannot be cached.

        The cache refuses a file larger than its budget, one of ``a`` and ``a/b`` (one path
        cannot be a file and a directory) and names longer than a file name may be: such a
        file is downloaded and verified all the same, into a temporary file that disappears
        when it is closed.
        """
        try:
            return open(self.cached_path(path), "rb")  # noqa: SIM115 - the caller closes it
        except ValueError:
            url = self._url(path)
            if not self._is_remote(url):
                raise
        base, key = self._split(url)
        storage = self._storage(base)
        where = tempfile.mkdtemp(prefix="hashsync-fsspec-")
        try:
            copy = Path(where) / "object"
            sink = SingleFileStorage(copy)
            with as_builtin(url):
                storage.copy(key, sink)
            # Unlinked at once: the open descriptor keeps the bytes until it is closed.
            return open(copy, "rb")  # noqa: SIM115 - the caller closes it
        finally:
            shutil.rmtree(where, ignore_errors=True)

    # -- what the data libraries call -------------------------------------------------

    def _open(
        self,
        path: str,
        mode: str = "rb",
        block_size: Any = None,
        autocommit: bool = True,
        cache_options: Any = None,
        **kwargs: Any,
    ) -> Any:
        url = self._url(path)
        if not self._is_remote(url):
            return self._local._open(url, mode, autocommit=autocommit, **kwargs)
        if mode == "rb":
            return self._open_verified(url)
        if mode in ("wb", "xb"):
            base, key = self._split(url)
            self._forget()
            return Upload(
                self._storage(base),
                key,
                url,
                exclusive=mode == "xb",
                autocommit=autocommit,
                written=self._forget,
            )
        raise ValueError(f"mode {mode!r} is not supported: 'rb', 'wb' or 'xb'")

    def cat_file(
        self, path: str, start: int | None = None, end: int | None = None, **kwargs: Any
    ) -> bytes:
        """Bytes ``start:end`` of the file, from the cache's verified copy."""
        with self._open_verified(path) as fh:
            return read_range(fh, start, end)

    def cat_ranges(
        self,
        paths: list[str],
        starts: Any,
        ends: Any,
        max_gap: Any = None,
        on_error: str = "return",
        **kwargs: Any,
    ) -> list[Any]:
        """Byte ranges of files, each file fetched (or found in the cache) once."""
        if not isinstance(starts, list):
            starts = [starts] * len(paths)
        if not isinstance(ends, list):
            ends = [ends] * len(paths)
        if len(starts) != len(paths) or len(ends) != len(paths):
            raise ValueError("paths, starts and ends must have the same length")
        opened: dict[str, BinaryIO | BaseException] = {}
        out: list[Any] = []
        try:
            for path, start, end in zip(paths, starts, ends, strict=True):
                if path not in opened:
                    try:
                        opened[path] = self._open_verified(path)
                    except Exception as exc:  # noqa: BLE001 - fsspec's on_error contract
                        if on_error != "return":
                            raise
                        opened[path] = exc
                fh = opened[path]
                if isinstance(fh, BaseException):
                    out.append(fh)
                    continue
                try:
                    out.append(read_range(fh, start, end))
                except Exception as exc:
                    if on_error != "return":
                        raise
                    out.append(exc)
        finally:
            for fh in opened.values():
                if not isinstance(fh, BaseException):
                    fh.close()
        return out

    def get_file(
        self, rpath: str, lpath: str, callback: Any = None, outfile: Any = None, **kwargs: Any
    ) -> None:
        """Copy one file (from the cache's verified copy) to a local path."""
        try:
            source = self._open_verified(rpath)
        except (FileNotFoundError, IsADirectoryError, ValueError):
            if not self.isdir(rpath):
                raise
            os.makedirs(lpath, exist_ok=True)
            return
        with source:
            if outfile is not None:
                shutil.copyfileobj(source, outfile, 1 << 20)
                return
            target = Path(lpath)
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(target, "wb") as out:
                shutil.copyfileobj(source, out, 1 << 20)

    def info(self, path: str, **kwargs: Any) -> dict[str, Any]:
        """``name``, ``size`` and ``type`` (``"file"`` or ``"directory"``) of a path.

        An answer may be up to a second old (:data:`INFO_TTL`); this filesystem's own writes
        and deletions are seen at once.
        """
        url = self._url(path)
        if not self._is_remote(url):
            return self._local.info(url)
        now = time.monotonic()
        with self._lock:
            recent = self._recent.get(url)
        if recent is not None and now - recent[0] < INFO_TTL:
            return {**recent[1], "name": self._out(url, self._bare(path))}
        found = self._info(path, url)
        with self._lock:
            if len(self._recent) > 10_000:
                self._recent.clear()
            self._recent[url] = (now, dict(found))  # a copy: callers may change theirs
        return found

    def _forget(self) -> None:
        """Drop the remembered info() answers (after a write or a deletion)."""
        with self._lock:
            self._recent.clear()

    def _info(self, path: str, url: str) -> dict[str, Any]:
        base, key = self._split(url)
        storage = self._storage(base)
        name = self._out(url, self._bare(path))
        if key and not key.endswith("/"):
            try:
                with as_builtin(url):
                    size = storage.get_size(key)
                    return {"name": name, "size": size, "type": "file"}
            except (FileNotFoundError, IsADirectoryError):
                pass
            except ValueError:
                pass  # a key hashsync does not take as a file (a directory's own path)
        prefix = key.rstrip("/") + "/" if key else ""
        try:
            with as_builtin(url):
                if storage.count_keys(prefix, 1) or not key:
                    return {"name": name.rstrip("/"), "size": 0, "type": "directory"}
        except NotImplementedError:
            pass  # a store that cannot list (an HTTP server): only files are known
        raise FileNotFoundError(errno.ENOENT, f"no such file or directory: {url}", url)

    def ls(self, path: str, detail: bool = True, **kwargs: Any) -> list[Any]:
        """The entries directly below a directory (a file lists as itself)."""
        url = self._url(path)
        if not self._is_remote(url):
            return self._local.ls(url, detail=detail)
        base, key = self._split(url)
        storage = self._storage(base)
        bare = self._bare(path)
        prefix = key.rstrip("/") + "/" if key else ""
        files: list[dict[str, Any]] = []
        dirs: dict[str, None] = {}
        with as_builtin(url):
            for info in storage.list(prefix):
                rest = info.key[len(prefix) :]
                head, sep, _ = rest.partition("/")
                if sep:
                    dirs[prefix + head] = None
                else:
                    files.append(self._entry(base, info, bare))
        if not files and not dirs:
            # A file's own path lists as the file, as every fsspec filesystem does.
            entry = self.info(path)
            if entry["type"] == "file":
                return [entry] if detail else [entry["name"]]
            if key:
                raise FileNotFoundError(errno.ENOENT, f"no such directory: {url}", url)
        entries = files + [self._dir(base, d, bare) for d in dirs]
        entries.sort(key=lambda e: e["name"])
        return entries if detail else [e["name"] for e in entries]

    def _entry(self, base: str, info: Any, bare: bool) -> dict[str, Any]:
        entry = {
            "name": self._out(_join(base, info.key), bare),
            "size": info.size,
            "type": "file",
            "mtime": info.last_modified.timestamp(),
        }
        if info.hash is not None:
            entry["hash"] = info.hash
        return entry

    def find(
        self,
        path: str,
        maxdepth: int | None = None,
        withdirs: bool = False,
        detail: bool = False,
        **kwargs: Any,
    ) -> Any:
        """Every file below ``path`` (and its directories with ``withdirs``), in one listing."""
        url = self._url(path)
        if not self._is_remote(url):
            return self._local.find(url, maxdepth=maxdepth, withdirs=withdirs, detail=detail)
        if maxdepth is not None and maxdepth < 1:
            raise ValueError("maxdepth must be at least 1")
        base, key = self._split(url)
        storage = self._storage(base)
        bare = self._bare(path)
        prefix = key.rstrip("/") + "/" if key else ""
        found: dict[str, dict[str, Any]] = {}
        with as_builtin(url):
            for info in storage.list(prefix):
                rest = info.key[len(prefix) :]
                parts = rest.split("/")
                if maxdepth is not None and len(parts) > maxdepth:
                    if withdirs:
                        for i in range(1, maxdepth + 1):
                            d = prefix + "/".join(parts[:i])
                            found.setdefault(d, self._dir(base, d, bare))
                    continue
                if withdirs:
                    for i in range(1, len(parts)):
                        d = prefix + "/".join(parts[:i])
                        found.setdefault(d, self._dir(base, d, bare))
                found[info.key] = self._entry(base, info, bare)
        if not found and key:
            with contextlib.suppress(FileNotFoundError):
                entry = self.info(path)
                if entry["type"] == "file":
                    found[key] = entry
        if withdirs and key and found and self.isdir(path):
            found.setdefault(key.rstrip("/"), self._dir(base, key.rstrip("/"), bare))
        names = sorted(found)
        if detail:
            return {found[n]["name"]: found[n] for n in names}
        return [found[n]["name"] for n in names]

    def _dir(self, base: str, key: str, bare: bool) -> dict[str, Any]:
        return {"name": self._out(_join(base, key), bare), "size": 0, "type": "directory"}

    def ukey(self, path: str) -> str:
        """The object's content hash as its storage names it (``"md5:..."``, an ETag, ...)."""
        url = self._url(path)
        if not self._is_remote(url):
            return str(self._local.ukey(url))
        base, key = self._split(url)
        with as_builtin(url):
            return str(self._storage(base).get_hash(key))

    def checksum(self, path: str) -> int:
        """An integer that changes whenever the content does (from :meth:`ukey`)."""
        return int(hashlib.sha256(self.ukey(path).encode()).hexdigest()[:16], 16)

    def modified(self, path: str) -> datetime.datetime:
        """When the object was last written (UTC)."""
        url = self._url(path)
        if not self._is_remote(url):
            return self._local.modified(url)
        base, key = self._split(url)
        with as_builtin(url):
            return self._storage(base).get_last_modified(key)

    def created(self, path: str) -> datetime.datetime:
        """When the object was last written: object stores keep no creation time."""
        return self.modified(path)

    # -- writing ------------------------------------------------------------------------

    def pipe_file(self, path: str, value: bytes, mode: str = "overwrite", **kwargs: Any) -> None:
        """Write ``value`` as the file's whole content (``mode="create"``: only if new)."""
        with self.open(path, "xb" if mode == "create" else "wb") as fh:
            fh.write(value)

    def touch(self, path: str, truncate: bool = True, **kwargs: Any) -> None:
        """Write an empty file (``truncate=False``: only if there is none)."""
        if not truncate and self.exists(path):
            return
        self.pipe_file(path, b"")

    def mkdir(self, path: str, create_parents: bool = True, **kwargs: Any) -> None:
        """Create a local directory; nothing for object stores, which have none."""
        url = self._url(path)
        if not self._is_remote(url):
            self._local.mkdir(url, create_parents=create_parents)
        # Object stores have no directories: a key's prefix is one once a key is under it.

    def makedirs(self, path: str, exist_ok: bool = False) -> None:
        """Create a local directory and its parents; nothing for object stores."""
        url = self._url(path)
        if not self._is_remote(url):
            self._local.makedirs(url, exist_ok=exist_ok)

    def rmdir(self, path: str) -> None:
        """Remove an empty local directory; nothing for object stores."""
        url = self._url(path)
        if not self._is_remote(url):
            self._local.rmdir(url)

    def rm_file(self, path: str) -> None:
        """Delete one file."""
        url = self._url(path)
        if not self._is_remote(url):
            self._local.rm_file(url)
            return
        base, key = self._split(url)
        storage = self._writable(base, url)
        self._forget()
        with as_builtin(url):
            storage.delete(key)
        self._forget()

    def rm(self, path: Any, recursive: bool = False, maxdepth: int | None = None) -> None:
        """Delete files; ``recursive``: also everything below (``path/...``), never beside it.

        A path with ``*``, ``?`` or ``[`` is a pattern, unless an object has exactly that
        name: ``data[1].csv`` deletes that file, never ``data1.csv``.
        """
        for one in [path] if isinstance(path, str) else list(path):
            url = self._url(one)
            if not self._is_remote(url):
                self._local.rm(url, recursive=recursive, maxdepth=maxdepth)
                continue
            base, key = self._split(url)
            storage = self._writable(base, url)
            self._forget()
            with as_builtin(url):
                # An object or a directory of exactly that name is what was meant.
                literal = (
                    not _has_magic(key)
                    or (bool(key) and storage.exists(key))
                    or (bool(key) and bool(storage.count_keys(key.rstrip("/") + "/", 1)))
                )
                keys: set[str] = set()
                if not literal:
                    for name, entry in self.glob(one, detail=True).items():
                        found = self._split(self._url(name))[1]
                        if entry["type"] == "file":
                            keys.add(found)
                        elif recursive:
                            keys |= self._keys_below(storage, found, maxdepth)
                elif recursive:
                    keys = self._keys_below(storage, key, maxdepth)
                    if key and storage.exists(key):
                        keys.add(key)
                elif key and storage.exists(key):
                    keys = {key}
                # Object stores answer "deleted" for keys that never were: asked, not assumed.
                ordered = sorted(keys)
                errors = storage.delete_many(ordered) if ordered else []
            gone = 0
            for found, error in zip(ordered, errors, strict=True):
                if error is None:
                    gone += 1
                elif not isinstance(error, NotFound):
                    with as_builtin(_join(base, found)):
                        raise error
            self._forget()
            # Of a list (find's or glob's output: a directory, then what it held), an entry
            # an earlier one already took is no error.
            if not gone and isinstance(path, str):
                raise FileNotFoundError(errno.ENOENT, f"nothing to delete at {url}", url)

    @staticmethod
    def _keys_below(storage: Any, key: str, maxdepth: int | None) -> set[str]:
        prefix = key.rstrip("/") + "/" if key else ""
        return {
            info.key
            for info in storage.list(prefix)
            if maxdepth is None or info.key[len(prefix) :].count("/") < maxdepth
        }

    def _writable(self, base: str, url: str) -> Any:
        from hashsync.storage import ReadWriteStorage

        storage = self._storage(base)
        if not isinstance(storage, ReadWriteStorage):
            raise PermissionError(errno.EROFS, f"{storage!r} is read-only", url)
        return storage

    def cp_file(self, path1: str, path2: str, **kwargs: Any) -> None:
        """Copy one file to another path (read from the cache, written through the storage)."""
        with open(self.cached_path(path1), "rb") as src, self.open(path2, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)

    def put_file(
        self, lpath: str, rpath: str, callback: Any = None, mode: str = "overwrite", **kwargs: Any
    ) -> None:
        """Upload a local file (``mode="create"``: only if there is none)."""
        if os.path.isdir(lpath):
            self.makedirs(rpath, exist_ok=True)
            return
        with open(lpath, "rb") as src, self.open(rpath, "xb" if mode == "create" else "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)


def _join(base: str, key: str) -> str:
    """The URL of ``key`` in the storage at ``base`` (the inverse of ``_split``)."""
    if base.startswith(("http://", "https://")):
        parts = urllib.parse.urlsplit(base)
        path = "/" + urllib.parse.quote(key)
        return urllib.parse.urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))
    return f"{base}/{key}"


def _has_magic(path: str) -> bool:
    """Whether ``path`` is a glob pattern (as fsspec's ``glob`` reads ``*``, ``?`` and ``[``)."""
    return any(c in path for c in "*?[")


_registered: dict[str, type[HashsyncFileSystem]] = {}
_hint_at_register()


def register(*protocols: str) -> None:
    """Make fsspec open plain ``s3://``, ``gs://``, ``https://`` ... URLs through hashsync.

    After ``register("s3")``, ``pandas.read_parquet("s3://bucket/t.parquet")`` and
    ``fsspec.open("s3://...")`` use :class:`HashsyncFileSystem` instead of s3fs (which need
    not be installed). Storage options given to pandas (``storage_options=``) reach it.

    Args:
        protocols: Any of ``s3``, ``s3a``, ``gs``, ``gcs``, ``http``, ``https``, ``hub``,
            ``hubs``; none means all of them.

    Raises:
        ValueError: A protocol hashsync does not read.
    """
    for protocol in protocols or _REMOTE:
        name = protocol.lower().removesuffix("://")
        if name not in _REMOTE:
            raise ValueError(f"hashsync reads {', '.join(_REMOTE)}; not {protocol!r}")
        cls = _registered.get(name)
        if cls is None:
            cls = _registered[name] = type(
                f"Hashsync{name.capitalize()}FileSystem",
                (HashsyncFileSystem,),
                {"protocol": (name,), "__module__": __name__},
            )
        fsspec.register_implementation(name, cls, clobber=True)
