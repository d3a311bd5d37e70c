"""S3Storage against a real SeaweedFS server: the storage contract, S3 specifics and faults."""

from __future__ import annotations

import io
import itertools
import json
import multiprocessing
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from boto3.s3.transfer import TransferConfig
from test_storage import _referee, _writer

import hashsync
from hashsync.errors import (
    InvalidArgument,
    NotFound,
    PermissionDenied,
    PreconditionFailed,
    StorageUnavailable,
)
from hashsync.storage import S3Storage, SimpleLocalStorage, open_storage
from hashsync.storage.base import reporting_progress
from hashsync.storage.s3 import CLAIMS_DIR, PART_SIZE_METADATA
from hashsync.testing import SeaweedFS
from hashsync.testing.contract import MANY, ReadWriteContract, blob, temp_leftovers
from storage_helpers import MIB, PART, race_worker

pytestmark = pytest.mark.s3

# Fail fast against a dead server: 2 attempts, short timeouts.
FAST = {"max_attempts": 2, "connect_timeout": 1, "read_timeout": 10}


def make_storage(server: SeaweedFS, bucket: str, prefix: str = "", **options) -> S3Storage:
    params = {
        "endpoint_url": server.endpoint_url,
        "aws_access_key_id": server.access_key,
        "aws_secret_access_key": server.secret_key,
        "region_name": server.region,
        "part_size": PART,
        **FAST,
    }
    params.update(options)
    return S3Storage(bucket, prefix, **params)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


_prefixes = itertools.count()


@pytest.fixture(scope="module")
def shared_bucket(s3_server):
    # One bucket for the contract tests, a fresh prefix per test: creating a bucket per test
    # would cost more than most of the tests themselves.
    return s3_server.create_bucket("storage-contract")


@pytest.fixture(scope="module")
def many_bucket(s3_server):
    """A bucket with more keys than one ListObjectsV2 page, written in parallel once."""
    name = s3_server.create_bucket("many-keys")
    client = s3_server.client()
    keys = [f"k/{i:04d}" for i in range(MANY)]
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda k: client.put_object(Bucket=name, Key=k, Body=k.encode()), keys))
    return name, keys


@pytest.fixture
def fresh_prefix():
    return f"test-{next(_prefixes)}/some/prefix"


class TestS3Storage(ReadWriteContract):
    """The contract, with the configuration taken from the standard AWS_* variables."""

    storage_class = S3Storage

    @pytest.fixture
    def storage(self, s3_env, shared_bucket, fresh_prefix):
        with S3Storage(shared_bucket, fresh_prefix, part_size=PART, **FAST) as storage:
            yield storage

    @pytest.fixture
    def put(self, storage):
        return _writer(storage)

    @pytest.fixture(scope="class")
    @classmethod
    def many(cls, s3_server, many_bucket):
        return make_storage(s3_server, many_bucket[0]), many_bucket[1]


class TestS3StorageWithClaims(ReadWriteContract):
    """The contract again in claim mode (conditional writes take a claim object first)."""

    storage_class = S3Storage

    @pytest.fixture
    def storage(self, s3_server, shared_bucket, fresh_prefix):
        return make_storage(s3_server, shared_bucket, fresh_prefix, conditional_writes="claim")

    @pytest.fixture
    def put(self, storage):
        return _writer(storage)

    @pytest.fixture(scope="class")
    @classmethod
    def many(cls, s3_server, many_bucket):
        return make_storage(s3_server, many_bucket[0], conditional_writes="claim"), many_bucket[1]


# -- S3 specifics ----------------------------------------------------------------------


def test_keys_live_under_the_prefix(s3_server, bucket, tmp_path):
    storage = make_storage(s3_server, bucket, "/top/level/")
    src = SimpleLocalStorage(tmp_path)
    src.path("a/b.txt").parent.mkdir()
    src.path("a/b.txt").write_bytes(b"x")
    storage.copy_from("a/b.txt", src)
    listed = s3_server.client().list_objects_v2(Bucket=bucket)["Contents"]
    assert [o["Key"] for o in listed] == ["top/level/a/b.txt"]
    # Folder markers made by other tools are not keys.
    s3_server.client().put_object(Bucket=bucket, Key="top/level/folder/", Body=b"")
    assert [i.key for i in storage.list()] == ["a/b.txt"]
    assert S3Storage.from_url(f"s3://{bucket}/top/level", endpoint_url="http://x").prefix == (
        "top/level/"
    )


