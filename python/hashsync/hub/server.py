"""The dataset hub server: share the subdirectories of one directory over HTTP.

``hashsync serve ROOT`` (or ``python -m hashsync.hub``) runs :func:`create_app` on uvicorn. Each
subdirectory of ROOT is a dataset. Endpoints (seed 002's, DSX Hub):

- ``GET /datasets``: the dataset names;
- ``GET /manifest/{dataset}``: ``[{"path", "size", "hash", "mtime"}]``, ``hash`` the
  ``sha256:<hex>`` of the whole content, computed by the Rust scan with the hash state cache (an
  unchanged dataset is not re-read; an edited file is noticed on the next request), ``mtime``
  in seconds (an addition to the seed's fields); with an ETag (``304`` to ``If-None-Match``) and
  gzip when accepted;
- ``GET /file/{dataset}/{path}``: the file, with a strong ETag (its content hash),
  Last-Modified, ``Range`` (206, 416 when unsatisfiable) and ``If-Range``;
- ``POST /bundle/{dataset}``: many small files in one answer (a hashsync addition, so that
  thousands of small files do not cost a request each);
- ``GET /health`` and ``/docs``: without authentication.

Every other endpoint wants ``Authorization: Bearer <key>``, compared in constant time with each
configured key. Files are found through the dataset's manifest, never by joining the request's
path onto ROOT: ``..``, absolute paths, percent-encoded or double-encoded variants, backslashes
and symbolic links (which the scan does not follow) all name no manifest entry and get 404;
every refusal is logged.

Needs the ``hub`` extra (FastAPI, uvicorn).
"""

# No "from __future__ import annotations": FastAPI reads the endpoints' annotations at runtime,
# and Request is imported inside create_app (the server's dependencies are an extra).

import email.utils
import errno
import gzip
import hmac
import json
import logging
import os
import stat
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from hashsync.atomic import is_internal_key
from hashsync.errors import InvalidArgument, missing_extra
from hashsync.hub._manifest import (
    BUNDLE_MAX_BODY,
    BUNDLE_MAX_FILE_BYTES,
    BUNDLE_MAX_FILES,
    Manifest,
    ManifestEntry,
    scan_dataset,
    valid_dataset_name,
)
from hashsync.storage.base import validate_key

__all__ = ["DatasetRoot", "create_app"]

log = logging.getLogger("hashsync.hub")


