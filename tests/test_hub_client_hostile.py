"""The hub client against a deliberately hostile hub: bounded reads, no trust in headers.

A hub is trusted with the bytes of its datasets, not with the client's memory, disk or API
key: compression bombs, bodies longer than announced, endless bodies, answers that vouch for
themselves, redirects to other origins and malformed manifests are all refused, and nothing
they sent is kept. Every server here is a local test server with bounded loops.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import http.server
import json
import threading
import time
from collections.abc import Callable, Iterator

import pytest

import hashsync
from hashsync import errors
from hashsync.hub import DatasetHubClient
from hashsync.hub.storage import HubStorage
from hashsync.storage import SimpleLocalStorage
from hub_helpers import KEY, running_hub
from sync_helpers import write_tree

MIB = 1024**2
GOOD = b"abc"
GOOD_ENTRY = {"path": "f.bin", "size": 3, "hash": "sha256:" + hashlib.sha256(GOOD).hexdigest()}

Route = Callable[[http.server.BaseHTTPRequestHandler], None]


class Hostile(http.server.ThreadingHTTPServer):
    """A hub that answers each path prefix with a function; counts what it sent."""

    daemon_threads = True

    def __init__(self, routes: dict[str, Route]) -> None:
        self.routes = routes
        self.sent = 0
        self.seen: list[tuple[str, dict[str, str]]] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def handle_one(self) -> None:
                outer.seen.append((self.path, dict(self.headers)))
                for prefix, route in outer.routes.items():
                    if self.path.startswith(prefix):
                        route(self)
                        return
                self.send_error(404)

            do_GET = do_POST = do_HEAD = handle_one

        super().__init__(("127.0.0.1", 0), Handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_port}"


@contextlib.contextmanager
def hostile(routes: dict[str, Route]) -> Iterator[Hostile]:
    server = Hostile(routes)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def answer(body: bytes, *, headers: dict[str, str] | None = None, status: int = 200) -> Route:
    def route(h: http.server.BaseHTTPRequestHandler) -> None:
        h.send_response(status)
        for k, v in {"Content-Length": str(len(body)), **(headers or {})}.items():
            h.send_header(k, v)
        h.end_headers()
        h.wfile.write(body)

    return route


def manifest_of(entries: list[dict]) -> Route:
    return answer(json.dumps(entries).encode(), headers={"ETag": '"m1"'})


def endless(server_sent: list[int], *, limit: int = 2048 * MIB, seconds: float = 30.0) -> Route:
    """A body with no announced length that goes on until the client stops reading (bounded)."""

    def route(h: http.server.BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        h.send_header("Connection", "close")
        h.end_headers()
        chunk = b"\0" * MIB
        deadline = time.monotonic() + seconds
        sent = 0
        try:
            while sent < limit and time.monotonic() < deadline:
                h.wfile.write(chunk)
                sent += len(chunk)
        except OSError:
            pass
        finally:
            server_sent.append(sent)
            h.close_connection = True

    return route


def test_a_compression_bomb_manifest_is_refused_and_not_kept(tmp_path):
    bomb = gzip.compress(b"[" + b" " * (64 * MIB) + b"]", 9)  # about 64 KiB on the wire
    assert len(bomb) < MIB
    routes = {"/manifest/": answer(bomb, headers={"Content-Encoding": "gzip"})}
    with hostile(routes) as hub:
        client = DatasetHubClient(hub.url, KEY, tmp_path / "cache", max_manifest_bytes=4 * MIB)
        with pytest.raises(errors.IntegrityError, match="more than"):
            client.get_manifest("ds")
    assert not (tmp_path / "cache" / ".manifests" / "ds.json").exists()


@pytest.mark.parametrize("how", ["get_file", "get_file_bytes", "stream", "storage"])
def test_a_body_longer_than_the_manifest_says_stops_at_its_size(tmp_path, how):
    sent: list[int] = []
    routes = {"/manifest/": manifest_of([GOOD_ENTRY]), "/file/": endless(sent)}
    started = time.monotonic()
    with hostile(routes) as hub:
        client = DatasetHubClient(hub.url, KEY, tmp_path / "cache")
        with pytest.raises(errors.IntegrityError, match="more than 3 bytes"):
            if how == "get_file":
                client.get_file("ds", "f.bin")
            elif how == "get_file_bytes":
                client.get_file_bytes("ds", "f.bin")
            elif how == "stream":
                list(client.stream("ds"))
            else:
                storage = HubStorage(hub.url, "ds", api_key=KEY)
                storage.copy("f.bin", SimpleLocalStorage(tmp_path / "dest"))
    # The server's writes stop once the client hangs up: socket buffers, not 2 GiB.
    deadline = time.monotonic() + 10
    while not sent and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sent and sent[0] < 64 * MIB, sent
    assert time.monotonic() - started < 20
    kept = [p for p in tmp_path.rglob("*") if p.is_file() and ".manifests" not in p.parts]
    assert kept == []


def test_a_large_file_resume_stops_at_its_size_and_drops_the_partial(tmp_path):
    big = b"x" * (9 * MIB)  # resumable size
    entry = {
        "path": "big.bin",
        "size": len(big),
        "hash": "sha256:" + hashlib.sha256(big).hexdigest(),
    }
    sent: list[int] = []
    routes = {"/manifest/": manifest_of([entry]), "/file/": endless(sent)}
    with hostile(routes) as hub:
        client = DatasetHubClient(hub.url, KEY, tmp_path / "cache")
        with pytest.raises(errors.IntegrityError, match="more than"):
            client.get_file("ds", "big.bin")
    assert [p for p in (tmp_path / "cache" / "ds").rglob("*") if p.is_file()] == []


def test_the_storage_checks_the_manifest_not_the_answers_own_headers(tmp_path):
    forged = b"xyz"  # same size, other content, headers that vouch for it
    headers = {"X-Hashsync-Hash": "sha256:" + hashlib.sha256(forged).hexdigest()}
    headers["ETag"] = '"' + hashlib.sha256(forged).hexdigest() + '"'
    routes = {"/manifest/": manifest_of([GOOD_ENTRY]), "/file/": answer(forged, headers=headers)}
    with hostile(routes) as hub:
        storage = HubStorage(hub.url, "ds", api_key=KEY)
        with pytest.raises(errors.IntegrityError, match="manifest"):
            storage.copy("f.bin", SimpleLocalStorage(tmp_path / "dest"))
        result = hashsync.sync(storage, tmp_path / "synced")
        assert [k for k, _ in result.failed] == ["f.bin"]
    assert not (tmp_path / "dest" / "f.bin").exists()
    assert not (tmp_path / "synced" / "f.bin").exists()


def test_redirects_to_another_origin_are_refused(tmp_path):
    with hostile({"/manifest/": manifest_of([GOOD_ENTRY])}) as elsewhere:
        location = {"Location": f"{elsewhere.url}/manifest/ds"}
        with hostile({"/manifest/": answer(b"", headers=location, status=302)}) as hub:
            client = DatasetHubClient(hub.url, KEY, tmp_path / "cache")
            with pytest.raises(errors.IntegrityError, match="another origin"):
                client.get_manifest("ds")
        assert elsewhere.seen == []  # the key never went there
    # Within the hub's own origin a redirect is followed.
    with hostile({"/manifest/ds": manifest_of([GOOD_ENTRY])}) as hub:
        hub.routes = {
            "/manifest/old": answer(b"", headers={"Location": "/manifest/ds"}, status=307),
            **hub.routes,
        }
        client = DatasetHubClient(hub.url, KEY, None)
        assert client._read(client._request("/manifest/old"), MIB, "t")


@pytest.mark.parametrize(
    "entry",
    [
        {**GOOD_ENTRY, "hash": "sha256:" + "g" * 64},
        {**GOOD_ENTRY, "hash": "sha256:" + "A" * 64},
        {**GOOD_ENTRY, "size": True},
        {**GOOD_ENTRY, "size": -5},
        {**GOOD_ENTRY, "size": 10**30},
        {**GOOD_ENTRY, "size": 3.0},
        {**GOOD_ENTRY, "path": "a\nb.bin"},
        {**GOOD_ENTRY, "path": "../x"},
        {**GOOD_ENTRY, "path": ["f.bin"]},
        "f.bin",
    ],
)
def test_malformed_manifest_entries_are_refused(tmp_path, entry):
    with hostile({"/manifest/": manifest_of([entry])}) as hub:
        client = DatasetHubClient(hub.url, KEY, tmp_path / "cache")
        with pytest.raises(errors.IntegrityError):
            client.get_manifest("ds")
    assert not (tmp_path / "cache" / ".manifests" / "ds.json").exists()


@pytest.mark.parametrize(
    "body", [json.dumps([GOOD_ENTRY, GOOD_ENTRY]).encode(), b"[" * 100_000 + b"]" * 100_000]
)
def test_duplicate_paths_and_deep_nesting_are_refused(tmp_path, body):
    with hostile({"/manifest/": answer(body)}) as hub:
        client = DatasetHubClient(hub.url, KEY, None)
        with pytest.raises(errors.IntegrityError):
            client.get_manifest("ds")


def test_dataset_names_cannot_collide_with_kept_manifests(tmp_path):
    root = tmp_path / "datasets"
    write_tree(root / "ds", {"a.txt": b"a"})
    write_tree(root / "ds_manifest.json", {"b.txt": b"b"})
    with running_hub(root) as url:
        client = DatasetHubClient(url, KEY, tmp_path / "cache")
        for name in ("ds", "ds_manifest.json"):
            client.download_dataset(name, progress=False)
        assert [e["path"] for e in client.get_manifest("ds")] == ["a.txt"]
        assert client.clear_cache("ds") > 0
        assert client.get_file("ds_manifest.json", "b.txt").read_bytes() == b"b"
        assert not (tmp_path / "cache" / "ds").exists()


def test_a_manifest_is_parsed_once_per_version(tmp_path, monkeypatch):
    import hashsync.hub.client as client_module

    root = tmp_path / "datasets"
    write_tree(root / "ds", {f"f{i}.txt": b"%d" % i for i in range(5)})
    parsed = []
    real = client_module._checked_manifest
    monkeypatch.setattr(client_module, "_checked_manifest", lambda *a: parsed.append(1) or real(*a))
    with running_hub(root) as url:
        client = DatasetHubClient(url, KEY, tmp_path / "cache")
        for i in range(5):
            assert client.get_file("ds", f"f{i}.txt").read_bytes() == b"%d" % i
        assert len(parsed) == 1  # then 304s, answered from memory
        write_tree(root / "ds", {"new.txt": b"n"})
        assert client.get_file("ds", "new.txt").read_bytes() == b"n"
        assert len(parsed) == 2
