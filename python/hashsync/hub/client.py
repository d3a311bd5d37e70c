"""The dataset hub client: seed 002's ``DatasetHubClient``, verified, parallel and resumable.

Every file is checked against its manifest hash (SHA-256 of the whole content) while it
streams; a file lands under its final name only when complete and verified (a temporary file,
fsynced, renamed). Large downloads that were interrupted resume with ``Range`` + ``If-Range``.
The cache layout on disk is the seed's: ``<cache_dir>/<dataset>_manifest.json`` and
``<cache_dir>/<dataset>/<path>``. Needs no server dependencies (urllib3 comes with boto3).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import threading
import urllib.parse
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import hashsync
from hashsync._redact import redact
from hashsync._threads import run_on_threads
from hashsync.atomic import (
    TMP_MARK,
    KeyLock,
    atomic_destination,
    cleanup_once,
    fsync_directory,
    write_files_atomically,
)
from hashsync.errors import (
    HashsyncWarning,
    IntegrityError,
    InvalidArgument,
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
from hashsync.storage.local import _link_below

__all__ = ["DatasetHubClient"]

_CHUNK = 1024 * 1024
# Files at least this large are downloaded into a partial file that a later call resumes.
RESUME_MIN_BYTES = 8 * 1024 * 1024
# Small files travel in bundles of at most this many bytes (one request each).
_BUNDLE_BYTES = 8 * 1024 * 1024


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
        self._http = urllib3.PoolManager(
            maxsize=max(num_workers, 16),
            retries=urllib3.Retry(
                total=3, connect=3, read=2, status=0, backoff_factor=0.2, redirect=2
            ),
            timeout=urllib3.Timeout(connect=min(timeout, 10.0), read=timeout),
        )
        self._digests: dict[tuple[int, int, int, int], str] = {}
        self._digest_lock = threading.Lock()
        # Whether the hub answers POST /bundle (a seed hub does not): None until asked.
        self._bundles: bool | None = None
        # Per dataset, how many files the hub's last manifest left out as unreadable.
        self.unreadable: dict[str, int] = {}

    def __repr__(self) -> str:
        return f"DatasetHubClient({redact(self.base_url)!r}, cache_dir={self.cache_dir!r})"

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        for name in ("_http", "_digest_lock"):
            state.pop(name)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(  # type: ignore[misc]
            state["base_url"],
            state["api_key"],
            state["cache_dir"],
            num_workers=state["num_workers"],
            timeout=state["timeout"],
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
        import urllib3

        sent = dict(headers or {})
        if self.api_key:
            sent["Authorization"] = f"Bearer {self.api_key}"
        url = self.base_url + path
        try:
            response = self._http.request(
                method,
                url,
                headers=sent,
                body=body,
                preload_content=not stream,
                decode_content=True,
            )
        except urllib3.exceptions.HTTPError as exc:
            raise StorageUnavailable(
                errno.ECONNREFUSED, f"{method} {redact(url)}: hub unreachable ({exc})"
            ) from None
        if response.status not in ok:
            detail = ""
            with contextlib.suppress(Exception):
                detail = str(json.loads(response.data or b"{}").get("detail", ""))
            response.release_conn()
            message = f"{method} {redact(url)}: HTTP {response.status}"
            if detail:
                message += f" ({detail})"
            raise error_for_status(response.status, message)
        return response

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
        names = json.loads(self._request("/datasets").data)
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
        quoted = self._dataset(dataset)
        kept = self._manifest_path(dataset)
        tag_file = kept.with_name(f".{kept.name}.etag") if kept is not None else None
        headers = {"Accept-Encoding": "gzip"}
        cached: list[dict[str, Any]] | None = None
        if kept is not None and tag_file is not None and kept.is_file() and tag_file.is_file():
            with contextlib.suppress(OSError, ValueError):
                cached = _checked_manifest(json.loads(kept.read_bytes()), self)
                headers["If-None-Match"] = tag_file.read_text().strip()
        try:
            response = self._request(f"/manifest/{quoted}", headers, ok=(200, 304))
            left_out = response.headers.get("X-Hashsync-Unreadable", "0")
            self.unreadable[dataset] = int(left_out) if left_out.isdigit() else 0
        except StorageUnavailable as exc:
            if cached is None:
                raise
            warnings.warn(
                f"using the kept manifest of {dataset!r}: {exc}", HashsyncWarning, stacklevel=2
            )
            return cached
        if response.status == 304 and cached is not None:
            return cached
        manifest = _checked_manifest(json.loads(response.data), self)
        if kept is not None and tag_file is not None:
            with atomic_destination(kept) as tmp:
                tmp.write_bytes(response.data if response.data else b"[]")
            etag = response.headers.get("ETag")
            if etag:
                with atomic_destination(tag_file) as tmp:
                    tmp.write_text(etag)
        return manifest

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
            kept = self._manifest_path(dataset)
            if kept is not None:
                _remove(kept)
                _remove(kept.with_name(f".{kept.name}.etag"))
        return freed

    def get_cache_size(self, dataset: str | None = None) -> int:
        """Bytes kept in the cache for ``dataset`` (or for all datasets)."""
        if self.cache_dir is None:
            return 0
        if dataset is None:
            return _tree_bytes(self.cache_dir)
        self._dataset(dataset)
        kept = self._manifest_path(dataset)
        size = _tree_bytes(self.cache_dir / dataset)
        if kept is not None and kept.is_file():
            size += kept.stat().st_size
        return size

    # -- helpers ---------------------------------------------------------------------

    def _manifest_path(self, dataset: str) -> Path | None:
        if self.cache_dir is None:
            return None
        return self.cache_dir / f"{dataset}_manifest.json"

    def _entry(self, dataset: str, path: str) -> dict[str, Any]:
        validate_key(path)
        for entry in self.get_manifest(dataset):
            if entry["path"] == path:
                return entry
        raise NotFound(errno.ENOENT, f"{path!r} is not in dataset {dataset!r}")

    def _local(self, dataset: str, path: str) -> Path:
        assert self.cache_dir is not None
        root = self.cache_dir / dataset
        final = root.joinpath(*validate_key(path).split("/"))
        where = _link_below(self.cache_dir, final)
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
        if response.status != 200:
            detail = ""
            with contextlib.suppress(ValueError, AttributeError):
                detail = str(json.loads(response.data or b"{}").get("detail", ""))
            if detail == "no such dataset":
                raise NotFound(errno.ENOENT, f"POST {redact(self.base_url + url)}: {detail}")
            self._bundles = False  # no such endpoint: a seed hub, or one before bundles
            return None
        self._bundles = True
        data: bytes = response.data
        out: list[tuple[dict[str, Any], bytes, BaseException | None]] = []
        pos = 0
        where = f"{self!r}: bundle of {dataset!r}"
        for index, entry in enumerate(item):
            end = data.find(b"\n", pos)
            try:
                header = json.loads(data[pos:end]) if end >= 0 else None
            except ValueError:
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
        response = self._request(self._file_url(dataset, entry["path"]))
        data: bytes = response.data
        _check(hashlib.sha256(data).hexdigest(), len(data), entry, f"{dataset}/{entry['path']}")
        return data

    def _download(
        self,
        dataset: str,
        entry: dict[str, Any],
        final: Path,
        moved: Callable[[int], None] | None = None,
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
                try:
                    for chunk in response.stream(_CHUNK):
                        fh.write(chunk)
                        digest.update(chunk)
                        if moved is not None:
                            moved(len(chunk))
                finally:
                    response.release_conn()
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
        moved: Callable[[int], None] | None,
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
                try:
                    if response.status == 200:  # the version changed, or no range: restart
                        os.ftruncate(fd, 0)
                        digest, have = hashlib.sha256(), 0
                    os.lseek(fd, have, os.SEEK_SET)
                    for chunk in response.stream(_CHUNK):
                        os.write(fd, chunk)
                        digest.update(chunk)
                        have += len(chunk)
                        if moved is not None:
                            moved(len(chunk))
                finally:
                    response.release_conn()
            try:
                _check(digest.hexdigest(), have, entry, what)
            except IntegrityError:
                os.close(fd)
                fd = -1
                partial.unlink(missing_ok=True)
                raise
            os.fsync(fd)
        finally:
            if fd >= 0:
                os.close(fd)


def _check(hexdigest: str, size: int, entry: dict[str, Any], what: str) -> None:
    if size != entry["size"]:
        raise IntegrityError(f"{what}: got {size} bytes, the manifest says {entry['size']}")
    if f"{ALGORITHM}:{hexdigest}" != entry["hash"]:
        raise IntegrityError(f"{what}: content does not match its manifest hash {entry['hash']}")


def _checked_manifest(value: Any, client: DatasetHubClient) -> list[dict[str, Any]]:
    """The manifest if it is well-formed (paths are safe keys, sha256 hashes), else an error."""
    if not isinstance(value, list):
        raise IntegrityError(f"{client!r}: the manifest is not a list")
    for item in value:
        if not (
            isinstance(item, dict)
            and isinstance(item.get("path"), str)
            and isinstance(item.get("size"), int)
            and isinstance(item.get("hash"), str)
            and item["hash"].startswith(f"{ALGORITHM}:")
            and len(item["hash"]) == len(ALGORITHM) + 1 + 64
        ):
            raise IntegrityError(f"{client!r}: malformed manifest entry {str(item)[:200]!r}")
        try:
            validate_key(item["path"])
        except InvalidArgument:
            raise IntegrityError(
                f"{client!r}: the manifest names an unsafe path {item['path']!r}"
            ) from None
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
