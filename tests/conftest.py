"""Shared fixtures: one real SeaweedFS S3 server per test session, on free 127.0.0.1 ports."""

from __future__ import annotations

import itertools
import os
import tempfile
from collections.abc import Iterator

import pytest

from hashsync.testing import SeaweedFS

_bucket_ids = itertools.count()


def pytest_configure(config):
    # Scans default to the hash state cache in ~/.cache/hashsync; tests must not touch it.
    if "HASHSYNC_CACHE_DIR" not in os.environ:
        os.environ["HASHSYNC_CACHE_DIR"] = tempfile.mkdtemp(prefix="hashsync-test-cache-")


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory) -> Iterator[SeaweedFS]:
    """A SeaweedFS server for the whole session, stopped at the end."""
    server = SeaweedFS(tmp_path_factory.mktemp("seaweedfs"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def s3_env(s3_server, monkeypatch) -> dict[str, str]:
    """The standard AWS variables pointing at the test server, set for this test."""
    env = s3_server.env()
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    return env


@pytest.fixture
def bucket(s3_server) -> str:
    """A new, empty bucket."""
    name = f"t{os.getpid()}-{next(_bucket_ids)}"
    s3_server.create_bucket(name)
    return name


@pytest.fixture
def dest(tmp_path, monkeypatch):
    """An empty SimpleLocalStorage with 5 MiB parts (the storage tests' part size)."""
    from hashsync.storage import SimpleLocalStorage

    # The hash state cache of local listings must not land in the user's ~/.cache.
    monkeypatch.setenv("HASHSYNC_CACHE_DIR", str(tmp_path / "hash-state"))
    return SimpleLocalStorage(tmp_path / "dest", part_size=5 * 1024**2)