def test_multipart_upload_etag_is_predictable_and_recorded(s3_server, bucket, tmp_path):
    storage = make_storage(s3_server, bucket)
    src = SimpleLocalStorage(tmp_path, part_size=PART)
    src.path("big").write_bytes(blob(2 * PART + 12345))
    storage.copy_from("big", src)
    head = s3_server.client().head_object(Bucket=bucket, Key="big")
    assert head["ETag"].strip('"') == hashsync.etag(src.path("big"), part_size=PART)
    assert head["ETag"].strip('"').endswith("-3")
    assert head["Metadata"][PART_SIZE_METADATA] == str(PART)
    assert storage.get_hash("big") == src.get_hash("big")
    # The default part size is 8 MiB on both sides.
    default = make_storage(s3_server, bucket, part_size=hashsync.DEFAULT_PART_SIZE)
    default.copy_from("big", src)
    assert default.get_hash("big") == SimpleLocalStorage(tmp_path).get_hash("big")
    assert default.get_hash("big").endswith("-2")


def test_download_of_object_uploaded_by_another_tool_is_verified(s3_server, bucket, dest):
    """An object uploaded by boto3 with odd 7.5 MiB parts (no hashsync metadata) verifies.

    7.5 MiB is none of the part sizes etag_matches guesses, so this takes the path that asks
    the store for the size of part 1.
    """
    data = blob(2 * PART + 12345)
    odd = 15 * MIB // 2
    config = TransferConfig(multipart_threshold=odd, multipart_chunksize=odd)
    s3_server.client().upload_fileobj(io.BytesIO(data), bucket, "other", Config=config)
    storage = make_storage(s3_server, bucket)
    assert storage.get_hash("other").endswith("-2")
    storage.copy("other", dest)
    assert dest.path("other").read_bytes() == data
    assert not hashsync.etag_matches(dest.path("other"), storage.get_hash("other"))
    assert hashsync.etag(dest.path("other"), part_size=odd) == storage.get_hash("other")


def test_custom_endpoint_uses_path_style(s3_env, bucket):
    storage = S3Storage(bucket)
    assert storage.client.meta.endpoint_url == s3_env["AWS_ENDPOINT_URL_S3"]
    assert storage.client.meta.config.s3["addressing_style"] == "path"
    explicit = S3Storage(bucket, endpoint_url="http://127.0.0.1:1", addressing_style="virtual")
    assert explicit.client.meta.config.s3["addressing_style"] == "virtual"


def test_open_storage_s3_url(s3_env, bucket, tmp_path):
    storage = open_storage(f"s3://{bucket}/pre", part_size=PART)
    assert isinstance(storage, S3Storage)
    src = SimpleLocalStorage(tmp_path)
    src.path("k").write_bytes(b"v")
    storage.copy_from("k", src)
    assert open_storage(f"s3://{bucket}").exists("pre/k")


def test_missing_bucket_is_not_found(s3_server, dest):
    storage = make_storage(s3_server, "no-such-bucket-here")
    with pytest.raises(NotFound, match="no-such-bucket-here"):
        list(storage.list())
    with pytest.raises(NotFound):
        storage.get_hash("k")
    assert not storage.exists("k")


def test_delete_is_not_silent_for_missing_keys(s3_server, bucket):
    with pytest.raises(NotFound, match="'gone'"):
        make_storage(s3_server, bucket).delete("gone")


def test_invalid_key_is_refused_before_any_request():
    storage = S3Storage("b", endpoint_url=f"http://127.0.0.1:{_closed_port()}", max_attempts=5)
    started = time.monotonic()
    for key in ["", "/etc/passwd", "a/../b", "a\\b"]:
        with pytest.raises(ValueError):
            storage.get_hash(key)
    assert time.monotonic() - started < 0.5  # no connection attempts, no retries


def test_bad_options():
    with pytest.raises(InvalidArgument, match="part_size"):
        S3Storage("b", endpoint_url="http://x", part_size=1024)
    with pytest.raises(InvalidArgument, match="conditional_writes"):
        S3Storage("b", endpoint_url="http://x", conditional_writes="hope")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match="s3://"):
        S3Storage.from_url("http://bucket/x")
    with pytest.raises(InvalidArgument, match="profile"):
        S3Storage("b", profile_name="no-such-profile-hashsync")


# -- claims ----------------------------------------------------------------------------


