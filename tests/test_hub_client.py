"""The hub client against a real uvicorn hub: seed 002's API, verified, only what changed."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hashsync import errors
from hashsync.hub import DatasetHubClient
from hashsync.hub.client import RESUME_MIN_BYTES
from hub_helpers import KEY, free_port, running_hub
from proxy_helpers import rewriting_proxy

pytest.importorskip("fastapi")


@pytest.fixture
def root(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("HASHSYNC_CACHE_DIR", str(tmp_path / "state"))
    root = tmp_path / "datasets"
    for i in range(30):
        f = root / "mnist" / f"d{i % 3}" / f"{i:03d}.bin"
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(os.urandom(1000 + i * 37))
    (root / "empty").mkdir()
    (root / "empty" / "zero.txt").write_bytes(b"")
    return root


@pytest.fixture
def log() -> list[tuple[str, str]]:
    return []


@pytest.fixture
def hub(root, log):
    # A counting proxy in front of the real server: what the client asked for is asserted.
    with running_hub(root) as url, rewriting_proxy(url, log=log) as proxied:
        yield proxied


def file_requests(log, dataset="mnist"):
    return [p for m, p in log if m == "GET" and p.startswith(f"/file/{dataset}/")]


def test_seed_api(hub, root, tmp_path):
    client = DatasetHubClient(hub, KEY, cache_dir=tmp_path / "cache")
    assert client.list_datasets() == ["empty", "mnist"]
    manifest = client.get_manifest("mnist")
    assert len(manifest) == 30 and (tmp_path / "cache" / ".manifests" / "mnist.json").is_file()
    want = (root / "mnist" / "d1" / "001.bin").read_bytes()
    path = client.get_file("mnist", "d1/001.bin")
    assert path == tmp_path / "cache" / "mnist" / "d1" / "001.bin" and path.read_bytes() == want
    assert client.get_file_bytes("mnist", "d1/001.bin") == want
    assert client.get_file("empty", "zero.txt").read_bytes() == b""
    size = client.get_cache_size("mnist")
    assert size == len(want) + (tmp_path / "cache" / ".manifests" / "mnist.json").stat().st_size
    assert client.clear_cache("mnist") == size and not (tmp_path / "cache" / "mnist").exists()
    assert client.get_cache_size() == client.clear_cache()
    with pytest.raises(ValueError):
        DatasetHubClient(hub, KEY, cache_dir=None).get_file("mnist", "d1/001.bin")


def test_download_dataset_fetches_only_what_changed(hub, root, tmp_path, log):
    client = DatasetHubClient(hub, KEY, cache_dir=tmp_path / "cache")
    paths = client.download_dataset("mnist", progress=False)
    assert len(paths) == 30 and len(file_requests(log)) == 30
    for p in paths:
        rel = p.relative_to(tmp_path / "cache" / "mnist")
        assert p.read_bytes() == (root / "mnist" / rel).read_bytes()
    log.clear()
    client.download_dataset("mnist", progress=False)
    assert file_requests(log) == []  # only the manifest was revalidated
    assert [m for m, p in log if p.startswith("/manifest")] == ["GET"]
    # One file changes on the server: exactly that one is fetched.
    (root / "mnist" / "d2" / "005.bin").write_bytes(b"new content")
    log.clear()
    client.download_dataset("mnist", progress=False)
    assert file_requests(log) == ["/file/mnist/d2/005.bin"]
    assert (tmp_path / "cache" / "mnist" / "d2" / "005.bin").read_bytes() == b"new content"
    # A corrupted kept file is replaced.
    kept = tmp_path / "cache" / "mnist" / "d0" / "003.bin"
    kept.write_bytes(b"X" * kept.stat().st_size)
    log.clear()
    client.download_dataset("mnist", ["d0/003.bin"], progress=False)
    assert file_requests(log) == ["/file/mnist/d0/003.bin"]
    assert kept.read_bytes() == (root / "mnist" / "d0" / "003.bin").read_bytes()
    with pytest.raises(errors.NotFound):
        client.download_dataset("mnist", ["nope.bin"], progress=False)


def test_a_kept_file_still_matching_needs_no_file_request(hub, tmp_path, log):
    client = DatasetHubClient(hub, KEY, cache_dir=tmp_path / "cache")
    client.get_file("mnist", "d0/000.bin")
    log.clear()
    client.get_file("mnist", "d0/000.bin")
    assert file_requests(log) == []


def test_manifest_revalidates_with_etag_and_survives_an_outage(root, tmp_path):
    with running_hub(root) as url:
        client = DatasetHubClient(url, KEY, cache_dir=tmp_path / "cache", timeout=2)
        first = client.get_manifest("mnist")
        assert client.get_manifest("mnist") == first
    with pytest.warns(errors.HashsyncWarning, match="kept manifest"):
        assert client.get_manifest("mnist") == first
    with pytest.raises(errors.StorageUnavailable):
        client.list_datasets()


def test_stream_yields_in_order_verified(hub, root, tmp_path):
    client = DatasetHubClient(hub, KEY, cache_dir=None)
    order = [f"d{i % 3}/{i:03d}.bin" for i in reversed(range(30))]
    got = list(client.stream("mnist", order, prefetch=4))
    assert [p for p, _ in got] == order
    for p, data in got:
        assert data == (root / "mnist" / p).read_bytes()
    assert len(list(client.stream("mnist"))) == 30


def test_errors_map_to_hashsync_errors(hub, root, tmp_path):
    with pytest.raises(errors.PermissionDenied):
        DatasetHubClient(hub, "wrong", cache_dir=tmp_path / "c").list_datasets()
    client = DatasetHubClient(hub, KEY, cache_dir=tmp_path / "cache")
    with pytest.raises(errors.NotFound):
        client.get_manifest("nope")
    with pytest.raises(errors.NotFound):
        client.get_file("mnist", "missing.bin")
    for bad in ("../etc", "a/b", ".hidden", ""):
        with pytest.raises(errors.InvalidArgument):
            client.get_manifest(bad)
    with pytest.raises(errors.InvalidArgument):
        client.get_file("mnist", "../../etc/passwd")
    with pytest.raises(errors.StorageUnavailable):
        DatasetHubClient(f"http://127.0.0.1:{free_port()}", KEY, timeout=2).list_datasets()
    with pytest.raises(errors.InvalidArgument):
        DatasetHubClient("ftp://host/", KEY)


def test_a_corrupted_transfer_is_never_kept(root, tmp_path):
    def flip(path: str, body: bytes) -> bytes:
        return body[:-1] + bytes([body[-1] ^ 1]) if path.startswith("/file/") and body else body

    with running_hub(root) as url, rewriting_proxy(url, flip) as bad:
        client = DatasetHubClient(bad, KEY, cache_dir=tmp_path / "cache")
        with pytest.raises(errors.IntegrityError):
            client.get_file("mnist", "d0/000.bin")
        with pytest.raises(errors.IntegrityError):
            client.get_file_bytes("mnist", "d0/000.bin")
        with pytest.raises(errors.IntegrityError):
            list(client.stream("mnist", ["d0/000.bin"]))
    kept = (tmp_path / "cache").rglob("*")
    left = [p for p in kept if p.is_file() and ".manifests" not in p.parts]
    assert left == []


def test_a_hostile_manifest_cannot_write_outside_the_cache(tmp_path):
    evil = json.dumps([{"path": "../../escape.txt", "size": 1, "hash": "sha256:" + "0" * 64}])

    def rewrite(path: str, body: bytes) -> bytes:
        # The client asks for gzip; the server answers gzip: so does the forgery.
        return gzip.compress(evil.encode()) if path.startswith("/manifest/") else body

    root = tmp_path / "datasets"
    (root / "d").mkdir(parents=True)
    (root / "d" / "f").write_bytes(b"x")
    with running_hub(root) as url, rewriting_proxy(url, rewrite) as bad:
        client = DatasetHubClient(bad, KEY, cache_dir=tmp_path / "cache")
        with pytest.raises(errors.IntegrityError, match="unsafe path"):
            client.download_dataset("d", progress=False)
    assert not (tmp_path / "escape.txt").exists()


def test_large_downloads_resume_with_range_and_if_range(root, tmp_path):
    big = os.urandom(RESUME_MIN_BYTES + 3_000_000)
    (root / "mnist" / "big.bin").write_bytes(big)
    cache = tmp_path / "cache"
    with running_hub(root) as url:
        client = DatasetHubClient(url, KEY, cache_dir=cache)
        digest = hashlib.sha256(big).hexdigest()
        partial = cache / "mnist" / f".big.bin.hashsync-tmp-partial-{digest[:16]}"
        partial.parent.mkdir(parents=True)
        partial.write_bytes(big[:5_000_000])  # what an interrupted run left
        sent: list[int] = []

        def count(path: str, body: bytes) -> bytes:
            if path.startswith("/file/"):
                sent.append(len(body))
            return body

        with rewriting_proxy(url, count) as proxied:
            through = DatasetHubClient(proxied, KEY, cache_dir=cache)
            assert through.get_file("mnist", "big.bin").read_bytes() == big
        assert sent == [len(big) - 5_000_000]  # only the missing part crossed the wire
        assert not partial.exists()
        # A partial of another version (the If-Range fails: a 200 restarts it cleanly).
        (root / "mnist" / "big.bin").write_bytes(big[::-1])
        digest = hashlib.sha256(big[::-1]).hexdigest()
        partial = cache / "mnist" / f".big.bin.hashsync-tmp-partial-{digest[:16]}"
        partial.write_bytes(big[:4_000_000])  # wrong bytes under the new version's name
        with pytest.raises(errors.IntegrityError):
            client.get_file("mnist", "big.bin")  # the kept prefix is not the new content
        assert not partial.exists()
        assert client.get_file("mnist", "big.bin").read_bytes() == big[::-1]


DOWNLOAD_IN_CHILD = """
import sys
from hashsync.hub import DatasetHubClient
DatasetHubClient(sys.argv[1], sys.argv[2], cache_dir=sys.argv[3]).download_dataset(
    "mnist", progress=False)
