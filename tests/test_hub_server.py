"""The dataset hub server on a real uvicorn: endpoints, auth, ranges, revalidation, traversal."""

from __future__ import annotations

import gzip
import hashlib
import http.client
import json
import logging
import os
import signal
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

import pytest
import urllib3

from hashsync.hub import scan_dataset
from hub_helpers import KEY, free_port, running_hub

pytest.importorskip("fastapi")

AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture
def root(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("HASHSYNC_CACHE_DIR", str(tmp_path / "state"))
    root = tmp_path / "datasets"
    (root / "mnist" / "train").mkdir(parents=True)
    (root / "mnist" / "a.txt").write_bytes(b"hello world")
    (root / "mnist" / "train" / "0.bin").write_bytes(os.urandom(300_000))
    (root / "cifar").mkdir()
    (root / "cifar" / "x.bin").write_bytes(b"x" * 10)
    (root / ".hidden").mkdir()
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret.txt").write_bytes(b"secret")
    os.symlink(tmp_path / "outside" / "secret.txt", root / "mnist" / "leak.txt")
    os.symlink(tmp_path / "outside", root / "mnist" / "leakdir")
    os.symlink(tmp_path / "outside", root / "linked-dataset")
    return root


@pytest.fixture
def hub(root):
    with running_hub(root) as url:
        yield url


def get(
    url: str, path: str, headers: dict[str, str] | None = None, **kw
) -> urllib3.BaseHTTPResponse:
    return urllib3.request("GET", url + path, headers=headers, retries=False, **kw)


def raw_get(url: str, path: str) -> tuple[int, bytes]:
    """A request whose path is sent exactly as given (no client-side normalisation)."""
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    conn.putrequest("GET", path, skip_accept_encoding=True)
    conn.putheader("Authorization", AUTH["Authorization"])
    conn.endheaders()
    resp = conn.getresponse()
    body = resp.read()
    conn.close()
    return resp.status, body


def test_health_and_docs_need_no_key(hub):
    assert get(hub, "/health").json() == {"status": "ok"}
    assert get(hub, "/docs").status == 200
    assert get(hub, "/openapi.json").status == 200


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {KEY}"},
     {"Authorization": KEY}, {"Authorization": f"Bearer {KEY}x"}],
)  # fmt: skip
def test_every_other_endpoint_needs_a_key(hub, headers):
    for path in ("/datasets", "/manifest/mnist", "/file/mnist/a.txt"):
        r = get(hub, path, headers)
        assert r.status == 401 and r.headers["WWW-Authenticate"] == "Bearer", path
    # HEAD too: it would tell a file's existence, size and content hash.
    for path in ("/file/mnist/a.txt", "/manifest/mnist", "/datasets"):
        r = urllib3.request("HEAD", hub + path, headers=headers, retries=False)
        assert r.status in (401, 405), (path, r.status)
        assert "ETag" not in r.headers and "X-Hashsync-Hash" not in r.headers, path


def test_several_keys(root):
    with running_hub(root, keys=("k1", "k2")) as url:
        assert get(url, "/datasets", {"Authorization": "Bearer k2"}).status == 200
        assert get(url, "/datasets", {"Authorization": "Bearer k1"}).status == 200
        assert get(url, "/datasets", {"Authorization": "Bearer k3"}).status == 401


def test_datasets_are_the_plain_subdirectories(hub):
    assert get(hub, "/datasets", AUTH).json() == ["cifar", "mnist"]


def test_manifest_hashes_whole_content_and_revalidates(hub, root):
    r = get(hub, "/manifest/mnist", AUTH)
    assert r.status == 200 and r.headers["Content-Type"] == "application/json"
    manifest = r.json()
    want = {
        "a.txt": b"hello world",
        "train/0.bin": (root / "mnist" / "train" / "0.bin").read_bytes(),
    }
    assert manifest == [
        {
            "path": p,
            "size": len(d),
            "hash": "sha256:" + hashlib.sha256(d).hexdigest(),
            "mtime": (root / "mnist" / p).stat().st_mtime_ns / 1_000_000_000,
        }
        for p, d in sorted(want.items())
    ]  # the symbolic links are not in it
    etag = r.headers["ETag"]
    again = get(hub, "/manifest/mnist", {**AUTH, "If-None-Match": etag})
    assert again.status == 304 and again.data == b""
    zipped = get(hub, "/manifest/mnist", {**AUTH, "Accept-Encoding": "gzip"}, decode_content=False)
    assert zipped.headers["Content-Encoding"] == "gzip"
    assert json.loads(gzip.decompress(zipped.data)) == manifest
    # An edited file changes the manifest and its ETag.
    (root / "mnist" / "a.txt").write_bytes(b"hello there")
    r = get(hub, "/manifest/mnist", {**AUTH, "If-None-Match": etag})
    assert r.status == 200 and r.headers["ETag"] != etag
    assert r.json()[0]["hash"] == "sha256:" + hashlib.sha256(b"hello there").hexdigest()
    assert get(hub, "/manifest/nope", AUTH).status == 404


