"""TreeCache against a real S3 server (SeaweedFS): seed 000's scenarios, leases, failures."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import pytest

import hashsync
from hashsync.errors import HashsyncWarning, InvalidArgument, NotFound, WaitTimeout
from hashsync.treecache import TreeCache
from sync_helpers import s3, write_tree

BASE = {
    "data/shard-000.bin": os.urandom(300_000),
    "data/shard-001.bin": os.urandom(6 * 1024**2),  # multipart at 5 MiB parts
    "meta/info.json": b'{"samples": 2}',
    "empty.txt": b"",
}


@pytest.fixture(autouse=True)
def _private_cache_dir(tmp_path, monkeypatch):
    # Hash state and the remembered store checks stay inside the test.
    monkeypatch.setenv("HASHSYNC_CACHE_DIR", str(tmp_path / "hashsync-cache"))


@pytest.fixture
def remote(s3_server, bucket, s3_env) -> str:
    return f"s3://{bucket}/caches"


def make_cache(local: Path, remote: str, **kw) -> TreeCache:
    kw.setdefault("verbose", False)
    kw.setdefault("storage_options", {"part_size": 5 * 1024**2, "max_attempts": 2})
    return TreeCache(local, remote, name="slipcache", key=kw.pop("key", "k1"), **kw)


class Builder:
    """A build function that counts its calls."""

    def __init__(self, files=BASE) -> None:
        self.calls = 0
        self.files = files

    def __call__(self, out: Path) -> None:
        self.calls += 1
        write_tree(out, self.files)


def remote_keys(s3_server, bucket, prefix="caches/slipcache-k1") -> dict[str, str]:
    return {i.key: i.hash for i in s3(s3_server, bucket, prefix).list()}


def without_meta(local: Path, into: Path) -> Path:
    shutil.copytree(local, into, ignore=shutil.ignore_patterns(".hashsync"))
    return into


def test_seed_000_scenarios_in_order(tmp_path, remote, s3_server, bucket):
    local = tmp_path / "cache"
    build = Builder()

    # 1. Remote missing: build locally and upload; the manifest is written last.
    assert make_cache(local, remote).ensure(build) == local
    assert build.calls == 1
    stored = remote_keys(s3_server, bucket)
    assert set(stored) == set(BASE) | {".hashsync/manifest.json"}
    manifest = json.loads((local / ".hashsync/manifest.json").read_bytes())
    assert manifest["key"] == "k1" and manifest["name"] == "slipcache"
    assert set(manifest["files"]) == set(BASE)
    assert manifest["tool"] == f"hashsync {hashsync.__version__}"
    for rel, data in BASE.items():
        assert (local / rel).read_bytes() == data

    # 2. Remote present, local missing: download (verified), no build.
    shutil.rmtree(local)
    assert make_cache(local, remote).ensure(build) == local
    assert build.calls == 1
    for rel, data in BASE.items():
        assert (local / rel).read_bytes() == data
    assert manifest["tree_hash"] == hashsync.tree_hash(without_meta(local, tmp_path / "copy"))

    # 3. Both present: an index added locally reaches the remote.
    (local / "label_index.npy").write_bytes(b"index v1")
    make_cache(local, remote).ensure(build)
    assert "label_index.npy" in remote_keys(s3_server, bucket)
    (local / "normalization_stats.json").write_text('{"mean": 0.5}')
    assert make_cache(local, remote).sync() == (0, 1)
    assert make_cache(local, remote).sync() == (0, 0)

    # 4. Derived files deleted locally come back.
    (local / "label_index.npy").unlink()
    (local / "normalization_stats.json").unlink()
    make_cache(local, remote).ensure(build)
    assert (local / "label_index.npy").read_bytes() == b"index v1"
    assert (local / "normalization_stats.json").read_text() == '{"mean": 0.5}'
    assert build.calls == 1
