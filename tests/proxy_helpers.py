"""A real HTTP proxy in front of a real server, for tests of misbehaving stores."""

from __future__ import annotations

import contextlib
import http.client
import http.server
import socket
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator

_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host"}


@contextlib.contextmanager
def rewriting_proxy(
    upstream: str,
    rewrite: Callable[[str, bytes], bytes] | None = None,
    *,
    delay: float | list[float] = 0.0,
    log: list[tuple[str, str]] | None = None,
    rewrite_methods: tuple[str, ...] = ("GET",),
    rewrite_request: Callable[[str, str, dict[str, str], bytes], dict[str, str]] | None = None,
    answer_instead: Callable[[str, str, dict[str, str]], tuple[int, bytes] | None] | None = None,
) -> Iterator[str]:
    """Forward every request to ``upstream``; pass each GET answer through ``rewrite``.

    ``rewrite_methods`` names the methods whose answers are rewritten (``("POST",)`` for the
    hub's bundles).

    The Host header is kept as the client sent it, so SigV4 signatures stay valid. ``delay``
    seconds are added before each request is forwarded (a slow link; a one-element list can be
    changed while the proxy runs); ``rewrite_request(method, path, headers, body)`` returns the
    headers to forward instead of the client's; ``answer_instead(method, path, headers)`` may return
    ``(status, body)`` to answer without forwarding (a store lacking an API); ``log`` collects
    ``(method, path)`` of every request. Yields the proxy's base URL.
    """
    target = urllib.parse.urlsplit(upstream)
    # Open client connections: closed when the proxy goes away, as a stopped server's are
    # (a client's pooled keep-alive connection must not outlive the proxy).
    live: set[socket.socket] = set()
    live_lock = threading.Lock()

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def setup(self) -> None:
            super().setup()
            with live_lock:
                live.add(self.connection)

        def finish(self) -> None:
            with live_lock:
                live.discard(self.connection)
            super().finish()

        def log_message(self, *args):  # quiet
            pass

        def _forward(self) -> None:
            if log is not None:
                log.append((self.command, self.path))
            pause = delay[0] if isinstance(delay, list) else delay
            if pause:
                time.sleep(pause)
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else None
            canned = (
                answer_instead(self.command, self.path, dict(self.headers.items()))
                if answer_instead
                else None
            )
            if canned is not None:
                self.send_response(canned[0])
                self.send_header("Content-Length", str(len(canned[1])))
                self.end_headers()
                self.wfile.write(canned[1])
                return
            conn = http.client.HTTPConnection(target.hostname, target.port, timeout=30)
            headers = {k: v for k, v in self.headers.items() if k.lower() != "connection"}
            if rewrite_request is not None:
                headers = rewrite_request(self.command, self.path, headers, body or b"")
            conn.request(self.command, self.path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            if self.command in rewrite_methods and rewrite is not None:
                data = rewrite(self.path, data)
            self.send_response(resp.status)
            for k, v in resp.getheaders():
                if k.lower() not in _HOP:
                    self.send_header(k, v)
            # A HEAD answer has no body but announces the object's length.
            length = resp.getheader("Content-Length") if self.command == "HEAD" else None
            self.send_header("Content-Length", length or str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)
            conn.close()

        do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward

    class Server(http.server.ThreadingHTTPServer):
        def handle_error(self, request, client_address):
            # A client that drops a connection on purpose (a probe of a large object, a
            # killed process) is not an error of the test.
            if not isinstance(sys.exc_info()[1], ConnectionError):
                super().handle_error(request, client_address)

    server = Server(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        with live_lock:
            for sock in list(live):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)


def ignoring_conditions(access_key: str, secret_key: str):
    """A ``rewrite_request`` that makes a store ignore ``If-None-Match`` / ``If-Match``.

    Some S3-compatible stores accepted the headers and did nothing with them. The headers are
    dropped and the request is signed again (SigV4 covers them), so the real server sees a
    plain, validly signed write.
    """
    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    dropped = {"if-none-match", "if-match", "authorization", "x-amz-date"}

    def rewrite(method: str, path: str, headers: dict[str, str], body: bytes) -> dict[str, str]:
        if not any(k.lower() in ("if-none-match", "if-match") for k in headers):
            return headers
        auth = next(v for k, v in headers.items() if k.lower() == "authorization")
        region = auth.split("Credential=", 1)[1].split("/")[2]
        kept = {k: v for k, v in headers.items() if k.lower() not in dropped}
        host = next(v for k, v in headers.items() if k.lower() == "host")
        request = AWSRequest(method=method, url=f"http://{host}{path}", data=body, headers=kept)
        S3SigV4Auth(Credentials(access_key, secret_key), "s3", region).add_auth(request)
        return dict(request.headers.items())

    return rewrite