def test_an_unchanged_dataset_is_not_hashed_again(root, tmp_path):
    # A file whose mtime or ctime is within 2 s of its hashing is hashed again next time (git's
    # racy-timestamp rule), so the files must be older than that.
    time.sleep(2.1)
    first = scan_dataset(root / "mnist")
    assert first.stats["digests_computed"] == 2
    second = scan_dataset(root / "mnist")
    assert second.stats["digests_computed"] == 0 and second.stats["digests_reused"] == 2
    assert second.body() == first.body()


def test_file_headers_range_and_if_range(hub, root):
    data = (root / "mnist" / "train" / "0.bin").read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    r = get(hub, "/file/mnist/train/0.bin", AUTH)
    assert r.status == 200 and r.data == data
    assert r.headers["ETag"] == f'"{digest}"' and r.headers["Accept-Ranges"] == "bytes"
    assert r.headers["Last-Modified"].endswith("GMT")
    part = get(hub, "/file/mnist/train/0.bin", {**AUTH, "Range": "bytes=1000-1999"})
    assert part.status == 206 and part.data == data[1000:2000]
    assert part.headers["Content-Range"] == f"bytes 1000-1999/{len(data)}"
    tail = get(hub, "/file/mnist/train/0.bin", {**AUTH, "Range": "bytes=-10"})
    assert tail.status == 206 and tail.data == data[-10:]
    bad = get(hub, "/file/mnist/train/0.bin", {**AUTH, "Range": f"bytes={len(data)}-"})
    assert bad.status == 416 and bad.headers["Content-Range"] == f"bytes */{len(data)}"
    same = {**AUTH, "Range": "bytes=10-19", "If-Range": f'"{digest}"'}
    assert get(hub, "/file/mnist/train/0.bin", same).status == 206
    other = {**AUTH, "Range": "bytes=10-19", "If-Range": '"0000"'}
    whole = get(hub, "/file/mnist/train/0.bin", other)
    assert whole.status == 200 and whole.data == data
    head = urllib3.request("HEAD", hub + "/file/mnist/train/0.bin", headers=AUTH)
    assert head.status == 200 and int(head.headers["Content-Length"]) == len(data)


def test_an_edited_file_is_served_with_its_new_hash(hub, root):
    assert get(hub, "/file/mnist/a.txt", AUTH).data == b"hello world"
    (root / "mnist" / "a.txt").write_bytes(b"goodbye world!")
    r = get(hub, "/file/mnist/a.txt", AUTH)
    assert r.data == b"goodbye world!"
    assert r.headers["ETag"] == '"' + hashlib.sha256(b"goodbye world!").hexdigest() + '"'


@pytest.mark.parametrize(
    "path",
    [
        "/file/mnist/../cifar/x.bin",
        "/file/mnist/%2e%2e/cifar/x.bin",
        "/file/mnist/%2E%2E/%2E%2E/outside/secret.txt",
        "/file/mnist/%252e%252e/cifar/x.bin",
        "/file/mnist//etc/passwd",
        "/file/mnist/%2Fetc%2Fpasswd",
        "/file/mnist/train%5c0.bin",
        "/file/mnist/train\\0.bin",
        "/file/mnist/leak.txt",
        "/file/mnist/leakdir/secret.txt",
        "/file/linked-dataset/secret.txt",
        "/file/..%2foutside/secret.txt",
        "/file/.hidden/x",
        "/file/mnist/./a.txt",
        "/file/mnist/a.txt%00.png",
        "/manifest/..%2fdatasets",
        "/manifest/linked-dataset",
    ],
)
def test_traversal_and_links_get_404_and_are_logged(hub, path, caplog):
    with caplog.at_level(logging.WARNING, logger="hashsync.hub"):
        status, body = raw_get(hub, path)
    assert status == 404, (path, body)
    assert b"secret" not in body and b"root:" not in body
    assert any("refused" in r.getMessage() for r in caplog.records), path


def test_a_directory_swapped_for_a_link_after_the_scan_is_refused(hub, root, tmp_path):
    assert get(hub, "/file/mnist/train/0.bin", AUTH).status == 200
    (tmp_path / "outside" / "0.bin").write_bytes(b"not yours")
    os.rename(root / "mnist" / "train", tmp_path / "moved")
    os.symlink(tmp_path / "outside", root / "mnist" / "train")
    r = get(hub, "/file/mnist/train/0.bin", AUTH)
    assert r.status == 404 and b"not yours" not in r.data


def test_no_descriptor_leaks(hub):
    fds = len(os.listdir("/proc/self/fd"))
    for _ in range(200):
        assert get(hub, "/file/mnist/a.txt", {**AUTH, "Range": "bytes=0-3"}).status == 206
        assert get(hub, "/file/mnist/nope", AUTH).status == 404
    time.sleep(0.2)
    assert len(os.listdir("/proc/self/fd")) <= fds + 5