class DatasetRoot:
    """The datasets under one directory, with their manifests kept current.

    A manifest is rebuilt on every manifest request (cheap: the hash state cache re-reads only
    changed files) and whenever a file request finds its file changed, or added, since the last
    scan.

    Args:
        root: The directory whose subdirectories are the datasets.
        state_dir: Where the hash state cache lives (default ``$HASHSYNC_CACHE_DIR``).
    """

    def __init__(self, root: str | os.PathLike[str], *, state_dir: str | None = None) -> None:
        self.root = Path(root).absolute()
        if not self.root.is_dir():
            raise InvalidArgument(f"dataset root {self.root} is not a directory")
        self.state_dir = state_dir
        self._manifests: dict[str, Manifest] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()
        # Files that existed but a rescan still left out, by (dataset, path): their identity.
        self._unservable: dict[tuple[str, str], tuple[int, ...]] = {}

    def datasets(self) -> list[str]:
        """The dataset names: subdirectories of the root that are not hidden or links."""
        names = []
        with os.scandir(self.root) as it:
            for entry in it:
                if valid_dataset_name(entry.name) and entry.is_dir(follow_symlinks=False):
                    names.append(entry.name)
        return sorted(names)

    def _directory(self, dataset: str) -> Path | None:
        # Only a name that /datasets would list: one component, no separator or dot-name, a
        # real directory (not a link) right under the root. Checked with one lstat per
        # request instead of listing the root each time.
        if not valid_dataset_name(dataset):
            return None
        directory = self.root / dataset
        try:
            st = directory.lstat()
        except OSError:
            return None
        return directory if stat.S_ISDIR(st.st_mode) else None

    def manifest(self, dataset: str, *, fresh: bool = True) -> Manifest | None:
        """The dataset's manifest (rescanned unless ``fresh`` is False), or None if unknown."""
        directory = self._directory(dataset)
        if directory is None:
            return None
        with self._guard:
            lock = self._locks.setdefault(dataset, threading.Lock())
        with lock:
            if fresh or dataset not in self._manifests:
                manifest = scan_dataset(directory, state_dir=self.state_dir)
                for path, why in manifest.errors:
                    log.warning("dataset %r: %s left out of the manifest: %s", dataset, path, why)
                self._manifests[dataset] = manifest
            return self._manifests[dataset]

    def open_file(self, dataset: str, path: str) -> tuple[int, os.stat_result, ManifestEntry]:
        """Open a dataset file by its manifest path: ``(fd, stat, current entry)``.

        Raises:
            FileNotFoundError: No such dataset, no such manifest entry, or the file is a link
                or otherwise not the regular file the manifest names (logged as a refusal).
        """
        manifest = self.manifest(dataset, fresh=False)
        if manifest is None:
            raise _refused(dataset, path, "no such dataset")
        entry = manifest.entries.get(path)
        if entry is None and self._appeared(dataset, path):
            # Added since the last scan: rescan once (unchanged files are not re-read).
            manifest = self.manifest(dataset) or manifest
            entry = manifest.entries.get(path)
            if entry is None:
                self._remember_unservable(dataset, path)
        if entry is None:
            raise _refused(dataset, path, "not in the dataset's manifest")
        fd = self._open_entry(dataset, entry.path)
        st = os.fstat(fd)
        if (st.st_size, st.st_mtime_ns) != (entry.size, entry.mtime_ns):
            # Edited since the last scan: rescan (only this file is re-read) for its new hash.
            os.close(fd)
            manifest = self.manifest(dataset) or manifest
            entry = manifest.entries.get(path)  # type: ignore[assignment]
            if entry is None:
                raise _refused(dataset, path, "no longer in the dataset")
            fd = self._open_entry(dataset, entry.path)
            st = os.fstat(fd)
        return fd, st, entry

    def _appeared(self, dataset: str, path: str) -> bool:
        """Whether ``path`` names a servable file the last scan did not see.

        Only a valid key that is not hashsync's own temporary, found as a regular file by the
        same link-refusing walk that serves files, and not already rescanned for in vain
        (unreadable, say): a request for a name that does not exist never costs a scan.
        """
        try:
            validate_key(path)
        except InvalidArgument:
            return False
        if is_internal_key(path):
            return False
        try:
            fd = self._walk(dataset, path)
        except OSError:
            return False
        try:
            st = os.fstat(fd)
        finally:
            os.close(fd)
        if not stat.S_ISREG(st.st_mode):
            return False
        with self._guard:
            return self._unservable.get((dataset, path)) != _identity(st)

    def _remember_unservable(self, dataset: str, path: str) -> None:
        try:
            fd = self._walk(dataset, path)
        except OSError:
            return
        try:
            st = os.fstat(fd)
        finally:
            os.close(fd)
        with self._guard:
            if len(self._unservable) >= 4096:
                self._unservable.pop(next(iter(self._unservable)))
            self._unservable[(dataset, path)] = _identity(st)

    def _walk(self, dataset: str, relative: str) -> int:
        # Component by component without following links: a directory swapped for a link
        # after the scan must not lead out of the dataset.
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            for part in [dataset, *relative.split("/")]:
                nxt = os.open(part, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=fd)
                os.close(fd)
                fd = nxt
            return fd
        except BaseException:
            os.close(fd)
            raise

    def _open_entry(self, dataset: str, relative: str) -> int:
        try:
            fd = self._walk(dataset, relative)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOENT, errno.ENOTDIR):
                raise _refused(dataset, relative, "a link, or gone") from None
            raise
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise _refused(dataset, relative, "not a regular file")
            return fd
        except BaseException:
            os.close(fd)
            raise


def _identity(st: os.stat_result) -> tuple[int, ...]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _refused(dataset: str, path: str, why: str) -> FileNotFoundError:
    log.warning("refused %r in dataset %r: %s", path, dataset, why)
    return FileNotFoundError(errno.ENOENT, "not found")


