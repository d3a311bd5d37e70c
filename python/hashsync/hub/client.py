"""The dataset hub client: seed 002's ``DatasetHubClient``, verified, parallel and resumable.

Every file is checked against its manifest hash (SHA-256 of the whole content) while it
streams; a file lands under its final name only when complete and verified (a temporary file,
fsynced, renamed). Large downloads that were interrupted resume with ``Range`` + ``If-Range``.
Files are kept as the seed lays them out, ``<cache_dir>/<dataset>/<path>``; manifests in
``<cache_dir>/.manifests/<dataset>.json`` (a dataset name never starts with a dot, so no
dataset can collide with them). Needs no server dependencies (urllib3 comes with boto3).

A hub is trusted with what it serves, not with the client's resources: every answer is read
up to a bound (a file: its manifest size, plus one byte to see that it is longer; a manifest:
``max_manifest_bytes`` after decompression), never followed to another origin, and checked
against the manifest before it is kept.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import threading
import urllib.parse
import warnings
import zlib
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import hashsync
from hashsync._folding import collisions, probe
from hashsync._redact import redact
from hashsync._retry import BASE_DELAY, MAX_DELAY
from hashsync._threads import run_on_threads
from hashsync.atomic import (
    TMP_MARK,
    KeyLock,
    atomic_destination,
    cleanup_once,
    fsync_directory,
    full_fsync,
    write_files_atomically,
)
from hashsync.errors import (
    HashsyncWarning,
    IntegrityError,
    InvalidArgument,
    NameCollision,
    NotFound,
    StorageUnavailable,
    UnsafePath,
    error_for_status,
)
from hashsync.hub._manifest import (
    ALGORITHM,
    BUNDLE_MAX_FILE_BYTES,
    BUNDLE_MAX_FILES,
    valid_dataset_name,
)
from hashsync.storage.base import current_progress, validate_key
from hashsync.storage.local import link_below

__all__ = ["DatasetHubClient"]

_CHUNK = 1024 * 1024
# Files at least this large are downloaded into a partial file that a later call resumes.
RESUME_MIN_BYTES = 8 * 1024 * 1024
# Small files travel in bundles of at most this many bytes (one request each).
_BUNDLE_BYTES = 8 * 1024 * 1024
# A manifest entry is ~150 bytes: 256 MiB of JSON is well over a million files.
MAX_MANIFEST_BYTES = 256 * 1024**2
# What is read of an error answer, or of a bundle's per-file header line.
_SMALL_BODY = 64 * 1024
# Redirects followed within the hub's own origin (never to another).
_MAX_REDIRECTS = 3
_HEX64 = re.compile(r"[0-9a-f]{64}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_COUNT = re.compile(r"[0-9]{1,18}")
# Sizes a file can have (off_t).
_MAX_SIZE = 2**63 - 1


class DatasetHubClient:
    """Lists, downloads and streams datasets from a hashsync (or DSX) hub.

    Args:
        base_url: The hub's address, e.g. ``"http://gpu-box:8000"``.
        api_key: A key the hub accepts (sent as ``Authorization: Bearer``); None for a hub
            started with ``--no-auth``.
        cache_dir: Where manifests and files are kept (the seed's layout); None keeps nothing
            on disk (then :meth:`get_file` and :meth:`download_dataset` raise ValueError).
        num_workers: Parallel downloads (default 8).
        timeout: Seconds to wait for a connection or for data before giving up.
        max_manifest_bytes: The largest manifest accepted, decompressed (default 256 MiB,
            over a million files): a hub sending more (a compression bomb) is refused.

    Raises:
        InvalidArgument: ``base_url`` is not an http(s) URL.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str | None,
        cache_dir: str | os.PathLike[str] | None = "./cache",
        *,
        num_workers: int = 8,
        timeout: float = 60.0,
        max_manifest_bytes: int = MAX_MANIFEST_BYTES,
    ) -> None:
        import urllib3

        parts = urllib.parse.urlsplit(str(base_url))
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise InvalidArgument(f"not an http(s) URL: {redact(str(base_url))!r}")
        if num_workers < 1:
            raise InvalidArgument(f"num_workers must be at least 1, not {num_workers}")
        self.base_url = str(base_url).rstrip("/")
        self.api_key = api_key
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.num_workers = num_workers
        self.timeout = timeout
        self.max_manifest_bytes = max_manifest_bytes
        self._origin = _origin(self.base_url)
        # Parsed manifests by dataset: (ETag, entries, entries by path), one per version.
        self._manifests: dict[str, tuple[str, list[dict[str, Any]], dict[str, Any]]] = {}
        self._manifest_lock = threading.Lock()
        self._http = urllib3.PoolManager(
            maxsize=max(num_workers, 16),
            # Redirects are followed by _request, within the hub's origin only.
            retries=urllib3.Retry(
                total=3,
                connect=3,
                read=2,
                status=0,
                backoff_factor=BASE_DELAY,
                backoff_max=MAX_DELAY,
                backoff_jitter=BASE_DELAY,
                redirect=False,
            ),
            timeout=urllib3.Timeout(connect=min(timeout, 10.0), read=timeout),
        )
        self._digests: dict[tuple[int, int, int, int], str] = {}
        self._digest_lock = threading.Lock()
        # (dataset, manifest ETag) -> {path: the paths it shares one local file with}
        self._collisions: dict[tuple[str, str], dict[str, tuple[str, ...]]] = {}
        # Whether the hub answers POST /bundle (a seed hub does not): None until asked.
        self._bundles: bool | None = None
        # Per dataset, how many files the hub's last manifest left out as unreadable.
        self.unreadable: dict[str, int] = {}

    def __repr__(self) -> str:
        return f"DatasetHubClient({redact(self.base_url)!r}, cache_dir={self.cache_dir!r})"

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        for name in ("_http", "_digest_lock", "_manifest_lock", "_manifests", "_collisions"):
            state.pop(name)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(  # type: ignore[misc]
            state["base_url"],
            state["api_key"],
            state["cache_dir"],
            num_workers=state["num_workers"],
            timeout=state["timeout"],
            max_manifest_bytes=state.get("max_manifest_bytes", MAX_MANIFEST_BYTES),
        )

    # -- requests --------------------------------------------------------------------

    def _request(
        self,
        path: str,
        headers: dict[str, str] | None = None,
        *,
        method: str = "GET",
        stream: bool = False,
        ok: tuple[int, ...] = (200,),
        body: bytes | None = None,
    ) -> Any:
        """Send a request; return the response, its body not read yet (see :meth:`_read`).

        A redirect is followed only within the hub's origin (scheme, host and port): a hub
        that sends the client elsewhere (and the API key with it) is refused.
        """
        import urllib3

        sent = dict(headers or {})
        if self.api_key:
            sent["Authorization"] = f"Bearer {self.api_key}"
        url = self.base_url + path
        for _ in range(_MAX_REDIRECTS + 1):
            try:
                response = self._http.request(
                    method,
                    url,
                    headers=sent,
                    body=body,
                    preload_content=False,
                    decode_content=False,
                    redirect=False,
                )
            except urllib3.exceptions.HTTPError as exc:
                raise StorageUnavailable(
                    errno.ECONNREFUSED, f"{method} {redact(url)}: hub unreachable ({exc})"
                ) from None
            if response.status not in (301, 302, 303, 307, 308) or response.status in ok:
                break
            # Checked and sent as urllib3 reads it: Python's urlsplit and urllib3 disagree on
            # some authorities ("http://A\\@B/" is host B to one, host A to the other).
            target = _as_sent(urllib.parse.urljoin(url, response.headers.get("Location", "")))
            response.release_conn()
            if _origin(target) != self._origin:
                raise IntegrityError(
                    f"{method} {redact(url)}: the hub redirects to another origin "
                    f"({redact(target)}); refused (the API key would go with it)"
                )
            url = target
        else:
            raise IntegrityError(f"{method} {redact(url)}: more than {_MAX_REDIRECTS} redirects")
        if response.status not in ok:
            detail = ""
            with contextlib.suppress(Exception):
                detail = str(json.loads(self._read(response, _SMALL_BODY, "")).get("detail", ""))
            response.release_conn()
            message = f"{method} {redact(url)}: HTTP {response.status}"
            if detail:
                message += f" ({detail[:200]})"
            raise error_for_status(response.status, message)
        return response

    def _chunks(self, response: Any, limit: int, what: str) -> Iterator[bytes]:
        """The decoded body of ``response``, refused as soon as it exceeds ``limit`` bytes.

        gzip is inflated here, never more than the bound allows (a compression bomb stops at
        ``limit`` + 1 bytes); other content codings are refused.
        """
        import urllib3

        coding = response.headers.get("Content-Encoding", "").strip().lower()
        if coding not in ("", "identity", "gzip", "x-gzip"):
            raise IntegrityError(f"{what}: the hub sent an unknown content coding {coding!r}")
        inflater = zlib.decompressobj(wbits=31) if coding in ("gzip", "x-gzip") else None
        seen = 0
        try:
            for raw in response.stream(_CHUNK, decode_content=False):
                data = raw
                if inflater is not None:
                    # At most one byte past the bound, whatever the ratio.
                    data = inflater.decompress(raw, limit + 1 - seen)
                seen += len(data)
                if seen > limit:
                    raise IntegrityError(f"{what}: the hub sent more than {limit} bytes")
                if data:
                    yield data
            if inflater is not None and not inflater.eof and seen:
                raise IntegrityError(f"{what}: the compressed answer breaks off")
        except zlib.error as exc:
            response.close()
            raise IntegrityError(f"{what}: the compressed answer is corrupt ({exc})") from None
        except urllib3.exceptions.HTTPError as exc:
            # Cut short of its Content-Length, reset, or timed out: an OSError callers retry.
            response.close()
            raise StorageUnavailable(
                errno.EIO, f"{what}: the connection broke off mid-answer ({exc})"
            ) from None
        except BaseException:
            # Unread bytes may still be on their way: the connection cannot be reused.
            response.close()
            raise
        finally:
            response.release_conn()

    def _read(self, response: Any, limit: int, what: str) -> bytes:
        """The whole decoded body of ``response``, at most ``limit`` bytes (see :meth:`_chunks`)."""
        return b"".join(self._chunks(response, limit, what))

    @staticmethod
    def _dataset(dataset: str) -> str:
        if not isinstance(dataset, str) or not valid_dataset_name(dataset):
            raise InvalidArgument(f"not a dataset name: {dataset!r}")
        return urllib.parse.quote(dataset, safe="")

    def _file_url(self, dataset: str, path: str) -> str:
        validate_key(path)
        return f"/file/{self._dataset(dataset)}/{urllib.parse.quote(path, safe='/')}"

    # -- the seed's API ----------------------------------------------------------------

    def list_datasets(self) -> list[str]:
        """The datasets the hub serves.

        Raises:
            PermissionDenied: The key was refused (401).
            StorageUnavailable: The hub could not be reached.
        """
        names = _json(self._read(self._request("/datasets"), self.max_manifest_bytes, "/datasets"))
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise IntegrityError(f"{self!r}: /datasets did not answer a list of names")
        return names

    def get_manifest(self, dataset: str) -> list[dict[str, Any]]:
        """The dataset's files: ``[{"path", "size", "hash": "sha256:<hex>"}]``.

        With a ``cache_dir`` the manifest is kept there and revalidated (``If-None-Match``:
        an unchanged manifest costs a 304); if the hub cannot be reached the kept one is
        returned with a warning.

        Raises:
            NotFound: No such dataset.
            PermissionDenied: The key was refused.
            StorageUnavailable: The hub could not be reached and nothing is kept.
        """
        return self._manifest(dataset)[1]

    def _manifest(
        self, dataset: str, *, revalidate: bool = True
    ) -> tuple[str, list[dict[str, Any]], dict[str, Any]]:
        """``(ETag, entries, entries by path)`` of the dataset's manifest, parsed once a version.

        ``revalidate=False`` takes the version this client already holds without asking.
        """
        quoted = self._dataset(dataset)
        with self._manifest_lock:
            held = self._manifests.get(dataset)
        if held is not None and not revalidate:
            return held
        kept, tag_file = self._manifest_paths(dataset)
        headers = {"Accept-Encoding": "gzip"}
        if held is None and kept is not None and tag_file is not None:
            with contextlib.suppress(OSError, ValueError, IntegrityError):
                if kept.is_file() and tag_file.is_file():
                    tag = tag_file.read_text().strip()
                    entries = _checked_manifest(_json(kept.read_bytes()), self)
                    held = (tag, entries, {e["path"]: e for e in entries})
        if held is not None and held[0]:
            headers["If-None-Match"] = held[0]
        what = f"{self!r}: manifest of {dataset!r}"
        try:
            response = self._request(f"/manifest/{quoted}", headers, ok=(200, 304))
            left_out = response.headers.get("X-Hashsync-Unreadable", "0").strip()
            # ASCII digits only: str.isdigit() takes "²", which int() refuses.
            self.unreadable[dataset] = int(left_out) if _COUNT.fullmatch(left_out) else 0
        except StorageUnavailable as exc:
            if held is None:
                raise
            warnings.warn(
                f"using the kept manifest of {dataset!r}: {exc}", HashsyncWarning, stacklevel=3
            )
            return held
        if response.status == 304:
            response.release_conn()
            if held is None:
                # Nothing was asked to be revalidated: an empty body is not an empty dataset.
                raise IntegrityError(f"{what}: the hub answered 304 to a client holding none")
        else:
            raw = self._read(response, self.max_manifest_bytes, what)
            entries = _checked_manifest(_json(raw or b"[]", what), self)
            held = (response.headers.get("ETag") or "", entries, {e["path"]: e for e in entries})
            if kept is not None and tag_file is not None:
                self._keep_manifest(dataset, raw or b"[]", held[0])
        with self._manifest_lock:
            self._manifests[dataset] = held
        return held

    def _keep_manifest(self, dataset: str, raw: bytes, etag: str) -> None:
        kept, tag_file = self._manifest_paths(dataset)
        assert kept is not None and tag_file is not None and self.cache_dir is not None
        kept.parent.mkdir(parents=True, exist_ok=True)
        with atomic_destination(kept) as tmp:
            tmp.write_bytes(raw)
        if etag:
            with atomic_destination(tag_file) as tmp:
                tmp.write_text(etag)
        else:
            tag_file.unlink(missing_ok=True)
        # Before 0.2 manifests sat beside the datasets as "<dataset>_manifest.json", where a
        # dataset of that name would collide with them; such leftovers are files, not datasets.
        for old in (f"{dataset}_manifest.json", f".{dataset}_manifest.json.etag"):
            if (self.cache_dir / old).is_file() and not (self.cache_dir / old).is_symlink():
                with contextlib.suppress(OSError):
                    (self.cache_dir / old).unlink()

    def get_file(self, dataset: str, subpath: str) -> Path:
        """A local path holding the file, downloaded (and verified) if needed.

        A kept file whose content still matches the manifest's hash is returned without
        downloading it again.

        Raises:
            ValueError: The client has no ``cache_dir``.
            NotFound: No such dataset or file.
            IntegrityError: The download did not match the manifest (nothing is kept).
        """
        if self.cache_dir is None:
            raise ValueError("get_file needs a cache_dir (this client was made without one)")
        entry = self._entry(dataset, subpath)
        tag, entries, _ = self._manifest(dataset, revalidate=False)
        self._check_spellings(dataset, tag, entries, [entry["path"]])
        final = self._local(dataset, entry["path"])
        if not self._matches(final, entry):
            self._download(dataset, entry, final)
        return final

    def get_file_bytes(self, dataset: str, subpath: str) -> bytes:
        """The file's content, straight from the hub (nothing written), verified.

        Raises:
            NotFound: No such dataset or file.
            IntegrityError: The data did not match the manifest.
        """
        entry = self._entry(dataset, subpath)
        return self._fetch_bytes(dataset, entry)

    def download_dataset(
        self, dataset: str, file_list: Iterable[str] | None = None, *, progress: bool = True
    ) -> list[Path]:
        """Download the dataset (or ``file_list``) into the cache; local paths, in order.

        Only missing or changed files are fetched (kept files are checked against the
        manifest through the hash state cache, so unchanged ones are not re-read), in
        parallel on ``num_workers`` threads, each verified against its manifest hash and
        written atomically. Files up to 1 MiB travel in bundles (``POST /bundle``: up to 256
        files in one request), so thousands of small files do not cost a request each; a hub
        without bundles (the seed's) gets one request per file. A byte progress bar is drawn
        on a terminal.

        Raises:
            ValueError: The client has no ``cache_dir``.
            NotFound: The dataset, or a file of ``file_list``, does not exist.
            HashsyncError: The first file that failed (the others still complete).
        """
        if self.cache_dir is None:
            raise ValueError("download_dataset needs a cache_dir")
        manifest = {e["path"]: e for e in self.get_manifest(dataset)}
        wanted = list(manifest) if file_list is None else list(file_list)
        missing = [p for p in wanted if p not in manifest]
        if missing:
            raise NotFound(errno.ENOENT, f"not in dataset {dataset!r}: {missing[:5]}")
        tag, entries, _ = self._manifest(dataset, revalidate=False)
        self._check_spellings(dataset, tag, entries, wanted)
        local = self._kept_digests(dataset)
        todo = [p for p in wanted if local.get(p) != manifest[p]["hash"]]
        from hashsync._progress import byte_counter, byte_progress

        total = sum(manifest[p]["size"] for p in todo)
        entries = [manifest[p] for p in todo]
        # Enough bundles to keep every worker busy, each at most 256 files.
        per_bundle = max(1, min(256, -(-len(entries) // (self.num_workers * 4))))
        items = self._group(entries, per_bundle, _BUNDLE_BYTES)
        with byte_progress(f"{dataset}: {len(todo)} files", enabled=progress) as bar:
            moved = byte_counter(bar, total)

            def one(item: list[dict[str, Any]]) -> None:
                self._download_item(dataset, item, moved)

            run_on_threads(one, items, self.num_workers)
        return [self._local(dataset, p) for p in wanted]

    def stream(
        self, dataset: str, paths: Iterable[str] | None = None, *, prefetch: int = 8
    ) -> Iterator[tuple[str, bytes]]:
        """Yield ``(path, content)`` in order, ``prefetch`` requests in flight, nothing on disk.

        For training loops that read every file once. Each file is verified against the
        manifest before it is yielded. Small files come up to 64 to a request (a bundle), so
        at most ``prefetch`` x 4 MiB of small files (or ``prefetch`` large ones) are held.

        Raises:
            NotFound: The dataset or one of ``paths`` does not exist.
            IntegrityError: A file did not match the manifest.
        """
        if prefetch < 1:
            raise InvalidArgument(f"prefetch must be at least 1, not {prefetch}")
        manifest = {e["path"]: e for e in self.get_manifest(dataset)}
        order = list(manifest) if paths is None else list(paths)
        for p in order:
            if p not in manifest:
                raise NotFound(errno.ENOENT, f"not in dataset {dataset!r}: {p!r}")
        # Small files come in bundles of up to 64 (one request); memory stays bounded by
        # prefetch x the bundle size.
        items = iter(self._group([manifest[p] for p in order], 64, 4 * 1024 * 1024))

        def fetch(item: list[dict[str, Any]]) -> list[tuple[str, bytes]]:
            return [(e["path"], data) for e, data in self._fetch_item(dataset, item)]

        with ThreadPoolExecutor(prefetch, thread_name_prefix="hashsync-hub-stream") as pool:
            pending: deque[Future[list[tuple[str, bytes]]]] = deque()
            try:
                for item in items:
                    pending.append(pool.submit(fetch, item))
                    if len(pending) >= prefetch:
                        break
                while pending:
                    future = pending.popleft()
                    nxt = next(items, None)
                    if nxt is not None:
                        pending.append(pool.submit(fetch, nxt))
                    yield from future.result()
            finally:
                for future in pending:
                    future.cancel()

    def clear_cache(self, dataset: str | None = None) -> int:
        """Remove the kept files (and manifest) of ``dataset``, or of every dataset.

        Returns:
            Bytes freed.
        """
        if self.cache_dir is None or not self.cache_dir.is_dir():
            return 0
        freed = self.get_cache_size(dataset)
        if dataset is None:
            for child in self.cache_dir.iterdir():
                _remove(child)
        else:
            self._dataset(dataset)
            _remove(self.cache_dir / dataset)
            for kept in self._manifest_paths(dataset):
                if kept is not None:
                    _remove(kept)
            with self._manifest_lock:
                self._manifests.pop(dataset, None)
        return freed

    def get_cache_size(self, dataset: str | None = None) -> int:
        """Bytes kept in the cache for ``dataset`` (or for all datasets)."""
        if self.cache_dir is None:
            return 0
        if dataset is None:
            return _tree_bytes(self.cache_dir)
        self._dataset(dataset)
        size = _tree_bytes(self.cache_dir / dataset)
        kept = self._manifest_paths(dataset)[0]
        if kept is not None and kept.is_file():
            size += kept.stat().st_size
        return size

    # -- helpers ---------------------------------------------------------------------

    def _check_spellings(
        self, dataset: str, tag: str, entries: list[dict[str, Any]], wanted: list[str]
    ) -> None:
        """Refuse ``wanted`` paths that share one file with another path of the manifest.

        On a case-insensitive or normalising disk (a Mac's), ``Data.csv`` and ``data.csv``
        would be kept in one file, each download replacing the other under a path already
        handed out. Checked against the whole manifest, once a version.
        """
        assert self.cache_dir is not None
        folding = probe(self.cache_dir)
        if not folding:
            return
        with self._manifest_lock:
            groups = self._collisions.get((dataset, tag)) if tag else None
        if groups is None:
            found = collisions((e["path"] for e in entries), folding)
            groups = {k: g for g in found for k in g}
            if tag:
                with self._manifest_lock:
                    self._collisions[(dataset, tag)] = groups
        for path in wanted:
            if path in groups:
                raise NameCollision(
                    groups[path], folding.describe(), f"{str(self.cache_dir / dataset)!r}"
                )

    def _manifest_paths(self, dataset: str) -> tuple[Path | None, Path | None]:
        """Where the dataset's manifest and its ETag are kept (a dot directory: no dataset)."""
        if self.cache_dir is None:
            return None, None
        where = self.cache_dir / ".manifests"
        return where / f"{dataset}.json", where / f"{dataset}.etag"

    def _entry(self, dataset: str, path: str, *, revalidate: bool = True) -> dict[str, Any]:
        validate_key(path)
        entry = self._manifest(dataset, revalidate=revalidate)[2].get(path)
        if entry is None:
            raise NotFound(errno.ENOENT, f"{path!r} is not in dataset {dataset!r}")
        return entry

    def _local(self, dataset: str, path: str) -> Path:
        assert self.cache_dir is not None
        root = self.cache_dir / dataset
        final = root.joinpath(*validate_key(path).split("/"))
        where = link_below(self.cache_dir, final)
        if where is not None:
            raise UnsafePath(
                errno.ELOOP,
                f"refusing to write {path!r} under {self.cache_dir}: {where!r} is a symbolic link",
            )
        return final

    def _matches(self, path: Path, entry: dict[str, Any]) -> bool:
        """Whether the kept file holds the entry's content (hashes are remembered by inode)."""
        try:
            st = path.lstat()
        except OSError:
            return False
        if not path.is_file() or path.is_symlink() or st.st_size != entry["size"]:
            return False
        key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        with self._digest_lock:
            digest = self._digests.get(key)
        if digest is None:
            digest = f"{ALGORITHM}:{hashsync.hash_file(path, ALGORITHM)}"
            with self._digest_lock:
                self._digests[key] = digest
        return digest == entry["hash"]

    def _kept_digests(self, dataset: str) -> dict[str, str]:
        assert self.cache_dir is not None
        directory = self.cache_dir / dataset
        if not directory.is_dir():
            return {}
        listing = hashsync.scan(directory, algorithm=ALGORITHM)
        return {e.path: f"{ALGORITHM}:{e.digest}" for e in listing if e.digest is not None}

    def _group(
        self, entries: list[dict[str, Any]], files: int, size: int
    ) -> list[list[dict[str, Any]]]:
        """Work items: consecutive small files in bundles, a large file on its own.

        A bundle has at most ``files`` files and ``size`` bytes; a hub without bundles gets
        every file on its own.
        """
        items: list[list[dict[str, Any]]] = []
        batch: list[dict[str, Any]] = []
        total = 0
        for entry in entries:
            small = self._bundles is not False and entry["size"] <= BUNDLE_MAX_FILE_BYTES
            if batch and (
                not small
                or len(batch) >= min(files, BUNDLE_MAX_FILES)
                or total + entry["size"] > size
            ):
                items.append(batch)
                batch, total = [], 0
            if not small:
                items.append([entry])
                continue
            batch.append(entry)
            total += entry["size"]
        if batch:
            items.append(batch)
        return items

    def _fetch_item(
        self, dataset: str, item: list[dict[str, Any]]
    ) -> Iterator[tuple[dict[str, Any], bytes]]:
        """``(entry, verified content)`` of each file of a work item, in order."""
        bundle = self._fetch_bundle(dataset, item) if len(item) > 1 else None
        if bundle is None:
            for entry in item:
                yield entry, self._fetch_bytes(dataset, entry)
            return
        for entry, data, error in bundle:
            if error is not None:
                raise error
            yield entry, data

    def _download_item(
        self, dataset: str, item: list[dict[str, Any]], moved: Callable[[int], None]
    ) -> None:
        """Download one work item into the cache; the first failure is raised at the end."""
        bundle = self._fetch_bundle(dataset, item) if len(item) > 1 else None
        if bundle is None:
            for entry in item:
                self._download(dataset, entry, self._local(dataset, entry["path"]), moved)
            return
        first: BaseException | None = None
        good: list[tuple[Path, bytes]] = []
        for entry, data, error in bundle:
            try:
                if error is None:
                    good.append((self._local(dataset, entry["path"]), data))
                    continue
            except (OSError, InvalidArgument) as exc:
                error = exc
            first = first or error
        for (_, data), failed in zip(good, write_files_atomically(good), strict=True):
            if failed is None:
                moved(len(data))
            first = first or failed
        if first is not None:
            raise first

    def _fetch_bundle(
        self, dataset: str, item: list[dict[str, Any]]
    ) -> list[tuple[dict[str, Any], bytes, BaseException | None]] | None:
        """Fetch the files of ``item`` in one ``POST /bundle``, each checked against its entry.

        Returns ``(entry, content, None)`` per good file and ``(entry, b"", error)`` per file
        the hub refused or sent wrong, or None when the hub has no bundles (a seed hub).
        """
        if self._bundles is False:
            return None
        body = json.dumps({"paths": [e["path"] for e in item]}).encode()
        url = f"/bundle/{self._dataset(dataset)}"
        response = self._request(
            url,
            {"Content-Type": "application/json"},
            method="POST",
            body=body,
            ok=(200, 404, 405),
        )
        where = f"{self!r}: bundle of {dataset!r}"
        if response.status != 200:
            detail = ""
            with contextlib.suppress(ValueError, AttributeError, IntegrityError):
                detail = str(json.loads(self._read(response, _SMALL_BODY, where)).get("detail", ""))
            if detail == "no such dataset":
                raise NotFound(errno.ENOENT, f"POST {redact(self.base_url + url)}: {detail}")
            self._bundles = False  # no such endpoint: a seed hub, or one before bundles
            return None
        self._bundles = True
        # The files' bytes and a header line of each: nothing more is read.
        limit = sum(e["size"] for e in item) + len(item) * _SMALL_BODY
        data = self._read(response, limit, where)
        out: list[tuple[dict[str, Any], bytes, BaseException | None]] = []
        pos = 0
        for index, entry in enumerate(item):
            end = data.find(b"\n", pos)
            try:
                header = json.loads(data[pos:end]) if end >= 0 else None
            except (ValueError, RecursionError):  # RecursionError: deep nesting, on purpose
                header = None
            size = header.get("size", 0) if isinstance(header, dict) else None
            if (
                not isinstance(header, dict)
                or header.get("path") != entry["path"]
                or not isinstance(size, int)
                or size < 0
                or end + 1 + size > len(data)
            ):
                # Cut short or garbled: the files before are good, none after can be trusted.
                broken = IntegrityError(f"{where}: the answer breaks off at {entry['path']!r}")
                out.extend((e, b"", broken) for e in item[index:])
                return out
            pos = end + 1
            what = f"{dataset}/{entry['path']}"
            if "error" in header:
                out.append(
                    (entry, b"", NotFound(errno.ENOENT, f"{what}: {str(header['error'])[:200]}"))
                )
                continue
            content = data[pos : pos + size]
            pos += size
            try:
                _check(hashlib.sha256(content).hexdigest(), size, entry, what)
            except IntegrityError as exc:
                out.append((entry, b"", exc))
                continue
            out.append((entry, content, None))
        if pos != len(data):
            raise IntegrityError(f"{where}: {len(data) - pos} unexpected bytes at the end")
        return out

    def _fetch_bytes(self, dataset: str, entry: dict[str, Any]) -> bytes:
        what = f"{dataset}/{entry['path']}"
        response = self._request(self._file_url(dataset, entry["path"]))
        data = self._read(response, entry["size"], what)
        _check(hashlib.sha256(data).hexdigest(), len(data), entry, what)
        return data

    def _download(
        self,
        dataset: str,
        entry: dict[str, Any],
        final: Path,
        moved: Callable[[int], object] | None = None,
    ) -> None:
        """Fetch one file to ``final``, verified; large files through a resumable partial."""
        moved = moved or current_progress()
        final.parent.mkdir(parents=True, exist_ok=True)
        cleanup_once(final.parent)
        what = f"{dataset}/{entry['path']}"
        url = self._file_url(dataset, entry["path"])
        if entry["size"] < RESUME_MIN_BYTES:
            with atomic_destination(final) as tmp, open(tmp, "wb") as fh:
                digest = hashlib.sha256()
                response = self._request(url, stream=True)
                for chunk in self._chunks(response, entry["size"], what):
                    fh.write(chunk)
                    digest.update(chunk)
                    if moved is not None:
                        moved(len(chunk))
                fh.flush()
                _check(digest.hexdigest(), fh.tell(), entry, what)
            return
        # One process at a time per file: the partial file's name is shared so that a later
        # call can resume it.
        hexdigest = entry["hash"].partition(":")[2]
        partial = final.with_name(f".{final.name}{TMP_MARK}partial-{hexdigest[:16]}")
        with KeyLock(final, timeout=3600.0, refresh=10.0, stale_after=60.0):
            if self._matches(final, entry):
                return  # another process finished it while we waited
            self._resume(url, partial, entry, what, moved)
            os.replace(partial, final)
            fsync_directory(final.parent)

    def _resume(
        self,
        url: str,
        partial: Path,
        entry: dict[str, Any],
        what: str,
        moved: Callable[[int], object] | None,
    ) -> None:
        digest = hashlib.sha256()
        have = 0
        with contextlib.suppress(FileNotFoundError):
            have = partial.stat().st_size
        if have > entry["size"]:
            partial.unlink()
            have = 0
        fd = os.open(partial, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            headers: dict[str, str] = {}
            if 0 < have:
                # The bytes kept are hashed again (not trusted), then the rest is asked for,
                # only if the file is still the version they came from.
                with open(fd, "rb", closefd=False) as fh:
                    fh.seek(0)
                    for chunk in iter(lambda: fh.read(_CHUNK), b""):
                        digest.update(chunk)
                if have < entry["size"]:
                    headers = {"Range": f"bytes={have}-", "If-Range": f'"{entry["hash"][7:]}"'}
            if have < entry["size"]:
                response = self._request(url, headers, stream=True, ok=(200, 206))
                if response.status == 200:  # the version changed, or no range: restart
                    os.ftruncate(fd, 0)
                    digest, have = hashlib.sha256(), 0
                os.lseek(fd, have, os.SEEK_SET)
                try:
                    for chunk in self._chunks(response, entry["size"] - have, what):
                        os.write(fd, chunk)
                        digest.update(chunk)
                        have += len(chunk)
                        if moved is not None:
                            moved(len(chunk))
                except IntegrityError:
                    # Longer than the manifest says: what was kept cannot be trusted either.
                    os.close(fd)
                    fd = -1
                    partial.unlink(missing_ok=True)
                    raise
            try:
                _check(digest.hexdigest(), have, entry, what)
            except IntegrityError:
                os.close(fd)
                fd = -1
                partial.unlink(missing_ok=True)
                raise
            full_fsync(fd)
        finally:
            if fd >= 0:
                os.close(fd)


def _check(hexdigest: str, size: int, entry: dict[str, Any], what: str) -> None:
    if size != entry["size"]:
        raise IntegrityError(f"{what}: got {size} bytes, the manifest says {entry['size']}")
    if f"{ALGORITHM}:{hexdigest}" != entry["hash"]:
        raise IntegrityError(f"{what}: content does not match its manifest hash {entry['hash']}")


def _as_sent(url: str) -> str:
    """``url`` as urllib3 will send it (its own parse, normalised), or ``""`` if it has none."""
    from urllib3.exceptions import LocationParseError
    from urllib3.util import parse_url

    try:
        return parse_url(url).url
    except (LocationParseError, ValueError):
        return ""


def _origin(url: str) -> tuple[str, str, int | None]:
    """Scheme, host and port of ``url`` as urllib3 reads it (it is what connects)."""
    from urllib3.exceptions import LocationParseError
    from urllib3.util import parse_url

    try:
        parts = parse_url(url)
    except (LocationParseError, ValueError):
        return "", "", -1
    scheme = (parts.scheme or "").lower()
    port = parts.port or {"http": 80, "https": 443}.get(scheme)
    return scheme, (parts.host or "").lower().strip("[]"), port


def _json(raw: bytes, what: str = "the hub's answer") -> Any:
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        # RecursionError: nesting deeper than the parser's stack, from a hostile hub.
        raise IntegrityError(f"{what}: not valid JSON") from None


def _checked_manifest(value: Any, client: DatasetHubClient) -> list[dict[str, Any]]:
    """The manifest if it is well-formed, else an IntegrityError.

    Each entry: a path that is a safe key without control characters (no two alike, none
    the directory of another), a size that is a whole number of bytes a file can have (not a
    bool), and ``sha256:`` with 64 lowercase hex digits.
    """
    if not isinstance(value, list):
        raise IntegrityError(f"{client!r}: the manifest is not a list")
    seen: set[str] = set()
    for item in value:
        size = item.get("size") if isinstance(item, dict) else None
        digest = item.get("hash") if isinstance(item, dict) else None
        path = item.get("path") if isinstance(item, dict) else None
        if not (
            isinstance(path, str)
            and type(size) is int
            and 0 <= size <= _MAX_SIZE
            and isinstance(digest, str)
            and digest.startswith(f"{ALGORITHM}:")
            and _HEX64.fullmatch(digest[len(ALGORITHM) + 1 :]) is not None
        ):
            raise IntegrityError(f"{client!r}: malformed manifest entry {str(item)[:200]!r}")
        try:
            if _CONTROL.search(path):
                raise InvalidArgument("control character")
            validate_key(path)
        except InvalidArgument:
            raise IntegrityError(
                f"{client!r}: the manifest names an unsafe path {path!r}"
            ) from None
        if path in seen:
            raise IntegrityError(f"{client!r}: the manifest names {path!r} twice")
        seen.add(path)
    # A path cannot be a file and a directory at once ("a" and "a/b"): no hub's disk holds
    # both, and writing them fails half-way.
    for path in seen:
        cut = path.rfind("/")
        while cut > 0:
            if path[:cut] in seen:
                raise IntegrityError(
                    f"{client!r}: the manifest names {path[:cut]!r} as a file and as a "
                    f"directory ({path!r})"
                )
            cut = path.rfind("/", 0, cut)
    return value


def _tree_bytes(directory: Path) -> int:
    total = 0
    if directory.is_file():
        return directory.stat().st_size
    for here, _dirs, files in os.walk(directory):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(here, name)).st_size
    return total


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
