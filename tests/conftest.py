"""Shared fixtures: one real SeaweedFS S3 server per test session, on free 127.0.0.1 ports.

Also moto's server and ``rclone serve s3``, S3 servers written by others, for the tests
that run the storage contract against them, and ``gcp-storage-emulator`` for the GCS tests
(each started only when a test asks for it).
"""

from __future__ import annotations

import itertools
import os
import tempfile
from collections.abc import Iterator

import pytest

from hashsync.testing import MotoServer, RcloneS3Server, SeaweedFS
from hashsync.testing.gcs_emulator import GCSEmulator

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


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory) -> Iterator[MotoServer]:
    """moto's standalone S3 server for the whole session, stopped at the end."""
    with MotoServer(tmp_path_factory.mktemp("moto")) as server:
        yield server


@pytest.fixture(scope="session")
def rclone_s3_server(tmp_path_factory) -> Iterator[RcloneS3Server]:
    """``rclone serve s3`` over a temporary directory for the whole session."""
    with RcloneS3Server(tmp_path_factory.mktemp("rclone")) as server:
        yield server


@pytest.fixture(scope="session")
def gcs_emulator(tmp_path_factory) -> Iterator[GCSEmulator]:
    """``gcp-storage-emulator`` (in memory) for the whole session."""
    with GCSEmulator(tmp_path_factory.mktemp("gcs")) as server:
        yield server


@pytest.fixture
def gcs_env(gcs_emulator, monkeypatch) -> dict[str, str]:
    """``STORAGE_EMULATOR_HOST`` pointing at the emulator, set for this test."""
    env = gcs_emulator.env()
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return env


@pytest.fixture
def gcs_bucket(gcs_emulator) -> str:
    """A new, empty GCS bucket on the emulator."""
    return gcs_emulator.create_bucket(f"g{os.getpid()}-{next(_bucket_ids)}")


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