def create_app(
    root: str | os.PathLike[str],
    *,
    api_keys: Sequence[str] = (),
    no_auth: bool = False,
    state_dir: str | None = None,
) -> Any:
    """Build the hub's FastAPI application.

    Args:
        root: The dataset root.
        api_keys: Accepted Bearer keys (any of them).
        no_auth: Serve without keys (only sensible on 127.0.0.1; :func:`serve` enforces that).
        state_dir: Where the hash state cache lives.

    Raises:
        InvalidArgument: No keys and not ``no_auth``, or ``root`` is not a directory.
        MissingDependency: FastAPI is not installed.
    """
    try:
        from fastapi import Depends, FastAPI, HTTPException, Request
        from fastapi.exception_handlers import http_exception_handler
        from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
        from starlette.exceptions import HTTPException as StarletteHTTPException
    except ImportError:
        raise missing_extra("the hub server", "hub") from None

    keys = [k.encode() for k in api_keys if k]
    if not keys and not no_auth:
        raise InvalidArgument("the hub server needs an API key (HASHSYNC_HUB_API_KEY) or no_auth")
    datasets = DatasetRoot(root, state_dir=state_dir)
    app = FastAPI(
        title="hashsync dataset hub",
        description="Datasets shared by content hash (seed 002's DSX Hub API).",
        version=_version(),
    )

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 404 and exc.detail == "Not Found":
            # A path no route matches (e.g. an encoded "/" in a dataset name): a refusal too.
            log.warning("refused %s %r: no such endpoint", request.method, request.url.path)
        return await http_exception_handler(request, exc)

    def authorized(request: Request) -> None:
        if not keys:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        token = given.strip().encode()
        # Every key is compared, in constant time, whatever matched: no timing tells which.
        ok = False
        for key in keys:
            ok |= hmac.compare_digest(token, key)
        if scheme.lower() != "bearer" or not ok:
            log.warning("refused %s %s: missing or wrong API key", request.method, request.url.path)
            raise HTTPException(
                status_code=401,
                detail="missing or wrong API key",
                headers={"WWW-Authenticate": "Bearer"},
            )

    @app.get("/health")
    def health() -> dict[str, str]:
        """Liveness check (no authentication)."""
        return {"status": "ok"}

    @app.get("/datasets", dependencies=[Depends(authorized)])
    def list_datasets() -> list[str]:
        """The dataset names."""
        return datasets.datasets()

    @app.get("/manifest/{dataset}", dependencies=[Depends(authorized)])
    def manifest(dataset: str, request: Request) -> Response:
        """The dataset's files: ``[{"path", "size", "hash": "sha256:<hex>"}]``."""
        m = datasets.manifest(dataset)
        if m is None:
            _refused(dataset, "", "no such dataset")
            raise HTTPException(status_code=404, detail="no such dataset")
        body, etag = m.body(), m.etag()
        headers = {"ETag": etag, "Vary": "Accept-Encoding", "Cache-Control": "no-cache"}
        if m.errors:
            # Files left out because they could not be read: a client must not take their
            # absence for a deletion (the paths are in the server's log).
            headers["X-Hashsync-Unreadable"] = str(len(m.errors))
        if etag in _etags(request.headers.get("if-none-match", "")):
            return Response(status_code=304, headers=headers)
        if "gzip" in request.headers.get("accept-encoding", "").lower():
            body = gzip.compress(body, compresslevel=5)
            headers["Content-Encoding"] = "gzip"
        return Response(body, media_type="application/json", headers=headers)

    @app.post("/bundle/{dataset}", dependencies=[Depends(authorized)])
    async def bundle(dataset: str, request: Request) -> Response:
        """Many small files in one answer (a hashsync addition; seed clients never ask).

        The body is ``{"paths": [...]}`` (at most 4,096 paths of files up to 1 MiB). The
        answer is, per path in order, one JSON line ``{"path", "size", "hash"}`` followed by
        exactly ``size`` bytes, or ``{"path", "error"}`` for a file that cannot be served
        (refused like ``/file``, or larger than 1 MiB: fetch it with ``/file``).
        """
        raw = await request.body()
        paths = _bundle_paths(raw)
        if paths is None:
            raise HTTPException(
                status_code=400,
                detail=f'expected {{"paths": [...]}}, at most {BUNDLE_MAX_FILES} strings',
            )
        if datasets.manifest(dataset, fresh=False) is None:
            _refused(dataset, "", "no such dataset")
            raise HTTPException(status_code=404, detail="no such dataset")
        return StreamingResponse(
            _bundle_frames(datasets, dataset, paths), media_type="application/x-hashsync-bundle"
        )

    # HEAD needs the key as much as GET: it tells a file's size and content hash.
    @app.head(
        "/file/{dataset}/{path:path}", include_in_schema=False, dependencies=[Depends(authorized)]
    )
    @app.get("/file/{dataset}/{path:path}", dependencies=[Depends(authorized)])
    def file(dataset: str, path: str, request: Request) -> Response:
        """A file of the dataset (``Range`` and ``If-Range`` supported)."""
        try:
            fd, st, entry = datasets.open_file(dataset, path)
        except FileNotFoundError:
            return JSONResponse({"detail": "not found"}, status_code=404)
        return _file_response(
            FileResponse,
            fd,
            datasets.root / dataset / entry.path,
            st,
            headers={
                "ETag": '"' + entry.hash.partition(":")[2] + '"',
                "Last-Modified": email.utils.formatdate(st.st_mtime, usegmt=True),
                "X-Hashsync-Hash": entry.hash,
            },
        )

    return app


