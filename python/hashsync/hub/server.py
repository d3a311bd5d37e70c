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
- ``GET /health`` and ``/docs`` (a page of its own that loads nothing from elsewhere):
  without authentication.

Every other endpoint wants ``Authorization: Bearer <key>``, compared in constant time with each
configured key, before anything else is answered. Files are found through the dataset's
manifest, never by joining the request's path onto ROOT: ``..``, absolute paths,
percent-encoded or double-encoded variants, backslashes, hidden paths (unless ``dotfiles``) and
symbolic links all name no manifest entry and get 404; every refusal is logged. Manifests come
from a confined scan (no link is followed, even one swapped in while the scan runs).

Limits, against clients without a key: a request's line and headers must arrive within
:data:`HEADER_TIMEOUT` seconds, an idle kept-alive connection is closed after
:data:`KEEP_ALIVE_TIMEOUT`, and past ``max_connections`` open connections a new one closes the
one that has waited longest without sending a request (:func:`uvicorn_config`). With a key:
a ``/bundle`` body of at most 4 MiB (413, checked from Content-Length and while reading) sent
within :data:`BODY_TIMEOUT`; one manifest per dataset version, built once and shared; at most
:data:`RESCANS_PER_REQUEST` rescans per request.

Needs the ``hub`` extra (FastAPI, uvicorn).
"""

# No "from __future__ import annotations": FastAPI reads the endpoints' annotations at runtime,
# and Request is imported inside create_app (the server's dependencies are an extra).

import asyncio
import concurrent.futures
import email.utils
import errno
import gzip
import hmac
import html
import json
import logging
import os
import re
import stat
import threading
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from hashsync._fdpath import file_path
from hashsync.atomic import is_internal_key
from hashsync.errors import InvalidArgument, missing_extra
from hashsync.hub._manifest import (
    ALGORITHM,
    BUNDLE_MAX_BODY,
    BUNDLE_MAX_FILE_BYTES,
    BUNDLE_MAX_FILES,
    ManifestEntry,
    is_hidden,
    manifest_body,
    manifest_etag,
    scan_listing,
    valid_dataset_name,
)
from hashsync.storage.base import validate_key

__all__ = ["DatasetRoot", "create_app", "uvicorn_config"]

log = logging.getLogger("hashsync.hub")

#: Seconds a client may take to send a request's line and headers (from connecting, or from
#: the previous response on a kept-alive connection).
HEADER_TIMEOUT = 10.0
#: Seconds an idle kept-alive connection waits for its next request.
KEEP_ALIVE_TIMEOUT = 5
#: Seconds a client may take to send a ``/bundle`` body.
BODY_TIMEOUT = 30.0
#: Manifests larger than this are sent in pieces of this size.
STREAM_CHUNK = 256 * 1024
#: Rescans one request may cause (files added or edited since the last scan).
RESCANS_PER_REQUEST = 2
#: The largest request line and headers (bytes).
MAX_HEADER_BYTES = 16 * 1024
#: What no manifest path may contain: clients refuse it (see the client's manifest check).
_UNSAFE_NAME = re.compile(r"[\x00-\x1f\x7f\\]")


class _Snapshot:
    """One version of a dataset's manifest, shared by every request that gets it.

    Built once per change of the dataset: the JSON body, its gzip and ETag are computed here
    (in a scan thread), and files are looked up in the compact Rust listing, so a manifest of
    200,000 files costs its bytes once, not once per request.
    """

    def __init__(self, listing: Any, errors: list[tuple[str, str]]) -> None:
        self.listing = listing
        # The scan's own errors (an unchanged rescan is recognised by them).
        self.scan_errors = errors
        self.stats: dict[str, int] = dict(listing.stats)
        # Names a client refuses (a control character, a backslash): one such file would
        # make every hashsync client refuse the whole manifest. Left out, counted as
        # unreadable (so no sync deletes on their account), and never served.
        self.unsafe: set[str] = set()

        def public() -> Iterator[dict[str, Any]]:
            for e in listing:
                if _UNSAFE_NAME.search(e.path):
                    self.unsafe.add(e.path)
                    continue
                yield {
                    "path": e.path,
                    "size": e.size,
                    "hash": f"{ALGORITHM}:{e.digest}",
                    "mtime": e.mtime_ns / 1_000_000_000,
                }

        self.body = manifest_body(public())
        self.errors = errors + [
            (path, "a name hashsync clients refuse (a control character or a backslash)")
            for path in sorted(self.unsafe)
        ]
        self.etag = manifest_etag(self.body, len(self.errors))
        # Every hashsync client asks for gzip: compressed once here, not per request.
        self.gzipped = gzip.compress(self.body, compresslevel=5)

    def entry(self, path: str) -> ManifestEntry | None:
        """The manifest entry for ``path`` (a binary search), or None."""
        e = self.listing.find(path)
        if e is None or e.digest is None or e.path in self.unsafe:
            return None
        return ManifestEntry(e.path, e.size, e.mtime_ns, f"{ALGORITHM}:{e.digest}")


class _Flights:
    """Dataset scans, one at a time per dataset, shared by everyone who asks meanwhile.

    A request that arrives while a scan runs waits for the next one (which starts when the
    running one ends), so it sees every change made before it arrived; all requests arriving
    during one scan share that next scan. Scans run on a small pool of their own, so waiting
    requests hold no thread of the server's pool.
    """

    def __init__(self, scan: Any, workers: int) -> None:
        self._scan = scan
        self._pool = concurrent.futures.ThreadPoolExecutor(workers, "hashsync-hub-scan")
        self._lock = threading.Lock()
        self._running: dict[str, concurrent.futures.Future[Any]] = {}
        self._queued: dict[str, concurrent.futures.Future[Any]] = {}

    def request(self, dataset: str) -> concurrent.futures.Future[Any]:
        """A future of a scan of ``dataset`` that starts after this call."""
        with self._lock:
            if dataset not in self._running:
                future: concurrent.futures.Future[Any] = concurrent.futures.Future()
                self._running[dataset] = future
                self._pool.submit(self._run, dataset, future)
                return future
            queued = self._queued.get(dataset)
            if queued is None:
                queued = self._queued[dataset] = concurrent.futures.Future()
            return queued

    def _run(self, dataset: str, future: concurrent.futures.Future[Any]) -> None:
        try:
            future.set_result(self._scan(dataset))
        except BaseException as exc:  # delivered to every waiter
            future.set_exception(exc)
        finally:
            with self._lock:
                queued = self._queued.pop(dataset, None)
                if queued is None:
                    del self._running[dataset]
                else:
                    self._running[dataset] = queued
                    self._pool.submit(self._run, dataset, queued)


class _Budget:
    """How many rescans one request may still cause."""

    def __init__(self, rescans: int) -> None:
        self.rescans = rescans
        self._lock = threading.Lock()

    def take(self) -> bool:
        with self._lock:
            if self.rescans <= 0:
                return False
            self.rescans -= 1
            return True


class DatasetRoot:
    """The datasets under one directory, with their manifests kept current.

    A manifest request rescans the dataset (cheap: the hash state cache re-reads only changed
    files; concurrent requests share one scan) and so does a file request that finds its file
    changed, or added, since the last scan (at most :data:`RESCANS_PER_REQUEST` per request).
    An unchanged scan keeps the manifest it had, body and gzip included.

    Args:
        root: The directory whose subdirectories are the datasets.
        state_dir: Where the hash state cache lives (default ``$HASHSYNC_CACHE_DIR``).
        dotfiles: Serve hidden files and directories (``.env``, ``.git/``), left out by default.
        scan_workers: Datasets scanned at the same time.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        state_dir: str | None = None,
        dotfiles: bool = False,
        scan_workers: int = 2,
    ) -> None:
        self.root = Path(root).absolute()
        if not self.root.is_dir():
            raise InvalidArgument(f"dataset root {self.root} is not a directory")
        self.state_dir = state_dir
        self.dotfiles = dotfiles
        self._snapshots: dict[str, _Snapshot] = {}
        self._flights = _Flights(self._scan, scan_workers)
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

    def _scan(self, dataset: str) -> _Snapshot | None:
        directory = self._directory(dataset)
        if directory is None:
            with self._guard:
                self._snapshots.pop(dataset, None)
            return None
        try:
            listing = scan_listing(directory, state_dir=self.state_dir, dotfiles=self.dotfiles)
        except (InvalidArgument, OSError) as exc:  # gone, or replaced by a link since the check
            log.warning("dataset %r cannot be scanned: %s", dataset, exc)
            return None
        errors = list(listing.errors)
        for path, why in errors:
            log.warning("dataset %r: %s left out of the manifest: %s", dataset, path, why)
        with self._guard:
            previous = self._snapshots.get(dataset)
        if (
            previous is not None
            and previous.scan_errors == errors
            and previous.listing.same_entries(listing)
        ):
            return previous
        snapshot = _Snapshot(listing, errors)
        for path in sorted(snapshot.unsafe):
            log.warning(
                "dataset %r: %r left out of the manifest: a name clients refuse", dataset, path
            )
        with self._guard:
            self._snapshots[dataset] = snapshot
        return snapshot

    def _future(self, dataset: str, fresh: bool) -> tuple[_Snapshot | None, Any]:
        if self._directory(dataset) is None:
            return None, None
        if not fresh:
            with self._guard:
                held = self._snapshots.get(dataset)
            if held is not None:
                return held, None
        return None, self._flights.request(dataset)

    def snapshot(self, dataset: str, *, fresh: bool = True) -> _Snapshot | None:
        """The dataset's manifest (rescanned unless ``fresh`` is False), or None if unknown."""
        held, future = self._future(dataset, fresh)
        return held if future is None else future.result()

    async def snapshot_async(self, dataset: str, *, fresh: bool = True) -> _Snapshot | None:
        """:meth:`snapshot` for the event loop: waiting holds no thread."""
        held, future = self._future(dataset, fresh)
        if future is None:
            return held
        # Shielded: a client that goes away must not cancel the scan others wait for.
        return await asyncio.shield(asyncio.wrap_future(future))

    def open_file(
        self, dataset: str, path: str, budget: _Budget | None = None
    ) -> tuple[int, os.stat_result, ManifestEntry]:
        """Open a dataset file by its manifest path: ``(fd, stat, current entry)``.

        ``budget`` bounds the rescans this may cause (default: :data:`RESCANS_PER_REQUEST`).

        Raises:
            FileNotFoundError: No such dataset, no such manifest entry, or the file is a link
                or otherwise not the regular file the manifest names (logged as a refusal).
        """
        budget = budget or _Budget(RESCANS_PER_REQUEST)
        manifest = self.snapshot(dataset, fresh=False)
        if manifest is None:
            raise _refused(dataset, path, "no such dataset")
        entry = manifest.entry(path)
        if entry is None and self._appeared(dataset, path) and budget.take():
            # Added since the last scan: rescan once (unchanged files are not re-read).
            manifest = self.snapshot(dataset) or manifest
            entry = manifest.entry(path)
            if entry is None:
                self._remember_unservable(dataset, path)
        if entry is None:
            raise _refused(dataset, path, "not in the dataset's manifest")
        fd = self._open_entry(dataset, entry.path)
        st = os.fstat(fd)
        if (st.st_size, st.st_mtime_ns) != (entry.size, entry.mtime_ns):
            # Edited since the last scan: rescan (only this file is re-read) for its new hash.
            os.close(fd)
            if not budget.take():
                raise _refused(dataset, path, "changed since the last scan (rescans spent)")
            manifest = self.snapshot(dataset) or manifest
            entry = manifest.entry(path)
            if entry is None:
                raise _refused(dataset, path, "no longer in the dataset")
            fd = self._open_entry(dataset, entry.path)
            st = os.fstat(fd)
        return fd, st, entry

    def _appeared(self, dataset: str, path: str) -> bool:
        """Whether ``path`` names a servable file the last scan did not see.

        Only a valid key that is not hashsync's own temporary (nor hidden, unless dotfiles are
        served), found as a regular file by the same link-refusing walk that serves files, and
        not already rescanned for in vain (unreadable, say): a request for a name that does
        not exist never costs a scan.
        """
        try:
            validate_key(path)
        except InvalidArgument:
            return False
        if is_internal_key(path) or (not self.dotfiles and is_hidden(path)):
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
    dotfiles: bool = False,
) -> Any:
    """Build the hub's FastAPI application.

    Args:
        root: The dataset root.
        api_keys: Accepted Bearer keys (any of them).
        no_auth: Serve without keys (only sensible on 127.0.0.1; :func:`serve` enforces that).
        state_dir: Where the hash state cache lives.
        dotfiles: Serve hidden files and directories (``.env``, ``.git/``) of the datasets;
            by default they are in no manifest and never served.

    Raises:
        InvalidArgument: No keys and not ``no_auth``, or ``root`` is not a directory.
        MissingDependency: FastAPI is not installed.
    """
    try:
        import anyio
        from fastapi import Depends, FastAPI, HTTPException, Request
        from fastapi.exception_handlers import http_exception_handler
        from fastapi.responses import (
            FileResponse,
            HTMLResponse,
            JSONResponse,
            Response,
            StreamingResponse,
        )
        from starlette.concurrency import run_in_threadpool
        from starlette.exceptions import HTTPException as StarletteHTTPException
    except ImportError:
        raise missing_extra("the hub server", "hub") from None

    keys = [k.encode() for k in api_keys if k]
    if not keys and not no_auth:
        raise InvalidArgument("the hub server needs an API key (HASHSYNC_HUB_API_KEY) or no_auth")
    datasets = DatasetRoot(root, state_dir=state_dir, dotfiles=dotfiles)
    app = FastAPI(
        title="hashsync dataset hub",
        description="Datasets shared by content hash (seed 002's DSX Hub API).",
        version=_version(),
        # FastAPI's pages load their scripts from a CDN: /docs is a page of our own instead.
        docs_url=None,
        redoc_url=None,
        # A redirect to the path with a slash would answer before the key is checked.
        redirect_slashes=False,
    )

    async def quiet_descriptor_exhaustion() -> None:
        asyncio.get_running_loop().set_exception_handler(descriptor_exhaustion_handler())

    # Runs in the server's loop before it listens.
    app.router.on_startup.append(quiet_descriptor_exhaustion)

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
    async def health() -> dict[str, str]:
        """Liveness check (no authentication)."""
        return {"status": "ok"}

    @app.get("/docs", include_in_schema=False)
    async def docs() -> Response:
        """The API, described by a page that loads nothing from anywhere."""
        return HTMLResponse(
            _docs_page(app.openapi()),
            headers={
                "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'",
                "X-Content-Type-Options": "nosniff",
            },
        )

    @app.get("/datasets", dependencies=[Depends(authorized)])
    def list_datasets() -> list[str]:
        """The dataset names."""
        return datasets.datasets()

    @app.get("/manifest/{dataset}", dependencies=[Depends(authorized)])
    async def manifest(dataset: str, request: Request) -> Response:
        """The dataset's files: ``[{"path", "size", "hash": "sha256:<hex>", "mtime"}]``."""
        m = await datasets.snapshot_async(dataset)
        if m is None:
            _refused(dataset, "", "no such dataset")
            raise HTTPException(status_code=404, detail="no such dataset")
        headers = {"ETag": m.etag, "Vary": "Accept-Encoding", "Cache-Control": "no-cache"}
        if m.errors:
            # Files left out because they could not be read: a client must not take their
            # absence for a deletion (the paths are in the server's log).
            headers["X-Hashsync-Unreadable"] = str(len(m.errors))
        if m.etag in _etags(request.headers.get("if-none-match", "")):
            return Response(status_code=304, headers=headers)
        body = m.body
        if "gzip" in request.headers.get("accept-encoding", "").lower():
            body = m.gzipped
            headers["Content-Encoding"] = "gzip"
        if len(body) <= STREAM_CHUNK:
            return Response(body, media_type="application/json", headers=headers)
        # Sent in pieces of the shared body, at the pace the client reads: a slow client holds
        # a piece, not a copy of the whole manifest.
        headers["Content-Length"] = str(len(body))
        return StreamingResponse(_pieces(body), media_type="application/json", headers=headers)

    @app.post("/bundle/{dataset}", dependencies=[Depends(authorized)])
    async def bundle(dataset: str, request: Request) -> Response:
        """Many small files in one answer (a hashsync addition; seed clients never ask).

        The body is ``{"paths": [...]}`` (at most 4,096 paths of files up to 1 MiB; the body
        at most 4 MiB, else 413). The answer is, per path in order, one JSON line
        ``{"path", "size", "hash"}`` followed by exactly ``size`` bytes, or
        ``{"path", "error"}`` for a file that cannot be served (refused like ``/file``, or
        larger than 1 MiB: fetch it with ``/file``).
        """
        raw = await _read_body(request, anyio, HTTPException)
        paths = _bundle_paths(raw)
        if paths is None:
            raise HTTPException(
                status_code=400,
                detail=f'expected {{"paths": [...]}}, at most {BUNDLE_MAX_FILES} strings',
            )
        if await datasets.snapshot_async(dataset, fresh=False) is None:
            _refused(dataset, "", "no such dataset")
            raise HTTPException(status_code=404, detail="no such dataset")
        return StreamingResponse(
            _bundle_frames(datasets, dataset, paths, _Budget(RESCANS_PER_REQUEST)),
            media_type="application/x-hashsync-bundle",
        )

    # /file/DATASET without a path: refused after the key is checked, like every /file.
    @app.head("/file/{dataset}", include_in_schema=False, dependencies=[Depends(authorized)])
    @app.get("/file/{dataset}", include_in_schema=False, dependencies=[Depends(authorized)])
    async def file_without_path(dataset: str) -> Response:
        _refused(dataset, "", "no file named")
        return JSONResponse({"detail": "not found"}, status_code=404)

    # HEAD needs the key as much as GET: it tells a file's size and content hash.
    @app.head(
        "/file/{dataset}/{path:path}", include_in_schema=False, dependencies=[Depends(authorized)]
    )
    @app.get("/file/{dataset}/{path:path}", dependencies=[Depends(authorized)])
    async def file(dataset: str, path: str, request: Request) -> Response:
        """A file of the dataset (``Range`` and ``If-Range`` supported)."""
        # The first scan of a dataset is waited for here, holding no thread.
        await datasets.snapshot_async(dataset, fresh=False)
        try:
            fd, st, entry = await run_in_threadpool(datasets.open_file, dataset, path)
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