def _serve(args, env, cwd):
    return subprocess.Popen(
        [sys.executable, "-m", "hashsync.hub", *args],
        env={**os.environ, **env},
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_healthy(url: str, proc) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        try:
            if urllib3.request("GET", url + "/health", retries=False, timeout=1).status == 200:
                return
        except urllib3.exceptions.HTTPError:
            time.sleep(0.1)
    raise AssertionError("the server did not answer")


def test_serve_command_with_seed_variables_and_a_dotenv_file(root, tmp_path):
    port = free_port()
    (tmp_path / ".env").write_text(f"DSX_DATASET_PATH={root}\nDSX_API_KEY='seed-key'\n")
    proc = _serve([], {"DSX_PORT": str(port)}, tmp_path)
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_healthy(url, proc)
        assert get(url, "/datasets", {"Authorization": "Bearer seed-key"}).json() == [
            "cifar",
            "mnist",
        ]
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=30)
    port = free_port()
    env = {"HASHSYNC_HUB_API_KEY": "a, b", "HASHSYNC_HUB_PORT": str(port)}
    proc = _serve([str(root)], env, tmp_path)
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_healthy(url, proc)
        assert get(url, "/datasets", {"Authorization": "Bearer b"}).status == 200
        assert get(url, "/datasets", {"Authorization": "Bearer seed-key"}).status == 401
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=30)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["ROOT"], "no API key"),
        (["ROOT", "--no-auth", "--host", "0.0.0.0"], "only on 127.0.0.1"),
        ([], "no dataset root"),
        (["/nonexistent/dir", "--no-auth"], "is not a directory"),
    ],
)
def test_serve_refuses_to_start_unsafely(root, tmp_path, args, message):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DSX_", "HASHSYNC_HUB"))}
    r = subprocess.run(
        [sys.executable, "-m", "hashsync.hub", *[str(root) if a == "ROOT" else a for a in args]],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 1 and message in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_no_auth_serves_loopback_only_with_a_warning(root, tmp_path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DSX_", "HASHSYNC_HUB"))}
    proc = subprocess.Popen(
        [sys.executable, "-m", "hashsync.hub", str(root), "--no-auth", "--port", str(port)],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_healthy(url, proc)
        assert get(url, "/datasets").json() == ["cifar", "mnist"]
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    assert "without authentication" in err


def post(url: str, path: str, body: bytes, headers: dict[str, str] | None = None):
    return urllib3.request(
        "POST", url + path, body=body, headers={**AUTH, **(headers or {})}, retries=False
    )


def frames(data: bytes) -> list[tuple[dict, bytes]]:
    out, pos = [], 0
    while pos < len(data):
        end = data.index(b"\n", pos)
        header = json.loads(data[pos:end])
        pos = end + 1
        size = header.get("size", 0)
        out.append((header, data[pos : pos + size]))
        pos += size
    return out


def test_bundle_serves_many_files_in_one_answer(hub, root, caplog):
    (root / "mnist" / "big.bin").write_bytes(b"b" * (1024 * 1024 + 1))
    get(hub, "/manifest/mnist", AUTH)
    paths = ["train/0.bin", "a.txt", "../cifar/x.bin", "leak.txt", "big.bin", "nope", "a.txt"]
    with caplog.at_level(logging.WARNING, logger="hashsync.hub"):
        r = post(hub, "/bundle/mnist", json.dumps({"paths": paths}).encode())
    assert r.status == 200
    got = frames(r.data)
    assert [h["path"] for h, _ in got] == paths
    for header, data in got:
        if header["path"] in ("train/0.bin", "a.txt"):
            want = (root / "mnist" / header["path"]).read_bytes()
            assert data == want and header["size"] == len(want)
            assert header["hash"] == "sha256:" + hashlib.sha256(want).hexdigest()
        else:
            assert "error" in header and data == b"", header
    assert "../cifar/x.bin" in caplog.text and "leak.txt" in caplog.text


@pytest.mark.parametrize(
    "body",
    [b"not json", b"[]", b'{"paths": "a.txt"}', b'{"paths": [1]}',
     json.dumps({"paths": ["a.txt"] * 4097}).encode()],
)  # fmt: skip
def test_bundle_refuses_bad_requests(hub, body):
    assert post(hub, "/bundle/mnist", body).status == 400


def test_bundle_needs_a_key_and_a_dataset(hub):
    body = json.dumps({"paths": ["a.txt"]}).encode()
    assert post(hub, "/bundle/mnist", body, {"Authorization": "Bearer wrong"}).status == 401
    r = post(hub, "/bundle/nope", body)
    assert r.status == 404 and r.json()["detail"] == "no such dataset"
    assert post(hub, "/bundle/linked-dataset", body).status == 404