def _file_response(
    base: Any, fd: int, path: Path, st: os.stat_result, headers: dict[str, str]
) -> Any:
    """Starlette's FileResponse (Range, If-Range, 416, HEAD) over an already opened file.

    It is served through ``/proc/self/fd`` (never the path again), so a name swapped for a link
    after the checks changes nothing; the descriptor is closed once the response is done.
    """
    via_fd = os.path.isdir("/proc/self/fd")

    class _Response(base):  # type: ignore[misc, valid-type]
        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            try:
                await super().__call__(scope, receive, send)
            finally:
                os.close(fd)

    return _Response(
        f"/proc/self/fd/{fd}" if via_fd else path,
        stat_result=st,
        media_type="application/octet-stream",
        headers=headers,
    )


def _bundle_paths(raw: bytes) -> list[str] | None:
    """The paths of a bundle request, or None if the body is not what it must be."""
    if len(raw) > BUNDLE_MAX_BODY:
        return None
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    paths = value.get("paths") if isinstance(value, dict) else None
    if (
        not isinstance(paths, list)
        or len(paths) > BUNDLE_MAX_FILES
        or not all(isinstance(p, str) for p in paths)
    ):
        return None
    return paths


def _bundle_frames(datasets: DatasetRoot, dataset: str, paths: list[str]) -> Iterator[bytes]:
    """The bundle answer in pieces of about 1 MiB.

    Starlette runs a synchronous iterator one step per thread hop, so frames are gathered
    rather than yielded one by one.
    """
    pending: list[bytes] = []
    size = 0
    for frame in _frames(datasets, dataset, paths):
        pending.append(frame)
        size += len(frame)
        if size >= 1024 * 1024:
            yield b"".join(pending)
            pending, size = [], 0
    if pending:
        yield b"".join(pending)


def _frames(datasets: DatasetRoot, dataset: str, paths: list[str]) -> Iterator[bytes]:
    for path in paths:
        try:
            fd, st, entry = datasets.open_file(dataset, path)
        except FileNotFoundError:
            yield _frame({"path": path, "error": "not found"})
            continue
        try:
            if st.st_size > BUNDLE_MAX_FILE_BYTES:
                yield _frame({"path": path, "error": "larger than 1 MiB: fetch it from /file"})
                continue
            # One read of what the file holds now; a file rewritten since it was hashed does
            # not match the hash sent, and the client refuses it.
            data = os.pread(fd, st.st_size + 1, 0)
        finally:
            os.close(fd)
        if len(data) != entry.size:
            yield _frame({"path": path, "error": "changed while being read"})
            continue
        yield _frame({"path": path, "size": len(data), "hash": entry.hash}) + data


def _frame(header: dict[str, Any]) -> bytes:
    return json.dumps(header, separators=(",", ":")).encode() + b"\n"


def _etags(header: str) -> list[str]:
    return [t.strip().removeprefix("W/") for t in header.split(",") if t.strip()]


def _version() -> str:
    import hashsync

    return hashsync.__version__