async def _pieces(body: bytes) -> AsyncIterator[memoryview]:
    view = memoryview(body)
    for start in range(0, len(view), STREAM_CHUNK):
        yield view[start : start + STREAM_CHUNK]


async def _read_body(request: Any, anyio: Any, http_error: Any) -> bytes:
    """A ``/bundle`` request's body, or 413 / 408.

    413 past :data:`BUNDLE_MAX_BODY` (said by the Content-Length, or found while reading), 408
    if it takes longer than :data:`BODY_TIMEOUT`. Either refusal closes the connection, so the
    rest of a big body is never read.
    """
    close = {"Connection": "close"}
    too_big = http_error(413, f"the body is limited to {BUNDLE_MAX_BODY} bytes", headers=close)
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise http_error(400, "bad Content-Length", headers=close)
        if int(declared) > BUNDLE_MAX_BODY:
            raise too_big
    chunks: list[bytes] = []
    size = 0
    try:
        with anyio.fail_after(BODY_TIMEOUT):
            async for chunk in request.stream():
                size += len(chunk)
                if size > BUNDLE_MAX_BODY:
                    raise too_big
                chunks.append(chunk)
    except TimeoutError:
        raise http_error(408, "the body took too long", headers=close) from None
    return b"".join(chunks)


def _file_response(
    base: Any, fd: int, path: Path, st: os.stat_result, headers: dict[str, str]
) -> Any:
    """Starlette's FileResponse (Range, If-Range, 416, HEAD) over an already opened file.

    It is served through ``/proc/self/fd`` or ``/dev/fd`` (never the path again), so a name
    swapped for a link after the checks changes nothing; the descriptor is closed once the
    response is done. (A ``/dev/fd`` path shares the descriptor's offset, which nothing else
    reads.) Where neither exists, the path checked a moment ago is served.
    """
    via_fd = file_path(fd)

    class _Response(base):
        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            try:
                await super().__call__(scope, receive, send)
            finally:
                os.close(fd)

    return _Response(
        via_fd or path,
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
    except (ValueError, RecursionError):  # RecursionError: deeply nested arrays or objects
        return None
    paths = value.get("paths") if isinstance(value, dict) else None
    if (
        not isinstance(paths, list)
        or len(paths) > BUNDLE_MAX_FILES
        or not all(isinstance(p, str) for p in paths)
    ):
        return None
    return paths


def _bundle_frames(
    datasets: DatasetRoot, dataset: str, paths: list[str], budget: _Budget
) -> Iterator[bytes]:
    """The bundle answer in pieces of about 1 MiB.

    Starlette runs a synchronous iterator one step per thread hop, so frames are gathered
    rather than yielded one by one.
    """
    pending: list[bytes] = []
    size = 0
    for frame in _frames(datasets, dataset, paths, budget):
        pending.append(frame)
        size += len(frame)
        if size >= 1024 * 1024:
            yield b"".join(pending)
            pending, size = [], 0
    if pending:
        yield b"".join(pending)


def _frames(
    datasets: DatasetRoot, dataset: str, paths: list[str], budget: _Budget
) -> Iterator[bytes]:
    for path in paths:
        try:
            fd, st, entry = datasets.open_file(dataset, path, budget)
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


def _docs_page(schema: dict[str, Any]) -> str:
    """The API as one HTML page built from the OpenAPI schema: no script, no outside asset."""
    rows = []
    for path, operations in schema.get("paths", {}).items():
        for method, op in operations.items():
            params = ", ".join(
                html.escape(f"{p.get('name')} ({p.get('in')})") for p in op.get("parameters", [])
            )
            auth = "none" if path in ("/health",) else "Bearer key"
            doc = html.escape(op.get("description") or op.get("summary") or "")
            rows.append(
                f"<tr><td><code>{html.escape(method.upper())}</code></td>"
                f"<td><code>{html.escape(path)}</code></td><td>{params}</td>"
                f"<td>{auth}</td><td><pre>{doc}</pre></td></tr>"
            )
    info = schema.get("info", {})
    title = html.escape(f"{info.get('title', '')} {info.get('version', '')}")
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{title}</title><style>body{{font-family:sans-serif;margin:2em}}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.4em;"
        "vertical-align:top;text-align:left}pre{white-space:pre-wrap;margin:0}</style></head>"
        f"<body><h1>{title}</h1><p>{html.escape(info.get('description', ''))}</p>"
        "<p>Every endpoint but <code>/health</code> and this page wants "
        "<code>Authorization: Bearer KEY</code>. The machine-readable description is "
        "<a href='/openapi.json'>/openapi.json</a>.</p>"
        "<table><tr><th>method</th><th>path</th><th>parameters</th><th>key</th>"
        f"<th>description</th></tr>{''.join(rows)}</table></body></html>"
    )


