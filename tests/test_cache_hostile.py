"""Caches against a hostile or careless user: each case once served, lost or leaked data."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from hashsync import errors
from hashsync.atomic import TMP_MARK
from hashsync.cache import (
    ConfigError,
    CopyToLocalCache,
    LocalCache,
    LocalReadOnlyCache,
    SynchronizedRemoteAndLocalCache,
    get_cache,
    local_path,
)
from hashsync.storage import ReadOnlyFilesystemStorage, SimpleLocalStorage
from sync_helpers import s3

SETPRIV = shutil.which("setpriv")


def _file(tmp_path: Path, name: str, data: bytes) -> Path:
    f = tmp_path / name
    f.parent.mkdir(parents=True, exist_ok=True)
    f.write_bytes(data)
    return f


def _debris(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if TMP_MARK in p.name]


def test_a_file_put_from_its_own_entry_path_is_recorded(tmp_path):
    cache = LocalCache(tmp_path / "cache")
    mine = _file(tmp_path / "cache", "mine.txt", b"precious")
    path = cache.put("mine.txt", mine)
    assert cache.get("mine.txt") == path and path.read_bytes() == b"precious"
    cache.prune()
    assert path.read_bytes() == b"precious"


def test_a_tier_that_overlaps_the_cache_directory_is_refused(tmp_path):
    data = tmp_path / "data"
    _file(data, "f.txt", b"source")
    for where in (data, data / "cache", tmp_path):
        with pytest.raises(errors.InvalidArgument, match="overlap"):
            CopyToLocalCache([SimpleLocalStorage(data)], where)
    assert (data / "f.txt").read_bytes() == b"source"


@pytest.mark.parametrize(
    "key",
    [
        ".notes.hashsync-lock",
        "d/.a.hashsync-tmp-0a1b2c3d-99999999-deadbeef",
        "\udcff.txt",
        "n" * 256,
        "d/" * 600 + "x",
    ],
)
def test_keys_the_cache_would_mistake_or_cannot_hold_are_refused(tmp_path, key):
    cache = LocalCache(tmp_path / "cache")
    with pytest.raises(errors.InvalidArgument):
        cache.put(key, _file(tmp_path, "f", b"x"))
    assert cache.stats().files == 0 and not _debris(tmp_path / "cache")


def test_keys_only_named_like_ours_are_cached_and_survive_prune_and_verify(tmp_path):
    lookalikes = ["notes.hashsync-lock", "x.hashsync-tmp-y", "d/a.hashsync-tmp-0a1b2c3d-9-deadbeef"]
    cache = LocalCache(tmp_path / "cache")
    for key in lookalikes:
        cache.put(key, _file(tmp_path, "f", key.encode()))
    cache.prune()
    assert cache.verify()["corrupt"] == []
    assert [cache.get(k).read_bytes() for k in lookalikes] == [k.encode() for k in lookalikes]


def test_verify_keeps_entries_published_while_it_runs(tmp_path):
    cache = LocalCache(tmp_path / "cache")
    cache.put("old", _file(tmp_path, "a", b"a" * 100))
    f = _file(tmp_path, "b", b"b" * 100)
    published = []

    def put_meanwhile(done: int, total: int) -> None:
        if not published:
            published.append(cache.put("precious", f))

    report = cache.verify(progress=put_meanwhile)
    assert published and report["corrupt"] == []
    assert cache.get("precious").read_bytes() == b"b" * 100


def test_an_edited_entry_evicted_takes_its_bytes_with_it(tmp_path):
    cache = LocalCache(tmp_path / "cache", max_size_bytes=10)
    a = cache.put("a", _file(tmp_path, "a", b"12345"))
    os.utime(a, (1, 1))  # the entry no longer matches its index row
    cache.put("b", _file(tmp_path, "b", b"67890"))
    cache.put("c", _file(tmp_path, "c", b"abcde"))
    on_disk = sum(p.stat().st_size for p in (tmp_path / "cache").iterdir() if p.is_file())
    assert cache.stats().bytes <= 10 and on_disk <= 10
    assert not a.exists()


def test_a_key_that_is_a_directory_of_other_keys(tmp_path):
    cache = LocalCache(tmp_path / "cache")
    cache.put("x/y/z", _file(tmp_path, "f", b"deep"))
    with pytest.raises(errors.InvalidArgument, match="directory"):
        cache.put("x/y", _file(tmp_path, "g", b"deep"))  # same content: the dedup path
    with pytest.raises(errors.InvalidArgument, match="directory"):
        cache.put("x/y", _file(tmp_path, "h", b"other"))
    assert cache.get("x/y/z").read_bytes() == b"deep"
    assert not _debris(tmp_path / "cache")


def test_bad_sources_for_put(tmp_path):
    cache = LocalCache(tmp_path / "cache")
    with pytest.raises(errors.NotFound):
        cache.put("k", tmp_path / "missing")
    with pytest.raises(errors.InvalidArgument):
        cache.put("k", tmp_path)
    assert not _debris(tmp_path / "cache")


@pytest.mark.skipif(os.geteuid() != 0 or SETPRIV is None, reason="needs root and setpriv")
def test_unreadable_sources_as_a_user_without_read_override(tmp_path):
    # As root without CAP_DAC_OVERRIDE: an unreadable put source and an unreadable first
    # tier give clear errors, and the next tier is used.
    code = r"""
