"""The delay proxy (benches/delay-proxy, hashsync.testing.delay_proxy) over real sockets.

It must add latency like a network (a fresh connection's request costs 2 round trips, a
kept-alive one 1), serve hundreds of connections at once, keep a big transfer's bytes and
most of its throughput, and pass on closes and half-closes in both directions.

Timing checks: lower bounds are strict (the proxy sleeps at least the delay), upper bounds
generous and taken on the best of a few samples, so a loaded machine cannot fail them.
"""

from __future__ import annotations

import contextlib
import http.client
import http.server
import os
import queue
import random
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from hashsync.testing.delay_proxy import (
    DelayProxy,
    DelayProxyError,
    _find_cargo,
    find_delay_proxy,
)


def _skip_reason() -> str | None:
    try:
        find_delay_proxy(build=False)
    except DelayProxyError:
        if _find_cargo() is None:
            return "cargo is not available to build the delay proxy (benches/delay-proxy)"
    return None


_SKIP = _skip_reason()
pytestmark = pytest.mark.skipif(_SKIP is not None, reason=_SKIP or "")


@pytest.fixture(scope="module")
def binary() -> str:
    """The delay-proxy binary, built by cargo if it is missing or stale."""
    return find_delay_proxy()


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        body = b"ok"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


class _Server(http.server.ThreadingHTTPServer):
    # socketserver's default backlog of 5 would drop SYNs when hundreds connect at once.
    request_queue_size = 1024
    daemon_threads = True


@pytest.fixture(scope="module")
def http_upstream() -> Iterator[str]:
    """A threaded HTTP/1.1 server answering every GET with ``ok``, kept alive."""
    server = _Server(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


@contextlib.contextmanager
def _raw_server(handle: Callable[[socket.socket], None]) -> Iterator[int]:
    """A TCP server running ``handle(conn)`` in a thread per connection; yields its port."""
    listener = socket.create_server(("127.0.0.1", 0), backlog=128)

    def serve(conn: socket.socket) -> None:
        with conn:
            handle(conn)

    def accept_loop() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept_loop, daemon=True).start()
    try:
        yield listener.getsockname()[1]
    finally:
        # shutdown() wakes the blocked accept() on Linux; close() alone would not.
        with contextlib.suppress(OSError):
            listener.shutdown(socket.SHUT_RDWR)
        listener.close()


def _read_all(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def _get(conn: http.client.HTTPConnection) -> bytes:
    conn.request("GET", "/")
    response = conn.getresponse()
    assert response.status == 200
    return response.read()


def test_fresh_connection_costs_two_round_trips_and_a_kept_alive_one_costs_one(
    binary: str, http_upstream: str
) -> None:
    delay = 0.1
    rtt = 2 * delay
    fresh, kept = [], []
    with DelayProxy(http_upstream, delay_ms=delay * 1000, binary=binary) as proxy:
        assert proxy.url == f"http://127.0.0.1:{proxy.port}"
        for _ in range(2):
            began = time.monotonic()
            conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
            assert _get(conn) == b"ok"
            fresh.append(time.monotonic() - began)
            for _ in range(2):
                began = time.monotonic()
                assert _get(conn) == b"ok"
                kept.append(time.monotonic() - began)
            conn.close()
    assert min(fresh) >= 2 * rtt, fresh
    assert min(kept) >= rtt, kept
    assert min(fresh) < 2 * rtt + 0.15, fresh
    assert min(kept) < rtt + 0.15, kept


def _threads_of(pid: int) -> int | None:
    try:
        return len(os.listdir(f"/proc/{pid}/task"))
    except OSError:
        return None


def test_hundreds_of_connections_are_served_at_once_and_their_threads_end(
    binary: str, http_upstream: str
) -> None:
    count, delay = 300, 0.01
    barrier = threading.Barrier(count + 1)
    answers: list[bytes | BaseException | None] = [None] * count

    def one(i: int) -> None:
        barrier.wait()
        try:
            conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=30)
            answers[i] = _get(conn)
            conn.close()
        except BaseException as exc:
            answers[i] = exc

    with DelayProxy(http_upstream, delay_ms=delay * 1000, binary=binary) as proxy:
        assert proxy.pid is not None
        idle_threads = _threads_of(proxy.pid)  # the accept loop and the shards
        threads = [threading.Thread(target=one, args=(i,)) for i in range(count)]
        for thread in threads:
            thread.start()
        barrier.wait()
        began = time.monotonic()
        for thread in threads:
            thread.join()
        elapsed = time.monotonic() - began
        assert answers == [b"ok"] * count
        # One after another they would take count x 2 round trips = 12 s.
        assert 4 * delay <= elapsed < 2.0, elapsed
        # Every connection is closed, so its four threads end.
        deadline = time.monotonic() + 10
        while (left := _threads_of(proxy.pid)) != idle_threads and time.monotonic() < deadline:
            time.sleep(0.05)
        assert left == idle_threads