"""


def test_a_download_killed_with_sigkill_leaves_no_file_under_its_final_name(root, tmp_path):
    (root / "mnist" / "big.bin").write_bytes(os.urandom(RESUME_MIN_BYTES * 3))
    cache = tmp_path / "cache"
    with running_hub(root) as url, rewriting_proxy(url) as slow:
        child = subprocess.Popen(
            [sys.executable, "-c", DOWNLOAD_IN_CHILD, slow, KEY, str(cache)],
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not any(
            ".hashsync-tmp-" in p.name for p in cache.rglob("*")
        ):
            time.sleep(0.01)
        child.send_signal(signal.SIGKILL)
        child.wait(10)
    # Whatever is under a final name is complete and correct.
    for p in (cache / "mnist").rglob("*"):
        if p.is_file() and ".hashsync-" not in p.name:
            assert p.read_bytes() == (root / "mnist" / p.relative_to(cache / "mnist")).read_bytes()
    final = cache / "mnist" / "big.bin"
    with running_hub(root) as url2:
        client = DatasetHubClient(url2, KEY, cache_dir=cache)
        paths = client.download_dataset("mnist", progress=False)
        assert final in paths and final.read_bytes() == (root / "mnist" / "big.bin").read_bytes()


# -- bundles: many small files per request ---------------------------------------------------


@pytest.fixture
def many_small(root) -> dict[str, bytes]:
    files = {f"s/{i:04d}.bin": os.urandom(100 + (i * 53) % 4000) for i in range(300)}
    for rel, data in files.items():
        path = root / "small" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return files


def test_small_files_come_in_bundles(hub, many_small, tmp_path, log):
    client = DatasetHubClient(hub, KEY, cache_dir=tmp_path / "cache", num_workers=2)
    client.download_dataset("small", progress=False)
    for rel, data in many_small.items():
        assert (tmp_path / "cache" / "small" / rel).read_bytes() == data
    posts = [p for m, p in log if m == "POST"]
    # 300 files on 2 workers: bundles of ceil(300 / 8) = 38 files, no per-file request.
    assert posts == ["/bundle/small"] * 8 and file_requests(log, "small") == []
    log.clear()
    streamed = list(client.stream("small", prefetch=3))
    assert [p for p, _ in streamed] == sorted(many_small)
    assert all(data == many_small[p] for p, data in streamed)
    assert [p for m, p in log if m == "POST"] == ["/bundle/small"] * 5  # 64 files each
    leftovers = [p for p in (tmp_path / "cache").rglob("*") if ".hashsync-" in p.name]
    assert leftovers == []


def test_a_corrupted_or_truncated_bundle_keeps_only_verified_files(root, many_small, tmp_path):
    def flip_one(path: str, body: bytes) -> bytes:
        # Flip one byte of the first file's content (right after its header line).
        at = body.index(b"\n") + 1
        return body[:at] + bytes([body[at] ^ 1]) + body[at + 1 :]

    def cut(path: str, body: bytes) -> bytes:
        return body[: len(body) // 2]

    for rewrite, error in ((flip_one, errors.IntegrityError), (cut, errors.IntegrityError)):
        cache = tmp_path / f"cache-{rewrite.__name__}"
        with (
            running_hub(root) as url,
            rewriting_proxy(url, rewrite, rewrite_methods=("POST",)) as bad,
        ):
            client = DatasetHubClient(bad, KEY, cache_dir=cache, num_workers=2)
            with pytest.raises(error):
                client.download_dataset("small", progress=False)
            with pytest.raises(error):
                list(client.stream("small"))
        kept = [p for p in (cache / "small").rglob("*") if p.is_file()]
        assert kept, "the other files of the bundles are kept"
        for p in kept:
            assert p.read_bytes() == many_small[p.relative_to(cache / "small").as_posix()]
        assert len(kept) < len(many_small)
        # The next run against a good hub fetches exactly what is missing.
        with running_hub(root) as url:
            client = DatasetHubClient(url, KEY, cache_dir=cache, num_workers=2)
            client.download_dataset("small", progress=False)
        assert len([p for p in (cache / "small").rglob("*") if p.is_file()]) == len(many_small)


def test_a_hub_without_bundles_gets_one_request_per_file(root, many_small, tmp_path):
    log: list[tuple[str, str]] = []
    with (
        running_hub(root, without=("/bundle/{dataset}",)) as url,
        rewriting_proxy(url, log=log) as proxied,
    ):
        client = DatasetHubClient(proxied, KEY, cache_dir=tmp_path / "cache", num_workers=2)
        client.download_dataset("small", progress=False)
        assert len(list(client.stream("small"))) == 300
    for rel, data in many_small.items():
        assert (tmp_path / "cache" / "small" / rel).read_bytes() == data
    # A refused bundle request per worker at most (they ask at once), then one GET per file
    # (download, then stream).
    posts = [p for m, p in log if m == "POST"]
    assert set(posts) == {"/bundle/small"} and len(posts) <= 2
    assert len(file_requests(log, "small")) == 600


def test_a_file_removed_after_the_manifest_fails_alone(hub, root, many_small, tmp_path):
    client = DatasetHubClient(hub, KEY, cache_dir=tmp_path / "cache", num_workers=2)
    client.get_manifest("small")
    (root / "small" / "s" / "0001.bin").unlink()
    # The kept manifest is revalidated: it now lacks the file, so nothing fails...
    assert len(client.download_dataset("small", progress=False)) == 299
    # ...but a file list naming it does, and only it.
    with pytest.raises(errors.NotFound):
        client.download_dataset("small", ["s/0000.bin", "s/0001.bin"], progress=False)


def test_write_files_atomically_reports_each_failure_and_leaves_no_temporary(tmp_path, monkeypatch):
    from hashsync import atomic

    (tmp_path / "blocker").write_bytes(b"a file where a directory should be")
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "old.bin").write_bytes(b"old")
    (tmp_path / "d" / "keep.bin").write_bytes(b"kept")
    files = [
        (tmp_path / "d" / "a.bin", b"a" * 70_000),
        (tmp_path / "blocker" / "b.bin", b"b"),
        (tmp_path / "d" / "old.bin", b"new"),
        (tmp_path / "e" / "f" / "empty.bin", b""),
        (tmp_path / "d" / "keep.bin", b"not flushed"),
    ]
    real = atomic._fsync_path
    flushed = []

    def fsync(path):
        flushed.append(path)
        if ".keep.bin." in path.name:
            raise OSError(5, "I/O error")  # as a failing disk would
        real(path)

    monkeypatch.setattr(atomic, "_fsync_path", fsync)
    results = atomic.write_files_atomically(files)
    assert [r is None for r in results] == [True, False, True, True, False]
    assert isinstance(results[1], OSError) and results[4].errno == 5
    for final, data in files[0:1] + files[2:4]:
        assert final.read_bytes() == data
    assert (tmp_path / "d" / "keep.bin").read_bytes() == b"kept"  # never replaced unflushed
    assert len(flushed) == 4  # every written temporary was fsynced before its rename
    assert [p.name for p in tmp_path.rglob("*") if ".hashsync-" in p.name] == []
