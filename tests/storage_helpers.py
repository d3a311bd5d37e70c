"""Helpers for the storage tests: an HTTP file server with Range/ETag, and race workers.

Kept out of the test modules so that multiprocessing's spawn start method can import the
worker functions in child processes.
"""

from __future__ import annotations

import base64
import contextlib
import email.utils
import functools
import os
import re
import socket
import threading
import urllib.parse
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import hashsync

MIB = 1024**2
PART = 5 * MIB


class FileServer(ThreadingHTTPServer):
    """Serves a directory like a static file server (nginx-style), for HTTPStorage tests.

    Attributes:
        drop_after: If set, the next GET of a file sends this many body bytes and then
            drops the connection (once), to test resuming.
        lie_etag: If set, every file is served with this ETag instead of its real one.
        range_requests: The Range headers received, in order.
        basic_auth: If set, ``(user, password)`` that every request must send as HTTP Basic
            authentication, else it gets a 401.
        required_query: If set, query parameters every request must have, else it gets a 403.
        redirect_to: If set, every request is answered with a 302 to this URL + its path.
        requests: ``(method, path with query, Authorization header)`` of every request.
    """

    daemon_threads = True

    def __init__(self, root: Path) -> None:
        handler = functools.partial(_Handler, directory=str(root))
        super().__init__(("127.0.0.1", 0), handler)
        self.root = root
        self.drop_after: int | None = None
        self.lie_etag: str | None = None
        self.range_requests: list[str] = []
        self.basic_auth: tuple[str, str] | None = None
        self.required_query: dict[str, str] | None = None
        self.redirect_to: str | None = None
        self.requests: list[tuple[str, str, str | None]] = []
        self._etags: dict[tuple[str, int, int], str] = {}
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def etag_for(self, path: str, st: os.stat_result) -> str:
        if self.lie_etag is not None:
            return self.lie_etag
        key = (path, st.st_size, st.st_mtime_ns)
        with self._lock:
            if key not in self._etags:
                # Like S3 with 5 MiB parts, so HTTPStorage hashes compare with the others.
                self._etags[key] = hashsync.etag(path, part_size=PART)
            return self._etags[key]

    def take_drop(self) -> int | None:
        with self._lock:
            drop, self.drop_after = self.drop_after, None
            return drop


class _Handler(SimpleHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: FileServer

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_HEAD(self) -> None:
        self._serve(head=True)

    def do_GET(self) -> None:
        self._serve(head=False)

    def _refused(self) -> bool:
        """Answer 302, 401 or 403 if the server's redirect or access rules say so."""
        server = self.server
        with server._lock:
            server.requests.append((self.command, self.path, self.headers.get("Authorization")))
        status, extra = 0, {}
        if server.redirect_to is not None:
            status, extra = 302, {"Location": server.redirect_to + self.path}
        elif server.basic_auth is not None:
            token = base64.b64encode(":".join(server.basic_auth).encode()).decode()
            if self.headers.get("Authorization") != f"Basic {token}":
                status, extra = 401, {"WWW-Authenticate": 'Basic realm="test"'}
        if not status and server.required_query is not None:
            query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(self.path).query))
            if any(query.get(k) != v for k, v in server.required_query.items()):
                status = 403
        if not status:
            return False
        self.send_response(status)
        for name, value in extra.items():
            self.send_header(name, value)
        self.send_header("Content-Length", "0")
        self.end_headers()
        return True

    def _serve(self, *, head: bool) -> None:
        if self._refused():
            return
        path = self.translate_path(self.path)
        if os.path.isdir(path):
            # Directory indexes (and the trailing-slash redirect) as http.server does them.
            super().do_HEAD() if head else super().do_GET()
            return
        try:
            st = os.stat(path)
        except OSError:
            self.send_error(404)
            return
        size = st.st_size
        etag = f'"{self.server.etag_for(path, st)}"'
        modified = email.utils.formatdate(st.st_mtime, usegmt=True)
        start, end, status = 0, size - 1, 200
        requested = self.headers.get("Range")
        if_range = self.headers.get("If-Range")
        if requested:
            self.server.range_requests.append(requested)
        if requested and if_range in (None, etag, modified):
            match = re.fullmatch(r"bytes=(\d*)-(\d*)", requested.strip())
            if match and (match[1] or match[2]):
                if match[1]:
                    start = int(match[1])
                    end = min(int(match[2]), size - 1) if match[2] else size - 1
                else:
                    start = max(0, size - int(match[2]))
                if start >= size or start > end:
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{size}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                status = 206
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(end - start + 1))
        self.send_header("ETag", etag)
        self.send_header("Last-Modified", modified)
        self.send_header("Accept-Ranges", "bytes")
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.end_headers()
        if head:
            return
        drop = self.server.take_drop()
        with open(path, "rb") as fh:
            fh.seek(start)
            remaining = end - start + 1
            sent = 0
            while remaining > 0:
                chunk = fh.read(min(256 * 1024, remaining))
                if not chunk:
                    break
                if drop is not None and sent + len(chunk) > drop:
                    self.wfile.write(chunk[: drop - sent])
                    self.wfile.flush()
                    self.close_connection = True
                    with contextlib.suppress(OSError):
                        self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self.wfile.write(chunk)
                sent += len(chunk)
                remaining -= len(chunk)


@contextlib.contextmanager
def serve_directory(root: Path) -> Iterator[FileServer]:
    """Run a :class:`FileServer` for ``root`` in a thread."""
    server = FileServer(root)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.daemon = True
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


# -- race workers (run in child processes) ---------------------------------------------


def race_content(round_no: int, who: str, size: int) -> bytes:
    """Deterministic content: what ``who`` writes in round ``round_no``."""
    seed = f"{who}-{round_no}-".encode()
    return (seed * (size // len(seed) + 1))[:size]


def race_worker(
    kind: str,
    options: dict,
    env: dict[str, str],
    who: str,
    rounds: int,
    size: int,
    workdir: str,
    barrier,
    results,
) -> None:
    """Race ``copy_from_if_overwriting_hash`` once per round against the other worker.

    Every round the parent writes ``race_content(r, "base", size)``; both workers expect its
    hash (computed locally, so it is the same for both), write their own content and report
    "ok" or "precondition" (or the error) on ``results``.
    """
    os.environ.update(env)
    from hashsync.errors import PreconditionFailed
    from hashsync.storage import S3Storage, SimpleLocalStorage

    if kind == "s3":
        storage = S3Storage(**options)
    else:
        storage = SimpleLocalStorage(**options)
    source = SimpleLocalStorage(Path(workdir) / who, part_size=PART)
    for r in range(rounds):
        source.path("obj").write_bytes(race_content(r, who, size))
        base = source.path("base")
        base.write_bytes(race_content(r, "base", size))
        expected = hashsync.etag(base, part_size=PART)
        barrier.wait(timeout=60)  # the parent has written this round's base object
        try:
            storage.copy_from_if_overwriting_hash("obj", expected, source)
            outcome = "ok"
        except PreconditionFailed:
            outcome = "precondition"
        except Exception as exc:  # reported to the parent, which fails the test
            outcome = f"error: {exc!r}"
        results.put((r, who, outcome))
        barrier.wait(timeout=60)  # the parent has checked this round