def test_claims_are_hidden_and_released(s3_server, bucket, tmp_path):
    storage = make_storage(s3_server, bucket, conditional_writes="claim")
    src = SimpleLocalStorage(tmp_path)
    src.path("k").write_bytes(b"v1")
    storage.copy_from_if_overwriting_hash("k", None, src)
    keys = [o["Key"] for o in s3_server.client().list_objects_v2(Bucket=bucket)["Contents"]]
    assert keys == ["k"]  # the claim was deleted after the write


def test_held_claim_refuses_and_stale_claim_is_broken(s3_server, bucket, tmp_path):
    import hashlib

    storage = make_storage(s3_server, bucket, conditional_writes="claim")
    src = SimpleLocalStorage(tmp_path)
    src.path("k").write_bytes(b"v1")
    storage.copy_from("k", src)
    expected = storage.get_hash("k")
    claim = f"{CLAIMS_DIR}/" + hashlib.sha256(f"k\0{expected}".encode()).hexdigest()
    # Another writer is in the middle of replacing this version.
    s3_server.client().put_object(Bucket=bucket, Key=claim, Body=json.dumps({"pid": 1}).encode())
    assert [i.key for i in storage.list()] == ["k"]
    src.path("k").write_bytes(b"v2")
    with pytest.raises(PreconditionFailed, match="another writer"):
        storage.copy_from_if_overwriting_hash("k", expected, src)
    assert storage.get_hash("k") == expected
    # A claim older than claim_ttl is abandoned and broken.
    patient = make_storage(s3_server, bucket, conditional_writes="claim", claim_ttl=0)
    time.sleep(1.1)  # Last-Modified has whole seconds
    patient.copy_from_if_overwriting_hash("k", expected, src)
    assert patient.get_hash("k") == hashsync.hash_bytes(b"v2", "md5")


# -- faults ----------------------------------------------------------------------------


def test_wrong_credentials_are_permission_denied(s3_server, bucket, tmp_path, dest):
    good = make_storage(s3_server, bucket)
    src = SimpleLocalStorage(tmp_path / "src")
    src.path("k").write_bytes(b"v")
    good.copy_from("k", src)
    wrong_secret = make_storage(s3_server, bucket, aws_secret_access_key="not-the-secret")
    wrong_key = make_storage(s3_server, bucket, aws_access_key_id="nobody")
    anonymous = make_storage(s3_server, bucket, anonymous=True)
    for storage in (wrong_secret, wrong_key, anonymous):
        for call in (
            lambda s=storage: s.get_hash("k"),
            lambda s=storage: list(s.list()),
            lambda s=storage: s.copy("k", dest),
            lambda s=storage: s.copy_from("k", src),
            lambda s=storage: s.delete_if_hash_matches("k", good.get_hash("k")),
        ):
            with pytest.raises(PermissionDenied) as info:
                call()
            assert isinstance(info.value, PermissionError)
            assert bucket in str(info.value)
    assert good.get_hash("k") == hashsync.hash_bytes(b"v", "md5")
    assert temp_leftovers(dest.root) == []


def test_unreachable_server_fails_fast(dest, tmp_path):
    storage = S3Storage(
        "b",
        endpoint_url=f"http://127.0.0.1:{_closed_port()}",
        aws_access_key_id="a",
        aws_secret_access_key="b",
        **FAST,
    )
    src = SimpleLocalStorage(tmp_path / "src")
    src.path("k").write_bytes(b"v")
    started = time.monotonic()
    for call in (
        lambda: storage.get_hash("k"),
        lambda: list(storage.list()),
        lambda: storage.copy("k", dest),
        lambda: storage.copy_from("k", src),
    ):
        with pytest.raises(StorageUnavailable) as info:
            call()
        assert isinstance(info.value, ConnectionError)
    assert time.monotonic() - started < 20


def test_server_killed_mid_download(tmp_path, dest, monkeypatch):
    """The server dies while parts are being fetched: StorageUnavailable, nothing final."""
    # Ranges of one part, fetched one after the other: the server dies between two of them.
    monkeypatch.setattr("hashsync.storage._s3_reading.MAX_DOWNLOAD_RANGE", PART)
    size = 6 * PART
    with SeaweedFS(tmp_path / "weed") as server:
        server.create_bucket("fault")
        storage = make_storage(server, "fault", max_concurrency=1)
        src = SimpleLocalStorage(tmp_path / "src", part_size=PART)
        src.path("big").write_bytes((blob(2 * PART) * 3)[:size])
        storage.copy_from("big", src)
        fetched: list[int] = []

        def kill_after_first_part(n: int) -> None:
            fetched.append(n)
            if len(fetched) == 1:
                server.kill()  # the next part's request finds nobody

        started = time.monotonic()
        with (
            reporting_progress(kill_after_first_part),
            pytest.raises(StorageUnavailable, match="big"),
        ):
            storage.copy("big", dest)
        assert time.monotonic() - started < 20
        assert fetched and sum(fetched) < size
    assert not dest.path("big").exists()
    assert temp_leftovers(dest.root) == []


