"""A small HTTP/1.1 server on 127.0.0.1 that answers as a test says: stores that misbehave."""

from __future__ import annotations

import http.client
import http.server
import ssl
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

# What the test's function gives for a request: (status, body, extra headers).
Answer = tuple[int, bytes, dict[str, str]]


class Request:
    """What the server got: method, path with query, headers (names case-insensitive), body."""

    def __init__(
        self, method: str, path: str, headers: http.client.HTTPMessage, body: bytes
    ) -> None:
        self.method = method
        self.path = path
        self.headers = headers
        self.body = body


@contextmanager
def answering(
    answer: Callable[[Request], Answer], *, tls: ssl.SSLContext | None = None
) -> Iterator[str]:
    """Serve every request with ``answer(request)``; yields the server's base URL.

    Keep-alive (HTTP/1.1) as S3 servers do; with ``tls``, https.
    """

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _any(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            got = Request(self.command, self.path, self.headers, self.rfile.read(length))
            status, body, headers = answer(got)
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _any

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    scheme = "https" if tls is not None else "http"
    try:
        yield f"{scheme}://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