def default_max_connections() -> int:
    """Open connections kept before idle ones are closed.

    A third of the descriptors this process may open (the rest are for the files being served
    and the scans), from 16 to 4096.
    """
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 4096
    return max(16, min(4096, (soft - 64) // 3))


def descriptor_exhaustion_handler(
    every: float = 10.0,
) -> Callable[[asyncio.AbstractEventLoop, dict[str, Any]], None]:
    """A loop exception handler: ``accept`` out of descriptors is a warning line, not a traceback.

    At most one line per ``every`` seconds. A burst of new connections is accepted in one
    batch before any of them is handled, so closing idle connections past
    ``max_connections`` cannot keep up with a flood larger than the descriptors left:
    ``accept`` then fails with EMFILE and asyncio waits a second before accepting again. That
    is the right answer to a flood, and the server stays up, but asyncio's default handler
    logs a traceback per failure, which reads like a crash. Anything else goes to the loop's
    default handler.
    """
    last = [-every]

    def handle(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        if (
            isinstance(exc, OSError)
            and exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
            and "accept" in str(context.get("message", ""))
        ):
            now = loop.time()
            if now - last[0] >= every:
                last[0] = now
                log.warning(
                    "out of descriptors accepting connections (%s): new connections wait; "
                    "raise the limit (ulimit -n) or lower --max-connections",
                    os.strerror(exc.errno),
                )
            return
        loop.default_exception_handler(context)

    return handle


def raise_descriptor_limit() -> int:
    """Raise this process's soft limit of open descriptors to its hard limit.

    At most 65,536, as servers do. Returns the soft limit now in force.
    """
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 65536 if hard == resource.RLIM_INFINITY else min(hard, 65536)
    if soft != resource.RLIM_INFINITY and soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            soft = want
        except (ValueError, OSError):
            pass
    return soft


def uvicorn_config(
    app: Any,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    header_timeout: float = HEADER_TIMEOUT,
    max_connections: int | None = None,
    log_level: str = "warning",
) -> Any:
    """The uvicorn configuration of the hub, with its limits against clients without a key.

    - a request's line and headers must arrive within ``header_timeout`` seconds (slowloris),
      and may take :data:`MAX_HEADER_BYTES`;
    - an idle kept-alive connection is closed after :data:`KEEP_ALIVE_TIMEOUT` seconds;
    - past ``max_connections`` open connections (default :func:`default_max_connections`), a
      new connection closes the one that has waited longest without sending a request, so idle
      sockets cannot use up the descriptors; past twice as many busy ones, requests get 503.

    This is what one process can do; beyond a LAN, run the hub behind a reverse proxy.
    """
    import uvicorn

    if max_connections is None:
        max_connections = default_max_connections()
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        http=_guarded_protocol(header_timeout, max_connections),
        timeout_keep_alive=KEEP_ALIVE_TIMEOUT,
        limit_concurrency=2 * max_connections,
        h11_max_incomplete_event_size=MAX_HEADER_BYTES,
    )


def _guarded_protocol(header_timeout: float, max_connections: int) -> type:
    """The h11 protocol of uvicorn with a deadline for request headers and room for new connections.

    A connection waiting for a request (just opened, or its previous response sent) is in an
    ordered set of waiting connections, with a timer: no complete request line and headers
    within ``header_timeout`` seconds and it is closed. When more than ``max_connections`` are
    open, a new connection closes the waiting one that has waited longest. A connection whose
    request was answered before its body arrived (401, 413) is closed rather than drained.
    """
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    # The connections waiting for a request, longest-waiting first (one server's, touched only
    # by its event loop).
    waiting: OrderedDict[Any, None] = OrderedDict()

    class GuardedH11Protocol(H11Protocol):
        _timer: asyncio.TimerHandle | None = None

        def _waiting(self) -> OrderedDict[Any, None]:
            return waiting

        def _stop_timer(self) -> None:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

        def _wait(self) -> None:
            waiting = self._waiting()
            waiting[self] = None
            waiting.move_to_end(self)
            self._stop_timer()
            self._timer = self.loop.call_later(header_timeout, self._too_slow)

        def _busy(self) -> None:
            self._waiting().pop(self, None)
            self._stop_timer()

        def _too_slow(self) -> None:
            self._timer = None
            if self in self._waiting():
                self._close()

        def _close(self) -> None:
            self._busy()
            if not self.transport.is_closing():
                self.transport.close()

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._wait()
            if len(self.connections) > max_connections:
                for other in self._waiting():
                    if other is not self:
                        other._close()
                        break

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.conn.their_state is not h11.IDLE:
                self._busy()

        def on_response_complete(self) -> None:
            answered_early = self.conn.their_state is h11.SEND_BODY
            super().on_response_complete()
            if answered_early:
                self._close()
            elif not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
                self._wait()

        def connection_lost(self, exc: Exception | None) -> None:
            self._busy()
            super().connection_lost(exc)

    return GuardedH11Protocol