def test_a_big_download_reports_progress_as_bytes_land(s3_server, bucket, tmp_path, dest):
    # One ranged GET of 30 MiB (one stream): progress must come every 8 MiB, not once at
    # the end of the range, and add up to the object's size.
    storage = make_storage(s3_server, bucket, "progress", max_concurrency=1)
    src = SimpleLocalStorage(tmp_path / "src", part_size=PART)
    size = 6 * PART
    src.path("big").write_bytes((blob(2 * PART) * 3)[:size])
    storage.copy_from("big", src)
    storage._listed_large["big"] = size  # straight to the ranged path
    steps: list[int] = []
    with reporting_progress(steps.append):
        storage.copy("big", dest)
    assert sum(steps) == size
    assert len(steps) >= size // (8 * MIB) and max(steps) <= 8 * MIB + MIB
    assert dest.read_bytes("big") == src.read_bytes("big")


def test_an_exception_from_the_progress_callback_stops_the_download(
    s3_server, bucket, tmp_path, dest
):
    # Ctrl-C lands in whichever thread holds the GIL, often a progress callback: it must stop
    # the transfer and leave nothing under the final name.
    storage = make_storage(s3_server, bucket, "stop", max_concurrency=1, max_attempts=1)
    src = SimpleLocalStorage(tmp_path / "src", part_size=PART)
    src.path("big").write_bytes(blob(6 * PART))
    storage.copy_from("big", src)
    storage._listed_large["big"] = 6 * PART

    class Stop(Exception):
        pass

    def stop(_n: int) -> None:
        raise Stop

    with reporting_progress(stop), pytest.raises(Stop):
        storage.copy("big", dest)
    assert not dest.path("big").exists()
    assert temp_leftovers(dest.root) == []


def _race(tmp_path, s3_server, bucket, mode, rounds, size):
    options = {
        "bucket": bucket,
        "part_size": PART,
        "conditional_writes": mode,
        "max_attempts": 3,
    }
    env = s3_server.env()
    storage = make_storage(s3_server, bucket)
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(3)
    results = ctx.Queue()
    workers = [
        ctx.Process(
            target=race_worker,
            args=("s3", options, env, who, rounds, size, str(tmp_path), barrier, results),
        )
        for who in ("left", "right")
    ]
    for worker in workers:
        worker.start()
    src = SimpleLocalStorage(tmp_path / "referee", part_size=PART)

    def put(key, data):
        src.path(key).write_bytes(data)
        storage.copy_from(key, src)

    try:
        _referee(storage, rounds, size, barrier, results, put=put)
    finally:
        barrier.abort()
        for worker in workers:
            worker.join(30)


def test_two_processes_race_single_put_exactly_one_wins(tmp_path, s3_server, bucket):
    """Below the part size the write is one PutObject with If-Match, atomic on SeaweedFS."""
    _race(tmp_path, s3_server, bucket, "native", rounds=6, size=64 * 1024)


def test_two_processes_race_multipart_with_claims_exactly_one_wins(tmp_path, s3_server, bucket):
    """Multipart: SeaweedFS's conditional CompleteMultipartUpload is not atomic, the claim is."""
    _race(tmp_path, s3_server, bucket, "claim", rounds=6, size=2 * PART + 1)


def test_anonymous_access_to_a_public_bucket(s3_server, bucket, tmp_path, dest):
    client = s3_server.client()
    client.put_object(Bucket=bucket, Key="pub/k", Body=b"hello")
    policy = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": "*",
                "Action": ["s3:GetObject", "s3:ListBucket"],
                "Resource": [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"],
            }
        ],
    }
    client.put_bucket_policy(Bucket=bucket, Policy=json.dumps(policy))
    public = make_storage(s3_server, bucket, "pub", anonymous=True)
    assert [info.key for info in public.list()] == ["k"]
    assert public.get_hash("k") == hashsync.hash_bytes(b"hello", "md5")
    public.copy("k", dest)
    assert dest.path("k").read_bytes() == b"hello"
    src = SimpleLocalStorage(tmp_path / "src")
    src.path("k").write_bytes(b"vandalism")
    with pytest.raises(PermissionDenied):
        public.copy_from("k", src)  # reading is public, writing is not