_SIZE = 64 << 20


@pytest.fixture(scope="module")
def payload() -> bytes:
    return random.Random(26).randbytes(_SIZE)


def test_a_big_transfer_arrives_intact_at_a_good_fraction_of_direct_throughput(
    binary: str, payload: bytes
) -> None:
    """64 MiB each way, direct and through the proxy; best of 3 of each."""
    uploads: queue.Queue[tuple[bytes, float]] = queue.Queue()

    def handle(conn: socket.socket) -> None:
        command = conn.recv(1)
        if command == b"D":
            conn.sendall(payload)
            conn.shutdown(socket.SHUT_WR)
            _read_all(conn)
        elif command == b"U":
            data, seconds = _receive(conn)
            uploads.put((data, seconds))
            conn.sendall(b"done")

    def _receive(sock: socket.socket) -> tuple[bytes, float]:
        """Read to end of stream; time from the first byte to the end (latency excluded)."""
        buf = bytearray(_SIZE + 1)
        view = memoryview(buf)
        got = sock.recv_into(view)
        first = time.monotonic()
        while n := sock.recv_into(view[got:]):
            got += n
        return bytes(view[:got]), time.monotonic() - first

    def download(port: int) -> float:
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            sock.sendall(b"D")
            data, seconds = _receive(sock)
        assert data == payload
        return seconds

    def upload(port: int) -> float:
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            sock.sendall(b"U")
            sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)
            assert _read_all(sock) == b"done"
        data, seconds = uploads.get(timeout=30)
        assert data == payload
        return seconds

    with (
        _raw_server(handle) as port,
        DelayProxy(f"http://127.0.0.1:{port}", delay_ms=10, binary=binary) as proxy,
    ):
        best = {
            (name, way.__name__): min(way(p) for _ in range(3))
            for name, p in (("direct", port), ("proxied", proxy.port))
            for way in (download, upload)
        }
    for way in ("download", "upload"):
        direct, proxied = best["direct", way], best["proxied", way]
        # Throughput through the proxy >= 1/4 of direct, i.e. time <= 4x.
        assert proxied <= 4 * direct + 0.05, (way, best)


def test_closes_pass_through_both_ways(binary: str) -> None:
    delay = 0.01
    seen: queue.Queue[bytes] = queue.Queue()

    def handle(conn: socket.socket) -> None:
        command = conn.recv(5)
        if command == b"close":  # the upstream closes first
            conn.sendall(b"bye")
        elif command == b"half!":  # the client half-closes, then reads the answer
            seen.put(_read_all(conn))
            conn.sendall(b"pong")
        else:  # the client closes first
            seen.put(command + _read_all(conn))

    with (
        _raw_server(handle) as port,
        DelayProxy(f"http://127.0.0.1:{port}", delay_ms=delay * 1000, binary=binary) as proxy,
    ):
        # The upstream closes: the client reads the last bytes, then end of stream.
        began = time.monotonic()
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
            sock.sendall(b"close")
            assert _read_all(sock) == b"bye"
        assert time.monotonic() - began >= 4 * delay

        # The client closes: the upstream reads the last bytes, then end of stream.
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
            sock.sendall(b"hello, and goodbye")
        assert seen.get(timeout=10) == b"hello, and goodbye"

        # The client half-closes: the upstream sees end of stream and can still answer.
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
            sock.sendall(b"half!ping")
            sock.shutdown(socket.SHUT_WR)
            assert _read_all(sock) == b"pong"
        assert seen.get(timeout=10) == b"ping"


def test_an_unreachable_upstream_closes_the_client(binary: str) -> None:
    with socket.socket() as placeholder:
        placeholder.bind(("127.0.0.1", 0))
        free_port = placeholder.getsockname()[1]
        # Bound but not listening: connections to it are refused.
        with (
            DelayProxy(f"http://127.0.0.1:{free_port}", delay_ms=10, binary=binary) as proxy,
            socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock,
        ):
            sock.sendall(b"anyone there?")
            with contextlib.suppress(ConnectionResetError):
                assert sock.recv(100) == b""


def test_stop_ends_the_process_and_url_needs_a_running_proxy(
    binary: str, http_upstream: str
) -> None:
    proxy = DelayProxy(http_upstream + "/prefix?x=1", delay_ms=1, binary=binary)
    with pytest.raises(DelayProxyError):
        _ = proxy.url
    proxy.start()
    pid = proxy.pid
    assert pid is not None
    assert proxy.url == f"http://127.0.0.1:{proxy.port}/prefix?x=1"
    proxy.stop()
    proxy.stop()
    assert not proxy.is_running
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    with pytest.raises(ValueError):
        DelayProxy("ftp://example.com")
    with pytest.raises(ValueError):
        DelayProxy(http_upstream, delay_ms=-1)
