"""A counting HTTP pass-through: how many requests and bytes a tool exchanges with a store.

Used by ``hashsync bench --count`` to put figures on "checking content costs no extra
requests". It forwards every request unchanged (the Host header too, so SigV4 signatures stay
valid), over one keep-alive upstream connection per client connection, and counts requests per
method and body bytes in each direction. ``Expect: 100-continue`` is answered by the proxy
itself; chunked request bodies are forwarded chunked.
"""

from __future__ import annotations

import http.client
import http.server
import threading
import urllib.parse
from collections import Counter
from dataclasses import dataclass, field

_HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "te", "upgrade"}


@dataclass
class Counts:
    """What went through the proxy since the last :meth:`CountingProxy.take`."""

    requests: Counter[str] = field(default_factory=Counter)
    bytes_up: int = 0
    bytes_down: int = 0

    @property
    def total_requests(self) -> int:
        """Requests of every method."""
        return sum(self.requests.values())


class CountingProxy:
    """Run a counting pass-through to ``upstream`` (``http://host:port``) on 127.0.0.1.

    Example:
        >>> with CountingProxy("http://127.0.0.1:9000") as proxy:  # doctest: +SKIP
        ...     run_tool(endpoint=proxy.url)
        ...     counts = proxy.take()
    """

    def __init__(self, upstream: str) -> None:
        target = urllib.parse.urlsplit(upstream)
        if target.scheme != "http" or not target.hostname or not target.port:
            raise ValueError(f"upstream must be http://host:port, not {upstream!r}")
        self._counts = Counts()
        self._lock = threading.Lock()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            upstream_conn: http.client.HTTPConnection | None = None

            def log_message(self, *args: object) -> None:
                pass

            def _body(self) -> tuple[bytes, bool]:
                if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
                    chunks = []
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass
                            break
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                    return b"".join(chunks), True
                length = int(self.headers.get("Content-Length") or 0)
                return (self.rfile.read(length) if length else b""), False

            def _forward(self) -> None:
                body, chunked = self._body()
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
                headers.pop("Expect", None)
                if self.upstream_conn is None:
                    self.upstream_conn = http.client.HTTPConnection(
                        target.hostname or "127.0.0.1", target.port, timeout=300
                    )
                conn = self.upstream_conn
                try:
                    if chunked:
                        conn.request(
                            self.command, self.path, body=iter([body]), headers=headers,
                            encode_chunked=True,
                        )  # fmt: skip
                    else:
                        conn.request(self.command, self.path, body=body or None, headers=headers)
                    resp = conn.getresponse()
                    data = resp.read()
                except (OSError, http.client.HTTPException):
                    conn.close()
                    self.upstream_conn = None
                    raise
                with proxy._lock:
                    proxy._counts.requests[self.command] += 1
                    proxy._counts.bytes_up += len(body)
                    proxy._counts.bytes_down += len(data)
                self.send_response(resp.status, resp.reason)
                for k, v in resp.getheaders():
                    if k.lower() not in _HOP and k.lower() != "content-length":
                        self.send_header(k, v)
                length = resp.getheader("Content-Length") if self.command == "HEAD" else None
                self.send_header("Content-Length", length or str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward

        class Server(http.server.ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request: object, client_address: object) -> None:
                pass  # a client dropping a connection is not the proxy's business

        self._server = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def take(self) -> Counts:
        """The counts so far, and start counting afresh."""
        with self._lock:
            counts, self._counts = self._counts, Counts()
        return counts

    def __enter__(self) -> CountingProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