import sys
from pathlib import Path
from hashsync import errors
from hashsync.cache import CopyToLocalCache, LocalCache
from hashsync.storage import SimpleLocalStorage
t = Path(sys.argv[1])
try:
    LocalCache(t / "c1").put("k", t / "locked" / "f")
except errors.PermissionDenied:
    print("put: PermissionDenied")
c = CopyToLocalCache([SimpleLocalStorage(t / "locked"), SimpleLocalStorage(t / "open")], t / "c2")
print("tier:", c.get("f").read_bytes().decode())
"""
    _file(tmp_path / "locked", "f", b"first")
    _file(tmp_path / "open", "f", b"second")
    (tmp_path / "locked" / "f").chmod(0o000)
    # Sticky, like /tmp: a cache refuses to live below a directory anyone may rename it in.
    os.chmod(tmp_path, 0o1777)
    r = subprocess.run(
        ["setpriv", "--inh-caps=-dac_override,-dac_read_search",
         "--bounding-set=-dac_override,-dac_read_search", "--",
         sys.executable, "-c", code, str(tmp_path)],
        capture_output=True, text=True,
        env={**os.environ, "HASHSYNC_CACHE_DIR": str(tmp_path / "state")},
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("\n")[:2] == ["put: PermissionDenied", "tier: second"]


def test_read_only_cache_never_serves_through_links(tmp_path):
    share = tmp_path / "share"
    _file(share, "ok.txt", b"ok")
    _file(tmp_path, "outside/secret.txt", b"secret")
    os.symlink(tmp_path / "outside" / "secret.txt", share / "pw")
    os.symlink(tmp_path / "outside", share / "etc")
    cache = LocalReadOnlyCache(ReadOnlyFilesystemStorage(share))
    assert cache.get("ok.txt").read_bytes() == b"ok"
    for key in ("pw", "etc/secret.txt"):
        with pytest.raises(errors.UnsafePath):
            cache.get(key)
        with pytest.raises(errors.UnsafePath):
            cache.open(key)


@pytest.mark.s3
def test_synchronized_put_that_fails_locally_never_serves_the_old_copy(s3_server, bucket, tmp_path):
    cache = SynchronizedRemoteAndLocalCache(
        s3(s3_server, bucket), tmp_path / "cache", max_size_bytes=10, max_age=600
    )
    cache.put("k", _file(tmp_path, "v1", b"v1"))
    # Too big for the local budget: refused before anything is uploaded.
    with pytest.raises(errors.InvalidArgument, match="nothing was uploaded"):
        cache.put("k", _file(tmp_path, "big", b"x" * 100))
    assert cache.get("k").read_bytes() == b"v1"
    assert s3_server.client().get_object(Bucket=bucket, Key="k")["Body"].read() == b"v1"
    # A local step failing after the upload drops the old local copy: the next get fetches.
    v2 = _file(tmp_path, "v2", b"v2")
    original = cache._publish

    def failing(*args, **kwargs):
        raise errors.FileChanged("simulated: the file changed while it was copied")

    cache._publish = failing  # type: ignore[method-assign]
    with pytest.raises(errors.FileChanged):
        cache.put("k", v2)
    cache._publish = original  # type: ignore[method-assign]
    assert cache.get("k").read_bytes() == b"v2"


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("caches:\n  c:\n    directory: 123\n", "directory"),
        ("caches:\n  c:\n    endpoint_url: [1]\n", "endpoint_url"),
        ("caches:\n  c:\n    shared: 'false'\n", "shared"),
        ("caches:\n  c:\n    type: local\n    num_workers: abc\n", "num_workers"),
        ("caches:\n  c:\n    type: local\n    max_age: -5\n", "max_age"),
        ("caches:\n  c:\n    storages: [1, 2]\n", "storages"),
        ("caches:\n  ../../escape:\n    type: local\n", "plain name"),
        ("caches:\n  7:\n    type: local\n", "plain name"),
        ("default: [c]\ncaches:\n  c:\n    type: local\n", "default"),
    ],
)
def test_config_values_of_the_wrong_kind_name_their_key(tmp_path, monkeypatch, text, key):
    config = tmp_path / "config.yaml"
    config.write_text(text)
    monkeypatch.setenv("HASHSYNC_CONFIG", str(config))
    monkeypatch.setenv("HASHSYNC_CACHE_DIR", str(tmp_path / "home"))
    with pytest.raises(ConfigError) as caught:
        get_cache("c")
    assert str(config) in str(caught.value) and key in str(caught.value)
    assert not (tmp_path / "escape").exists()


@pytest.mark.parametrize("url", ["", "http://h:99999/x", "http://h:abc/x", "http://[::1/x"])
def test_local_path_of_malformed_urls(tmp_path, monkeypatch, url):
    monkeypatch.setenv("HASHSYNC_CACHE_DIR", str(tmp_path / "home"))
    with pytest.raises(errors.InvalidArgument):
        local_path(url)


@pytest.mark.parametrize("budget", [float("inf"), float("nan"), "10", True])
def test_budget_arguments_of_the_wrong_kind(tmp_path, budget):
    with pytest.raises(errors.InvalidArgument):
        LocalCache(tmp_path / "cache", max_size_bytes=budget)  # type: ignore[arg-type]


@pytest.mark.skipif(os.geteuid() != 0 or SETPRIV is None, reason="needs root and setpriv")
def test_a_shared_cache_is_usable_by_another_member_of_the_group(tmp_path):
    # pytest's own directories are private to root: work where another user can look.
    tmp_path = Path(tempfile.mkdtemp(prefix="hashsync-shared-"))
    os.chmod(tmp_path, 0o755)
    root = tmp_path / "cache"
    cache = LocalCache(root, shared=True)
    cache.put("first", _file(tmp_path, "a", b"from root"))
    cache.close()
    os.chmod(tmp_path, 0o755)
    f = _file(tmp_path, "b", b"from nobody")
    f.chmod(0o644)
    code = (
        "import sys; from hashsync.cache import LocalCache\n"
        "c = LocalCache(sys.argv[1], shared=True)\n"
        "print(c.get('first').read_bytes().decode())\n"
        "c.put('second', sys.argv[2]); print(c.get('second').read_bytes().decode())\n"
    )
    # Another user (nobody) in the cache's group (gid 0 here), without root's powers.
    as_nobody = ["setpriv", "--reuid=65534", "--regid=0", "--clear-groups", "--inh-caps=-all",
                 "--bounding-set=-all", "--", sys.executable, "-c"]  # fmt: skip
    env = {**os.environ, "HASHSYNC_CACHE_DIR": str(tmp_path / "nobody-state")}
    probe = subprocess.run([*as_nobody, "import hashsync.cache"], capture_output=True, env=env)
    if probe.returncode != 0:
        shutil.rmtree(tmp_path, ignore_errors=True)
        pytest.skip("this checkout's interpreter or package cannot be read by another user")
    r = subprocess.run(
        [*as_nobody, code, str(root), str(f)], capture_output=True, text=True, env=env
    )
    shutil.rmtree(tmp_path, ignore_errors=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["from", "root", "from", "nobody"]


def test_an_index_deleted_under_a_live_cache_does_not_split_the_budget(tmp_path):
    cache = LocalCache(tmp_path / "cache", max_size_bytes=30)
    cache.put("a", _file(tmp_path, "s", b"0123456789"))
    index = tmp_path / "cache" / ".hashsync-cache" / "index.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{index}{suffix}").unlink(missing_ok=True)
    other = LocalCache(tmp_path / "cache", max_size_bytes=30)
    for i in range(3):
        cache.put(f"old{i}", _file(tmp_path, f"o{i}", b"%010d" % (i + 10)))
        other.put(f"new{i}", _file(tmp_path, f"n{i}", b"%010d" % (i + 100)))
    assert cache.stats() == other.stats()  # one index, seen by both
    assert cache.stats().bytes <= 30


def test_an_index_truncated_under_a_live_cache_is_a_clear_error(tmp_path):
    first = LocalCache(tmp_path / "cache")
    first.put("a", _file(tmp_path, "s", b"hello"))
    first.close()
    cache = LocalCache(tmp_path / "cache")
    cache.get("a")
    index = tmp_path / "cache" / ".hashsync-cache" / "index.db"
    with open(index, "r+b") as f:
        f.truncate(0)
    with open(index, "r+b") as f:
        f.write(b"\0" * 4096)
    for call in (lambda: cache.get("a"), lambda: cache.put("b", tmp_path / "s")):
        with pytest.raises(errors.HashsyncError):
            call()
    cache.close()
    with pytest.warns(errors.HashsyncWarning, match="damaged"):
        again = LocalCache(tmp_path / "cache")
    assert again.stats().files == 0
