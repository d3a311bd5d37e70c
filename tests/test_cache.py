"""hashsync.cache: budget and LRU order, never stale, never corrupt, configuration, URLs."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import time
import warnings
from collections import OrderedDict
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hashsync import errors
from hashsync.atomic import TMP_MARK
from hashsync.cache import (
    CopyToLocalCache,
    LocalCache,
    LocalReadOnlyCache,
    SynchronizedRemoteAndLocalCache,
    download_many,
    get_cache,
    local_path,
)
from hashsync.cache._config import ConfigError
from hashsync.storage import ReadOnlyFilesystemStorage, SimpleLocalStorage
from storage_helpers import serve_directory
from sync_helpers import s3


@pytest.fixture(autouse=True)
def _own_cache_dir(tmp_path, monkeypatch):
    # Caches, config and state of each test stay in its own directory.
    monkeypatch.setenv("HASHSYNC_CACHE_DIR", str(tmp_path / "hashsync-home"))
    monkeypatch.setenv("HASHSYNC_CONFIG", str(tmp_path / "config.yaml"))
    for name in ("HASHSYNC_CACHE_SIZE_BYTES", "HASHSYNC_NUM_WORKERS", "HASHSYNC_OFFLINE"):
        monkeypatch.delenv(name, raising=False)


def disk_bytes(root: Path) -> int:
    """Bytes of distinct regular files under a cache root, its index excluded."""
    seen: dict[int, int] = {}
    for dirpath, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d != ".hashsync-cache"]
        for name in files:
            st_ = os.lstat(os.path.join(dirpath, name))
            seen[st_.st_ino] = st_.st_size
    return sum(seen.values())


def tree(root: Path, files: dict[str, bytes]) -> SimpleLocalStorage:
    for key, data in files.items():
        p = root / key
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    return SimpleLocalStorage(root)


# -- budget and LRU ---------------------------------------------------------------------


class _ExactLru(LocalCache):
    _ACCESS_RESOLUTION_NS = 0  # every get reorders, so the model can be exact


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    ops=st.lists(
        st.tuples(st.sampled_from(["put", "get"]), st.integers(0, 7), st.integers(1, 400)),
        min_size=1,
        max_size=40,
    )
)
def test_eviction_follows_a_reference_lru_and_the_bound_holds_after_every_operation(
    tmp_path_factory, ops
):
    root = tmp_path_factory.mktemp("lru")
    budget = 1000
    cache = _ExactLru(root / "cache", max_size_bytes=budget, dedup=False)
    model: OrderedDict[str, int] = OrderedDict()
    for i, (op, k, size) in enumerate(ops):
        key = f"k{k}"
        if op == "put":
            src = root / f"src{i}"
            src.write_bytes(bytes([i % 251]) * size)
            cache.put(key, src)
            model.pop(key, None)
            model[key] = size
            while sum(model.values()) > budget:
                oldest = next(k for k in model if k != key)
                del model[oldest]
        else:
            try:
                cache.get(key)
            except errors.NotFound:
                assert key not in model
            else:
                assert key in model
                model.move_to_end(key)
        assert [e.key for e in cache.entries()] == list(model)
        s = cache.stats()
        assert s.bytes == sum(model.values()) <= budget
        assert disk_bytes(root / "cache") == s.bytes


def test_identical_content_is_stored_once_and_counted_once(tmp_path):
    src = tree(tmp_path / "src", {"a/x.bin": b"same" * 1000, "b/y.bin": b"same" * 1000})
    cache = CopyToLocalCache([src], tmp_path / "cache")
    x, y = cache.get("a/x.bin"), cache.get("b/y.bin")
    assert x == tmp_path / "cache" / "a" / "x.bin"  # entries sit at their key's path
    assert os.stat(x).st_ino == os.stat(y).st_ino
    assert cache.stats().bytes == 4000 == disk_bytes(tmp_path / "cache")
    cache.evict("a/x.bin")
    assert cache.stats().bytes == 4000 and y.read_bytes() == b"same" * 1000
    cache.evict("b/y.bin")
    assert cache.stats().bytes == 0 == disk_bytes(tmp_path / "cache")
    assert not any((tmp_path / "cache" / ".hashsync-cache" / "objects").rglob("*.*"))


def test_putting_the_same_content_again_keeps_one_copy_and_no_debris(tmp_path):
    # rename(2) between two names of one file does nothing: a re-publish of content the key
    # already links to once left the temporary name behind and dropped the shared copy.
    cache = LocalCache(tmp_path / "cache")
    f = tmp_path / "f"
    f.write_bytes(b"same" * 1000)
    for _ in range(3):
        path = cache.put("k.bin", f)
    objects = [p for p in (tmp_path / "cache" / ".hashsync-cache" / "objects").rglob("*")]
    objects = [p for p in objects if p.is_file()]
    assert len(objects) == 1 and objects[0].stat().st_ino == path.stat().st_ino
    assert not [p for p in (tmp_path / "cache").rglob("*") if TMP_MARK in p.name]
    assert cache.stats().bytes == 4000 == disk_bytes(tmp_path / "cache")
    cache.put("other.bin", f)  # a second key still shares the one copy
    assert cache.stats().bytes == 4000 == disk_bytes(tmp_path / "cache")


def test_pinned_entries_are_never_evicted(tmp_path):
    cache = LocalCache(tmp_path / "cache", max_size_bytes=3000)
    for i in range(3):
        f = tmp_path / f"f{i}"
        f.write_bytes(bytes([i]) * 1000)
        cache.put(f"k{i}", f)
    with cache.pin(["k0"]):
        for i in range(3, 6):
            f = tmp_path / f"f{i}"
            f.write_bytes(bytes([i]) * 1000)
            cache.put(f"k{i}", f)
        assert cache.get("k0").read_bytes() == b"\0" * 1000
        assert cache.stats().bytes <= 3000
    f = tmp_path / "f9"
    f.write_bytes(b"9" * 2500)
    cache.put("k9", f)  # the pin is gone: k0 may go now
    with pytest.raises(errors.NotFound):
        cache.get("k0")


def test_a_file_larger_than_the_budget_is_refused_and_nothing_is_evicted(tmp_path):
    cache = LocalCache(tmp_path / "cache", max_size_bytes=100)
    (tmp_path / "small").write_bytes(b"s" * 50)
    cache.put("small", tmp_path / "small")
    (tmp_path / "big").write_bytes(b"b" * 101)
    with pytest.raises(errors.InvalidArgument, match="larger than the cache's budget"):
        cache.put("big", tmp_path / "big")
    assert cache.get("small").read_bytes() == b"s" * 50
    assert not [p for p in (tmp_path / "cache").iterdir() if TMP_MARK in p.name]


def test_size_budget_from_environment_and_argument(tmp_path, monkeypatch):
    monkeypatch.setenv("HASHSYNC_CACHE_SIZE_BYTES", "2KiB")
    assert LocalCache(tmp_path / "a").stats().max_bytes == 2048
    assert LocalCache(tmp_path / "b", max_size_bytes=7).stats().max_bytes == 7
    monkeypatch.setenv("HASHSYNC_CACHE_SIZE_BYTES", "lots")
    with pytest.raises(errors.InvalidArgument, match="HASHSYNC_CACHE_SIZE_BYTES"):
        LocalCache(tmp_path / "c")


# -- never stale, never corrupt -----------------------------------------------------------


def test_a_changed_source_is_fetched_again(tmp_path):
    src = tree(tmp_path / "src", {"k.txt": b"one"})
    cache = CopyToLocalCache([src], tmp_path / "cache")
    assert cache.get("k.txt").read_bytes() == b"one"
    (tmp_path / "src" / "k.txt").write_bytes(b"two")
    assert cache.get("k.txt").read_bytes() == b"two"
    assert cache.stats().misses == 2


def test_max_age_skips_the_check_and_none_never_checks(tmp_path):
    src = tree(tmp_path / "src", {"k.txt": b"one"})
    cache = CopyToLocalCache([src], tmp_path / "cache", max_age=3600)
    cache.get("k.txt")
    (tmp_path / "src" / "k.txt").write_bytes(b"two")
    assert cache.get("k.txt").read_bytes() == b"one"  # within max_age: not asked
    fresh = CopyToLocalCache([src], tmp_path / "cache", max_age=0)
    assert fresh.get("k.txt").read_bytes() == b"two"


def test_a_cached_file_altered_on_disk_is_fetched_again(tmp_path):
    src = tree(tmp_path / "src", {"k.bin": b"good" * 100})
    cache = CopyToLocalCache([src], tmp_path / "cache", max_age=None)
    path = cache.get("k.bin")
    os.chmod(path, 0o644)
    path.write_bytes(b"evil" * 100)
    assert cache.get("k.bin").read_bytes() == b"good" * 100


def test_verify_finds_corruption_that_keeps_size_and_mtime(tmp_path):
    src = tree(tmp_path / "src", {"k.bin": b"good" * 100, "ok.bin": b"fine"})
    cache = CopyToLocalCache([src], tmp_path / "cache", max_age=None)
    path = cache.get("k.bin")
    cache.get("ok.bin")
    st_ = path.stat()
    os.chmod(path, 0o644)
    with open(path, "r+b") as f:
        f.write(b"evil")
    os.utime(path, ns=(st_.st_atime_ns, st_.st_mtime_ns))  # bit rot: nothing but bytes moved
    report = cache.verify()
    assert report == {"checked": 2, "corrupt": ["k.bin"]}
    assert cache.get("k.bin").read_bytes() == b"good" * 100
    assert cache.verify() == {"checked": 2, "corrupt": []}


def test_a_key_gone_at_the_source_is_not_served(tmp_path):
    src = tree(tmp_path / "src", {"k.txt": b"one"})
    cache = CopyToLocalCache([src], tmp_path / "cache")
    path = cache.get("k.txt")
    (tmp_path / "src" / "k.txt").unlink()
    with pytest.raises(errors.NotFound):
        cache.get("k.txt")
    assert not path.exists() and cache.stats().files == 0


def test_offline_serves_only_what_is_cached(tmp_path, monkeypatch):
    src = tree(tmp_path / "src", {"a.txt": b"a", "b.txt": b"b"})
    cache = CopyToLocalCache([src], tmp_path / "cache")
    cache.get("a.txt")
    (tmp_path / "src" / "a.txt").write_bytes(b"changed")
    monkeypatch.setenv("HASHSYNC_OFFLINE", "1")
    assert cache.get("a.txt").read_bytes() == b"a"
    with pytest.raises(errors.NotFound, match="HASHSYNC_OFFLINE"):
        cache.get("b.txt")
    monkeypatch.setenv("HASHSYNC_OFFLINE", "0")
    assert cache.get("a.txt").read_bytes() == b"changed"


@pytest.mark.s3
def test_an_unreachable_remote_serves_the_cached_copy_with_a_warning(s3_server, bucket, tmp_path):
    from proxy_helpers import rewriting_proxy

    s3_server.client().put_object(Bucket=bucket, Key="k.bin", Body=b"cached")
    with rewriting_proxy(s3_server.endpoint_url) as url:
        remote = _s3_at(s3_server, bucket, url)
        cache = CopyToLocalCache([remote], tmp_path / "cache")
        assert cache.get("k.bin").read_bytes() == b"cached"
    # The proxy is gone: the store cannot be reached.
    with pytest.warns(errors.HashsyncWarning, match="serving cached 'k.bin'"):
        assert cache.get("k.bin").read_bytes() == b"cached"
    with pytest.raises(errors.StorageUnavailable):
        cache.get("never-fetched.bin")


def _s3_at(server, bucket, endpoint):
    from hashsync.storage import S3Storage

    return S3Storage(
        bucket,
        endpoint_url=endpoint,
        aws_access_key_id=server.access_key,
        aws_secret_access_key=server.secret_key,
        part_size=5 * 2**20,
        max_attempts=1,
        connect_timeout=2,
        read_timeout=5,
    )


@pytest.mark.s3
def test_s3_tier_download_is_verified_and_a_changed_object_fetched_again(
    s3_server, bucket, tmp_path
):
    client = s3_server.client()
    big = os.urandom(11 * 2**20 + 7)  # multipart, ranged GETs
    client.put_object(Bucket=bucket, Key="d/big.bin", Body=big)
    client.put_object(Bucket=bucket, Key="d/small.txt", Body=b"v1")
    cache = CopyToLocalCache([s3(s3_server, bucket)], tmp_path / "cache")
    paths = cache.get_many(["d/big.bin", "d/small.txt"], progress=False)
    assert paths[0].read_bytes() == big and paths[1].read_bytes() == b"v1"
    client.put_object(Bucket=bucket, Key="d/small.txt", Body=b"v2")
    assert cache.get("d/small.txt").read_bytes() == b"v2"
    assert cache.get_hash("d/small.txt") == client.head_object(Bucket=bucket, Key="d/small.txt")[
        "ETag"
    ].strip('"')


@pytest.mark.s3
def test_a_corrupted_download_is_never_published(s3_server, bucket, tmp_path):
    from proxy_helpers import rewriting_proxy

    s3_server.client().put_object(Bucket=bucket, Key="k.bin", Body=b"A" * 5000)

    def flip(path, body):
        return body[:-1] + b"B" if body else body

    with rewriting_proxy(s3_server.endpoint_url, flip) as url:
        cache = CopyToLocalCache([_s3_at(s3_server, bucket, url)], tmp_path / "cache")
        with pytest.raises(errors.IntegrityError):
            cache.get("k.bin")
    assert not (tmp_path / "cache" / "k.bin").exists()
    assert cache.stats().files == 0
    assert not [p for p in (tmp_path / "cache").iterdir() if TMP_MARK in p.name]


# -- tiers -------------------------------------------------------------------------------


def test_tiers_first_and_newest(tmp_path):
    share = tree(tmp_path / "share", {"k.txt": b"share", "only-share.txt": b"s"})
    other = tree(tmp_path / "other", {"k.txt": b"other", "only-other.txt": b"o"})
    os.utime(tmp_path / "share" / "k.txt", (1_000_000, 1_000_000))
    first = CopyToLocalCache([ReadOnlyFilesystemStorage(share.root), other], tmp_path / "c1")
    assert first.get("k.txt").read_bytes() == b"share"
    assert first.get("only-other.txt").read_bytes() == b"o"
    newest = CopyToLocalCache([share, other], tmp_path / "c2", prefer="newest")
    assert newest.get("k.txt").read_bytes() == b"other"
    assert newest.get_last_modified("k.txt") == other.get_last_modified("k.txt")
    with pytest.raises(errors.NotFound):
        first.get("nowhere.txt")


def test_local_read_only_cache_serves_in_place(tmp_path):
    share = tree(tmp_path / "share", {"d/k.txt": b"x"})
    cache = LocalReadOnlyCache(ReadOnlyFilesystemStorage(share.root))
    assert cache.get("d/k.txt") == tmp_path / "share" / "d" / "k.txt"
    with pytest.raises(errors.NotFound):
        cache.get("missing")
    s = cache.stats()
    assert (s.files, s.bytes, s.max_bytes, s.hits, s.misses) == (1, 1, None, 1, 1)
    with pytest.raises(errors.PermissionDenied):
        cache.clear()
    assert (tmp_path / "share" / "d" / "k.txt").exists()


# -- hostile keys and paths --------------------------------------------------------------


@pytest.mark.parametrize(
    "key", ["../escape", "/etc/passwd", "a/../../b", ".hashsync-cache/index.db", "a\\b", ""]
)
def test_hostile_keys_are_refused(tmp_path, key):
    cache = CopyToLocalCache([tree(tmp_path / "src", {"x": b"x"})], tmp_path / "cache")
    with pytest.raises(errors.InvalidArgument):
        cache.get(key)
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [".hashsync-cache"]


def test_never_writes_through_a_symlink_in_the_cache(tmp_path):
    src = tree(tmp_path / "src", {"sub/k.txt": b"x"})
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "sub").symlink_to(outside)
    cache = CopyToLocalCache([src], tmp_path / "cache")
    with pytest.raises(errors.UnsafePath):
        cache.get("sub/k.txt")
    assert list(outside.iterdir()) == []


def test_cached_files_are_read_only(tmp_path):
    cache = CopyToLocalCache([tree(tmp_path / "src", {"k": b"x"})], tmp_path / "cache")
    assert cache.get("k").stat().st_mode & 0o222 == 0
    with pytest.raises(errors.InvalidArgument, match="read-only"):
        cache.open("k", "w")
    with cache.open("k", "rb") as f:
        assert f.read() == b"x"


# -- synchronized --------------------------------------------------------------------------


@pytest.mark.s3
def test_synchronized_cache_writes_both_and_refreshes_from_the_remote(s3_server, bucket, tmp_path):
    remote = s3(s3_server, bucket, "shared")
    cache = SynchronizedRemoteAndLocalCache(remote, tmp_path / "cache")
    f = tmp_path / "stats.json"
    f.write_text('{"mean": 1}')
    path = cache.put("stats.json", f)
    assert path.read_text() == '{"mean": 1}'
    assert remote.get_hash("stats.json") == cache.get_hash("stats.json")
    # Another machine rewrites it: the next get sees the remote's version.
    other = tmp_path / "other.json"
    other.write_text('{"mean": 2}')
    SynchronizedRemoteAndLocalCache(remote, tmp_path / "cache2").put("stats.json", other)
    assert cache.get("stats.json").read_text() == '{"mean": 2}'
    cache.delete("stats.json")
    assert not remote.exists("stats.json") and cache.stats().files == 0
    with pytest.raises(errors.NotFound):
        cache.delete("stats.json")


# -- configuration -------------------------------------------------------------------------


def test_named_caches_from_the_config_file_and_precedence(tmp_path, monkeypatch):
    share = tree(tmp_path / "share", {"k.txt": b"share"})
    (tmp_path / "config.yaml").write_text(
        "default: data\n"
        "caches:\n"
        "  data:\n"
        f"    storages: [{share.root}]\n"
        f"    directory: {tmp_path / 'datacache'}\n"
        "    max_size: 1MiB\n"
        "    num_workers: 3\n"
        "  scratch:\n"
        "    type: local\n"
    )
    data = get_cache()
    assert isinstance(data, CopyToLocalCache)
    assert data.get("k.txt") == tmp_path / "datacache" / "k.txt"
    assert (data.max_size_bytes, data.num_workers) == (2**20, 3)
    monkeypatch.setenv("HASHSYNC_CACHE_SIZE_BYTES", "5000")
    monkeypatch.setenv("HASHSYNC_NUM_WORKERS", "2")
    data = get_cache("data")  # the environment beats the file
    assert (data.max_size_bytes, data.num_workers) == (5000, 2)
    scratch = get_cache("scratch")
    assert isinstance(scratch, LocalCache)
    assert scratch.storage.root == tmp_path / "hashsync-home" / "caches" / "scratch"
    with pytest.raises(errors.NotFound, match="no cache named 'nope'"):
        get_cache("nope")


@pytest.mark.parametrize(
    ("text", "line", "word"),
    [
        ("caches:\n  a:\n    storages: [/x]\n    max_sise: 1GiB\n", 4, "max_sise"),
        ("caches:\n  a:\n    type: magic\n", 3, "magic"),
        ("default: b\ncaches:\n  a:\n    storages: [/x]\n", 1, "'b'"),
        ("caches:\n  a: [\n", 3, "YAML"),
        ("caches:\n  a:\n    storages: [/x]\n    max_size: huge\n", 4, "max_size"),
    ],
)
def test_an_invalid_config_names_file_line_and_key(tmp_path, text, line, word):
    (tmp_path / "config.yaml").write_text(text)
    with pytest.raises(ConfigError) as info:
        get_cache("a")
    message = str(info.value)
    assert f"{tmp_path / 'config.yaml'}:{line}:" in message and word in message


def test_default_cache_without_config(tmp_path):
    cache = get_cache()
    assert isinstance(cache, LocalCache)
    assert cache.storage.root == tmp_path / "hashsync-home" / "caches" / "default"


# -- pickling ------------------------------------------------------------------------------


def _child_get(cache, key):
    return cache.get(key).read_bytes()


@pytest.mark.s3
def test_caches_and_storages_pickle_into_a_process_pool(s3_server, bucket, s3_env, tmp_path):
    import multiprocessing

    s3_server.client().put_object(Bucket=bucket, Key="p.bin", Body=b"pickled")
    from hashsync.storage import S3Storage

    remote = S3Storage(bucket, endpoint_url=s3_server.endpoint_url)  # credentials from env
    blob = pickle.dumps(remote)
    assert s3_server.secret_key.encode() not in blob
    cache = CopyToLocalCache([remote], tmp_path / "cache")
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        assert pool.starmap(_child_get, [(cache, "p.bin")] * 2) == [b"pickled"] * 2
    with cache:
        assert cache.stats().files == 1


# -- URLs ----------------------------------------------------------------------------------


@pytest.mark.s3
def test_local_path_and_download_many(s3_server, bucket, s3_env, tmp_path):
    client = s3_server.client()
    for i in range(5):
        client.put_object(Bucket=bucket, Key=f"img/{i}.jpg", Body=bytes([i]) * 100)
    p = local_path(f"s3://{bucket}/img/0.jpg")
    assert p.name == "0.jpg" and p.read_bytes() == b"\0" * 100
    assert p == tmp_path / "hashsync-home" / "caches" / "urls" / "s3" / bucket / "img" / "0.jpg"
    mine = tmp_path / "mine.txt"
    assert local_path(str(mine)) == mine  # a local path comes back as is
    assert local_path(f"file://{mine}") == mine
    urls = [f"s3://{bucket}/img/{i}.jpg" for i in range(5)]
    paths = download_many([*urls, str(mine)], progress=False)
    assert [q.read_bytes() for q in paths[:5]] == [bytes([i]) * 100 for i in range(5)]
    assert paths[5] == mine
    with pytest.raises(errors.NotFound):
        local_path(f"s3://{bucket}/img/missing.jpg")
    with pytest.raises(errors.InvalidArgument):
        local_path(f"s3://{bucket}/../../etc/passwd")
    with pytest.raises(errors.InvalidArgument):
        local_path("ftp://example.com/x")


def test_local_path_of_http_urls_keeps_credentials_out_of_the_path(tmp_path):
    root = tmp_path / "site"
    (root / "a").mkdir(parents=True)
    (root / "a" / "f.txt").write_bytes(b"served")
    with serve_directory(root) as server:
        server.basic_auth = ("u", "pw")
        host = server.url.split("://", 1)[1].rstrip("/")
        p = local_path(f"http://u:pw@{host}/a/f.txt?X-Amz-Signature=abc")
        assert p.read_bytes() == b"served"
        assert "pw" not in str(p) and "Signature" not in str(p)
        assert p.name == "f.txt"
        q = local_path(f"http://u:pw@{host}/a/f.txt?X-Amz-Signature=other")
        assert q == p


# -- CLI -----------------------------------------------------------------------------------


def test_cli_cache_commands(tmp_path):
    share = tree(tmp_path / "share", {"a.bin": b"a" * 3000, "b.bin": b"b" * 2000})
    (tmp_path / "config.yaml").write_text(
        f"caches:\n  data:\n    storages: [{share.root}]\n    max_size: 10000\n"
    )
    cache = get_cache("data")
    cache.get_many(["a.bin", "b.bin"], progress=False)
    cache.close()
    env = {**os.environ}

    def run(*args):
        r = subprocess.run(
            [sys.executable, "-m", "hashsync", "cache", *args, "--name", "data"],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
        return r

    r = run("stats", "--json")
    assert r.returncode == 0, r.stderr
    stats = json.loads(r.stdout)
    assert (stats["files"], stats["bytes"], stats["max_bytes"]) == (2, 5000, 10000)
    r = run("ls", "--json")
    assert sorted(row["key"] for row in json.loads(r.stdout)) == ["a.bin", "b.bin"]
    assert "2.9 KiB" in run("ls").stdout
    entry = tmp_path / "hashsync-home" / "caches" / "data" / "a.bin"
    st_ = entry.stat()
    os.chmod(entry, 0o644)
    with open(entry, "r+b") as f:
        f.write(b"X")
    os.utime(entry, ns=(st_.st_atime_ns, st_.st_mtime_ns))
    r = run("verify", "--json")
    assert r.returncode == 2 and json.loads(r.stdout)["corrupt"] == ["a.bin"]
    (entry.parent / "stray.bin").write_bytes(b"?")
    r = run("prune", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["orphans"] == ["stray.bin"]
    r = run("clear")
    assert r.returncode == 0 and "removed 1" in r.stdout
    r = subprocess.run(
        [sys.executable, "-m", "hashsync", "cache", "stats", "--name", "nope"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert r.returncode == 1 and "no cache named 'nope'" in r.stderr and "Traceback" not in r.stderr


def test_warm_get_without_revalidation_is_fast(tmp_path):
    cache = CopyToLocalCache(
        [tree(tmp_path / "src", {"k": b"x"})], tmp_path / "cache", max_age=None
    )
    cache.get("k")
    t0 = time.perf_counter()
    for _ in range(2000):
        cache.get("k")
    per_call = (time.perf_counter() - t0) / 2000
    assert per_call < 500e-6, f"{per_call * 1e6:.0f} us per warm get"  # README: ~20 us quiet


def test_warnings_are_hashsync_warnings(tmp_path):
    # Serving stale-but-unverifiable data is said with HashsyncWarning, which callers filter.
    with warnings.catch_warnings():
        warnings.simplefilter("error", errors.HashsyncWarning)
        cache = CopyToLocalCache([tree(tmp_path / "src", {"k": b"x"})], tmp_path / "cache")
        cache.get("k")
        cache.get("k")


def test_a_damaged_index_is_set_aside_and_nothing_wrong_is_served(tmp_path):
    src = tree(tmp_path / "src", {"k": b"right"})
    cache = CopyToLocalCache([src], tmp_path / "cache")
    cache.get("k")
    cache.close()
    index = tmp_path / "cache" / ".hashsync-cache" / "index.db"
    for suffix in ("-wal", "-shm"):
        Path(str(index) + suffix).unlink(missing_ok=True)
    index.write_bytes(b"garbage" * 1000)
    with pytest.warns(errors.HashsyncWarning, match="damaged"):
        again = CopyToLocalCache([src], tmp_path / "cache")
    assert again.stats().files == 0
    (tmp_path / "src" / "k").write_bytes(b"newer")
    assert again.get("k").read_bytes() == b"newer"
    assert list((tmp_path / "cache" / ".hashsync-cache").glob("index.db.corrupt-*"))


def test_an_unusable_cache_directory_is_a_clear_error(tmp_path):
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(errors.HashsyncError):
        LocalCache(tmp_path / "file" / "cache")
    ro = tmp_path / "ro"
    ro.mkdir()
    os.chmod(ro, 0o555)
    script = (
        "import sys; from hashsync.cache import LocalCache; from hashsync import errors\n"
        f"try:\n    LocalCache({str(ro / 'cache')!r})\n"
        "except errors.PermissionDenied as e:\n    print('denied', e); sys.exit(0)\n"
        "sys.exit(1)\n"
    )
    drop = ["setpriv", "--inh-caps=-dac_override,-dac_read_search",
            "--bounding-set=-dac_override,-dac_read_search", "--"]  # fmt: skip
    r = subprocess.run([*drop, sys.executable, "-c", script], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_shared_caches_are_group_readable_whatever_the_umask(tmp_path):
    src = tree(tmp_path / "src", {"a/b/k.bin": b"x"})
    old = os.umask(0o077)
    try:
        cache = CopyToLocalCache([src], tmp_path / "cache", shared=True)
        path = cache.get("a/b/k.bin")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o444
    for d in (path.parent, path.parent.parent):
        assert d.stat().st_mode & 0o070 == 0o070, oct(d.stat().st_mode)
